"""The sandbox side: the fork server's loop and everything the inits and workers it forks run.

The fork server (`python -I -S`) executes this file by itself, as the module `_sandbox_init`,
without the package `rewards.sandbox` or `site`: every import here weighs on every fork, so this
file imports only the standard library's cheapest modules (its top level: marshal, math, os,
signal, sys; select and socket in the server, ctypes once before the first fork, fcntl, resource
and atexit in the worker). Configs arrive in marshal form, reports leave as a dict literal, and
the worker prints exceptions with the interpreter's built-in hook (json and traceback each pull
in `re`). No threads run here. On the host side only `cgroup.py` imports this module, for
`unescape`.
"""

from __future__ import annotations

import marshal
import math
import os
import signal
import sys

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC, MS_PRIVATE, MS_RELATIME = 1024, 2048, 4096, 16384, 1 << 18, 1 << 21
PR_SET_PDEATHSIG, MNT_DETACH = 1, 2
_MOUNT_FLAGS = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": MS_NOATIME,
                "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME}
# Kernel file systems whose files only the real root may write; a failed read-only remount is harmless.
_PSEUDO_FS = {"proc", "sysfs", "cgroup", "cgroup2", "devpts", "mqueue", "securityfs", "debugfs", "tracefs",
              "pstore", "bpf", "configfs", "fusectl", "hugetlbfs", "binfmt_misc", "efivarfs", "autofs"}
WORKER_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1",
              "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


class _Deadline(Exception):
    pass


def _libc():
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    return libc, ctypes


def _call(libc_fn, ctypes, what: str, *args) -> None:
    if libc_fn(*args) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def server_main(sock_fd: int) -> None:
    """The fork server's loop: for each ("run", config) message with its five descriptors, fork an
    init and answer ("ok", pid); ("reap", pid) collects that init once it has exited. Exits when
    the host closes the socket."""
    import select
    import socket

    _libc()  # imported once here rather than in every init
    sock = socket.socket(fileno=sock_fd)
    unreaped: set[int] = set()
    while True:
        for pid in list(unreaped):
            try:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    unreaped.discard(pid)
            except ChildProcessError:
                unreaped.discard(pid)
        if unreaped and not select.select([sock], [], [], 0.05)[0]:
            continue
        try:
            message, fds, _, _ = socket.recv_fds(sock, 1 << 20, 8)
        except OSError:
            message, fds = b"", []
        if not message:
            os._exit(0)  # the host is gone; our inits die with us (PDEATHSIG)
        kind, value = marshal.loads(message)
        if kind == "reap":
            unreaped.add(value)
            continue
        try:
            if len(fds) != 5:
                raise OSError(f"expected 5 descriptors, got {len(fds)}")
            pid = os.fork()
        except OSError as exc:
            for fd in fds:
                os.close(fd)
            sock.send(marshal.dumps(("error", str(exc))))
            continue
        if pid == 0:
            try:
                sock.close()
                _spawned_init(value, fds)
            finally:
                os._exit(70)
        for fd in fds:
            os.close(fd)
        sock.send(marshal.dumps(("ok", pid)))


def _spawned_init(cfg: dict, fds: list[int]) -> None:
    """A freshly forked init: its own session, stdin /dev/null, the run's pipes as stdout and stderr."""
    os.setsid()
    out, err, data, channel, status = fds
    devnull = os.open("/dev/null", os.O_RDONLY)
    for fd, target in ((devnull, 0), (out, 1), (err, 2)):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir("/")
    cfg["fds"] = {"data": data, "channel": channel, "status": status}
    _init_main(cfg)


def _init_main(cfg: dict) -> None:
    """The init's work; reports on the status fd and exits."""
    sys.path[:] = cfg["path"]
    status_fd = cfg["fds"]["status"]
    libc, ctypes = _libc()
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # the host died: so do we
    try:
        for procs in cfg["cgroup_procs"]:  # first: every process of the run starts inside
            with open(procs, "w") as f:
                f.write(str(os.getpid()))
        if cfg["isolation"] == "namespaces":
            _enter_namespaces(cfg, libc, ctypes)  # returns only in the pid-1 init
        if cfg["isolation"] == "namespaces":
            _setup_mounts(cfg, libc, ctypes)
    except OSError as exc:
        _report(status_fd, {"setup_error": f"sandbox setup ({cfg['isolation']}): {exc}"})
        os._exit(70)
    worker = os.fork()
    if worker == 0:
        _worker_main(cfg)
    for name in ("data", "channel"):
        os.close(cfg["fds"][name])
    status = _wait_worker(worker, cfg["limits"]["wall_s"])
    if cfg["isolation"] == "uid":
        _kill_uid(cfg["uid"])
    _report(status_fd, status)
    # In a pid namespace, init's exit kills every process still in it.
    os._exit(0)


def _enter_namespaces(cfg: dict, libc, ctypes) -> None:
    flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS
    userns = os.geteuid() != 0
    _call(libc.unshare, ctypes, "unshare", flags | (CLONE_NEWUSER if userns else 0))
    if userns:
        with open("/proc/self/setgroups", "w") as f:
            f.write("deny")
        with open("/proc/self/uid_map", "w") as f:
            f.write(f"0 {cfg['host_uid']} 1")
        with open("/proc/self/gid_map", "w") as f:
            f.write(f"0 {cfg['host_gid']} 1")
    child = os.fork()  # the first child of unshare(CLONE_NEWPID) is pid 1 of the new namespace
    if child == 0:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        return
    for name in ("data", "channel", "status"):
        os.close(cfg["fds"][name])
    _, wait_status = os.waitpid(child, 0)
    os._exit(os.waitstatus_to_exitcode(wait_status) & 0xFF)


def _setup_mounts(cfg: dict, libc, ctypes) -> None:
    """Every mount read-only; fresh tmpfs on the workdir and /dev/shm; /proc for the new pid ns."""
    _call(libc.mount, ctypes, "make mounts private", None, b"/", None, MS_REC | MS_PRIVATE, None)
    if cfg["uid"] is not None:
        _expose_interpreter(cfg["workdir"], libc, ctypes)
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split() for line in f]
    for fields in mounts:
        point = unescape(fields[4])
        sep = fields.index("-")
        fstype = fields[sep + 1]
        flags = MS_BIND | MS_REMOUNT | MS_RDONLY
        flags |= sum(bit for opt, bit in _MOUNT_FLAGS.items() if opt in fields[5].split(","))
        try:
            _call(libc.mount, ctypes, f"remount {point} read-only", None, point.encode(), None, flags, None)
        except OSError:
            if fstype not in _PSEUDO_FS and "rw" in fields[5].split(","):
                raise
    limits = cfg["limits"]
    owner = f",uid={cfg['uid']},gid={cfg['uid']}" if cfg["uid"] is not None else ""
    for point in (cfg["workdir"], "/dev/shm"):
        if os.path.isdir(point):
            opts = f"size={limits['disk_bytes']},mode=0700{owner}".encode()
            _call(libc.mount, ctypes, f"tmpfs on {point}", b"tmpfs", point.encode(), b"tmpfs",
                  MS_NOSUID | MS_NODEV, opts)
    _call(libc.mount, ctypes, "mount /proc", b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)


def _hidden_ancestors() -> dict[str, set[str]]:
    """Directories the sandbox uid cannot enter on the way to the interpreter's own files
    (e.g. a Python under /root, mode 0700) -> their children on those paths."""
    hidden: dict[str, set[str]] = {}
    for path in {sys.base_prefix, sys.prefix, *sys.path}:
        parts = os.path.abspath(path).split(os.sep)[1:]
        for depth in range(1, len(parts)):
            ancestor = os.sep + os.path.join(*parts[:depth])
            try:
                mode = os.stat(ancestor).st_mode
            except OSError:
                break
            if not mode & 0o001:
                hidden.setdefault(ancestor, set()).add(parts[depth])
                break
    return hidden


def _expose_interpreter(staging: str, libc, ctypes) -> None:
    """Replace each hidden directory by a tmpfs that holds bind mounts of only the children the
    interpreter needs, so the unprivileged uid can import the standard library and site-packages
    without seeing anything else there. `staging` (the empty workdir) holds the original meanwhile."""
    for ancestor, children in _hidden_ancestors().items():
        _call(libc.mount, ctypes, f"stage {ancestor}", ancestor.encode(), staging.encode(), None,
              MS_BIND | MS_REC, None)
        _call(libc.mount, ctypes, f"tmpfs on {ancestor}", b"tmpfs", ancestor.encode(), b"tmpfs",
              MS_NOSUID | MS_NODEV, b"size=64k,mode=0755")
        for child in sorted(children):
            target = os.path.join(ancestor, child)
            os.mkdir(target, 0o755)
            _call(libc.mount, ctypes, f"bind {target}", os.path.join(staging, child).encode(), target.encode(),
                  None, MS_BIND | MS_REC, None)
        _call(libc.umount2, ctypes, f"unstage {ancestor}", staging.encode(), MNT_DETACH)


def unescape(path: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    for code in ("\\040", "\\011", "\\012", "\\134"):
        path = path.replace(code, chr(int(code[1:], 8)))
    return path


def _wait_worker(worker: int, wall_s: float) -> dict:
    def on_alarm(signum, frame):
        raise _Deadline

    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, wall_s)
    try:
        _, wait_status = os.waitpid(worker, 0)
    except _Deadline:
        os.kill(worker, signal.SIGKILL)
        return {"exit_code": None, "signal": None, "timed_out": True}
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    if os.WIFSIGNALED(wait_status):
        return {"exit_code": None, "signal": os.WTERMSIG(wait_status), "timed_out": False}
    return {"exit_code": os.WEXITSTATUS(wait_status), "signal": None, "timed_out": False}


def _kill_uid(uid: int) -> None:
    """Kill every process of `uid` (they are all this run's): kill(-1) as that uid, until none is left."""
    killer = os.fork()
    if killer == 0:
        try:
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            for _ in range(1000):
                os.kill(-1, signal.SIGKILL)  # all processes this uid may signal, except the caller
        except (ProcessLookupError, PermissionError):
            os._exit(0)
        os._exit(1)
    os.waitpid(killer, 0)


def _report(fd: int, status: dict) -> None:
    os.write(fd, repr(status).encode())
    os.close(fd)


def _worker_main(cfg: dict) -> None:
    """The forked worker: limits, identity, then the program; never returns."""
    try:
        fds = cfg["fds"]
        os.setsid()
        os.close(fds["status"])
        for sig in (signal.SIGALRM, signal.SIGXFSZ):
            signal.signal(sig, signal.SIG_IGN if sig == signal.SIGXFSZ else signal.SIG_DFL)
        # Move the fds out of the way first: data may already sit on 4, channel on 3.
        import fcntl

        devnull = os.open("/dev/null", os.O_RDONLY)
        moved = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 100) for fd in (devnull, fds["data"], fds["channel"])]
        for target, fd in enumerate(moved):
            os.dup2(fd, (0, 3, 4)[target], inheritable=False)
        os.closerange(5, 1 << 16)
        _set_limits(cfg)
        if cfg["uid"] is not None:
            os.setgroups([])
            os.setresgid(cfg["uid"], cfg["uid"], cfg["uid"])
            os.setresuid(cfg["uid"], cfg["uid"], cfg["uid"])
            libc, _ = _libc()
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # a uid change clears it; init's death ends us
        os.chdir(cfg["workdir"])
        os.environ.clear()
        os.environ.update(WORKER_ENV, HOME=cfg["workdir"], TMPDIR=cfg["workdir"])
        with os.fdopen(3, "rb") as f:
            raw = f.read()
    except BaseException as exc:  # noqa: BLE001 - report and leave; nothing of the program ran yet
        os.write(2, f"sandbox worker setup failed: {exc!r}\n".encode())
        os._exit(71)
    os._exit(_run_program(raw))


def _set_limits(cfg: dict) -> None:
    import resource

    lim = cfg["limits"]
    cpu = math.ceil(lim["cpu_s"])
    # The soft limit sends SIGXCPU (which a program can catch); the hard one a second later SIGKILL.
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (lim["memory_bytes"], lim["memory_bytes"]))
    resource.setrlimit(resource.RLIMIT_FSIZE, (lim["file_bytes"], lim["file_bytes"]))
    resource.setrlimit(resource.RLIMIT_NOFILE, (lim["open_files"], lim["open_files"]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if cfg["uid"] is not None:  # counted per uid: only meaningful for a uid of our own
        resource.setrlimit(resource.RLIMIT_NPROC, (lim["processes"], lim["processes"]))


def _run_program(raw: bytes) -> int:
    """Run the program as `__main__` the way `python file.py` would; return its exit status."""
    n = int.from_bytes(raw[:8], "big")
    source, data = raw[8 : 8 + n].decode(), raw[8 + n :]
    del raw
    main = type(sys)("__main__")
    main.__dict__["__sandbox_data__"] = data
    sys.modules["__main__"] = main
    sys.argv = ["<program>"]
    code = 0
    try:
        exec(compile(source, "<program>", "exec"), main.__dict__)
    except SystemExit as exc:
        code = _exit_code(exc.code)
    except BaseException as exc:  # noqa: BLE001 - the program's own error: print it like python does
        sys.__excepthook__(type(exc), exc, exc.__traceback__.tb_next)  # C: imports nothing
        code = 1
    try:
        import atexit

        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:  # noqa: BLE001
        code = code or 1
    return code


def _exit_code(code) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1
