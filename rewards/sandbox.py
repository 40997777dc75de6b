"""Run untrusted Python programs with hard limits, and a pool that runs many at once.

    result = run_python("print(1 + 1)", Limits(wall_s=2))
    result.ok, result.stdout  # True, "2\\n"

Process layout (isolation "namespaces", the default where the kernel allows it):

    host (this process) ── fork server (python -I -S, one per host process)
                              └─fork─▶ init ──unshare(mnt, pid, net, ipc, uts)──▶ pid-1 init ──fork──▶ worker

The fork server is started once and forks a fresh init for each run, so a run costs no interpreter
start; the init gets its own session, stdin /dev/null and the run's pipes. The pid-1 init makes
every inherited mount read-only, mounts a fresh tmpfs (size-capped) on the empty working directory
and on /dev/shm, and a private /proc; it then forks the worker, which sets
its rlimits (CPU time, address space, processes, file size, open files), drops to an unprivileged
uid used by no one else (when root), and runs the program in-process (no second interpreter start).
The network namespace has only a down loopback device, so there is no network. When the worker
ends or the wall limit passes, pid-1 init exits and the kernel kills every process left in the pid
namespace, including children that called setsid or double-forked. The host kills the whole process
group as a backup one second after the wall limit, and kills at once when stdout or stderr exceeds
its cap. Stdin is /dev/null.

Fallbacks, chosen once by `isolation()` by probing: without namespaces but as root, "uid" runs the
worker as a fresh uid and kills every process of that uid at the end (kill(-1) as that uid), but
files in world-writable directories (/tmp) and the network stay reachable; without either, "session"
only has rlimits and a process-group kill, and a warning is printed. Non-root users get
"namespaces" through a user namespace where the kernel allows unprivileged ones.

Memory across the process tree: RLIMIT_AS caps each process, so a program that forks N children
could use N times the cap. Where this process may create cgroups (v2 with the memory and pids
controllers delegated, or v1 memory and pids hierarchies, as root in a container), each run gets a
cgroup of its own with the memory cap (`memory.max` / `memory.limit_in_bytes`, swap off) for the
whole tree and a task cap (`pids.max`); the kernel's OOM killer ends the run when the tree passes
it. The init joins the cgroup before anything else, so every descendant is in it; afterwards the
host kills whatever is left there and removes it. Without writable cgroups the per-process limits
stay the only ones. `isolation_report()` says which mode is active and why;
`REWARD_SANDBOX_CGROUP=0` turns cgroups off.

The program sees `__sandbox_data__` (bytes, from the `data` argument) in its globals; data travels
through an anonymous memory file, never a path or argv. File descriptor 4 is a side channel whose
bytes come back as `ExecResult.channel` (for a harness's end marker).
"""

from __future__ import annotations

import ast
import functools
import marshal
import math
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass

GIB = 1 << 30
MAX_MEMORY_BYTES = 4 * GIB
UID_BASE = 1_700_000_000  # unprivileged uids no account uses; one per run so kills and counts stay per run
ISOLATIONS = ("namespaces", "uid", "session")


@dataclass(frozen=True)
class Limits:
    wall_s: float = 5.0  # wall-clock seconds until the whole tree is killed
    cpu_s: float = 4.0  # CPU seconds per process (RLIMIT_CPU)
    memory_bytes: int = GIB  # address space per process (RLIMIT_AS), at most 4 GiB
    processes: int = 16  # processes and threads of the sandbox uid (RLIMIT_NPROC)
    file_bytes: int = 16 << 20  # largest file the program may write (RLIMIT_FSIZE)
    disk_bytes: int = 64 << 20  # size of the working directory's tmpfs
    open_files: int = 64  # RLIMIT_NOFILE
    output_bytes: int = 1 << 20  # stdout and stderr each; more kills the program

    def __post_init__(self) -> None:
        if not 0 < self.memory_bytes <= MAX_MEMORY_BYTES:
            raise ValueError(f"memory_bytes must be in (0, 4 GiB], got {self.memory_bytes}")
        if self.wall_s <= 0 or self.cpu_s <= 0 or self.processes < 1:
            raise ValueError(f"limits must be positive: {self}")


@dataclass
class ExecResult:
    exit_code: int | None  # None when killed by a signal or never reported
    signal: int | None = None  # the signal that ended the worker
    timed_out: bool = False  # wall limit reached (CPU limit shows as signal SIGKILL/SIGXCPU)
    output_exceeded: bool = False
    stdout: str = ""
    stderr: str = ""
    channel: bytes = b""  # what the program wrote to fd 4
    wall_s: float = 0.0
    isolation: str = ""
    cgroup: str = ""  # "v1" or "v2" when the run had a cgroup of its own, else ""
    oom_killed: bool = False  # the cgroup's memory cap made the kernel kill a process of the run

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and not self.output_exceeded


class SandboxError(RuntimeError):
    """The sandbox itself could not be set up (not the program's fault)."""


# ---------------------------------------------------------------- host side


def run_python(source: str, limits: Limits = Limits(), data: bytes = b"", mode: str | None = None,
               cgroup: bool | None = None) -> ExecResult:
    """Run `source` as `__main__` in a fresh sandbox and return what happened; never raises for
    anything the program does (SandboxError only when the sandbox cannot start). `cgroup`: None
    uses a per-run cgroup where available, False never, True requires one."""
    mode = mode or isolation()
    layout = None if cgroup is False else cgroup_layout()
    if cgroup and layout is None:
        raise SandboxError(f"no usable cgroups: {_cgroup_reason}")
    return _run(source, limits, data, mode, layout)


def _run(source: str, limits: Limits, data: bytes, mode: str, layout: _CgroupLayout | None) -> ExecResult:
    workdir = tempfile.mkdtemp(prefix="sandbox-")
    group = None
    uid = _next_uid() if os.geteuid() == 0 else None
    if uid is not None:
        os.chown(workdir, uid, uid)
    os.chmod(workdir, 0o700)
    payload = len(source.encode()).to_bytes(8, "big") + source.encode() + data
    data_fd = os.memfd_create("sandbox-data", os.MFD_CLOEXEC)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    chan_r, chan_w = os.pipe()
    stat_r, stat_w = os.pipe()
    theirs = [out_w, err_w, data_fd, chan_w, stat_w]  # the init's ends, in _spawned_init's order
    try:
        _write_all(data_fd, payload)
        os.lseek(data_fd, 0, os.SEEK_SET)
        if layout is not None:
            try:
                group = _RunCgroup(layout, limits)
            except OSError as exc:
                raise SandboxError(f"sandbox cgroup ({layout.version}): {exc}") from exc
        config = {
            "limits": asdict(limits), "isolation": mode, "workdir": workdir, "uid": uid,
            "host_uid": os.getuid(), "host_gid": os.getgid(), "path": _import_path(),
            "cgroup_procs": group.procs if group is not None else [],
        }
        start = time.monotonic()
        pid, server = _spawner.spawn(config, theirs)
        for fd in theirs:
            os.close(fd)
        theirs = []
        try:
            result = _collect(pid, out_r, err_r, chan_r, stat_r, limits, start + limits.wall_s + 1.0)
        finally:
            _spawner.reap(pid)
        if result.exit_code is None and result.signal is None and not (result.timed_out or result.output_exceeded) \
                and _spawner.lost(server):
            # No report because the fork server died (its inits die with it), not because of the program.
            raise SandboxError("the sandbox fork server died during the run")
        result.wall_s = time.monotonic() - start
        result.isolation = mode
        if group is not None:
            result.cgroup, result.oom_killed = layout.version, group.oom_killed()
        return result
    finally:
        for fd in (out_r, err_r, chan_r, stat_r, *theirs):
            os.close(fd)
        if group is not None:
            group.remove()
        shutil.rmtree(workdir, ignore_errors=True)


class _Spawner:
    """The host's end of the fork server: a small long-lived interpreter (`python -I -S`, the sandbox
    side of this file loaded, ctypes imported) that forks one init per run. A fork costs well under
    a millisecond; starting an interpreter for each run, with its imports, cost about 10 ms more.
    Runs go to it over a Unix socket with their pipes and data as passed descriptors; it answers
    with the init's pid, which stays reserved (unreaped, so killing its process group is safe)
    until `reap`. It exits when this process closes the socket (so also when this process dies), and
    is restarted if it dies; one per process (a forked child of the host starts its own)."""

    def __init__(self) -> None:
        self._forget()

    def _forget(self) -> None:
        """A fresh state: at start, and in a forked child (which must not share its parent's
        server, and whose copy of the lock may be held by a thread that does not exist there)."""
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen | None = None
        self._started = 0  # servers started so far; the current one's number

    def _start(self) -> None:
        self._stop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _SERVER_COMMAND, _init_code(), str(theirs.fileno())],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, pass_fds=(theirs.fileno(),),
                start_new_session=True, cwd="/",
            )
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        self._sock = ours
        self._started += 1

    def _stop(self) -> None:
        if self._sock is not None:
            self._sock.close()  # the server reads EOF and exits
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        self._sock = self._proc = None

    def spawn(self, config: dict, fds: list[int]) -> tuple[int, int]:
        """Fork an init for `config` with `fds` (stdout, stderr, data, channel, status); its pid and
        the number of the server that forked it (for `lost`)."""
        message = marshal.dumps(("run", config))
        with self._lock:
            for attempt in (1, 2):
                if self._sock is None or self._proc.poll() is not None:
                    try:
                        self._start()
                    except OSError as exc:
                        raise SandboxError(f"cannot start the sandbox fork server: {exc}") from exc
                try:
                    socket.send_fds(self._sock, [message], fds)
                    reply = self._sock.recv(1 << 16)
                    kind, value = marshal.loads(reply)
                except (OSError, EOFError, ValueError, TypeError) as exc:
                    # The server died (any init it forked died with it: PDEATHSIG); start a new one.
                    self._stop()
                    if attempt == 2:
                        raise SandboxError(f"sandbox fork server failed: {exc!r}") from exc
                    continue
                if kind != "ok":
                    raise SandboxError(f"sandbox fork server: {value}")
                return value, self._started
        raise AssertionError("unreachable")

    def lost(self, server: int) -> bool:
        """Whether server number `server` has died (or been replaced) since."""
        with self._lock:
            return server != self._started or self._proc is None or self._proc.poll() is not None

    def reap(self, pid: int) -> None:
        """Let the server collect `pid` once it has exited (its pid may then be reused)."""
        with self._lock:
            if self._sock is not None:
                try:
                    self._sock.send(marshal.dumps(("reap", pid)))
                except OSError:
                    pass  # a dead server's children are gone with it


_spawner = _Spawner()
os.register_at_fork(after_in_child=_spawner._forget)


def _import_path() -> list[str]:
    """This interpreter's import path without the current directory: the sandbox skips `site`
    (its .pth hooks cost tens of milliseconds a run) and gets site-packages from here instead."""
    return [p for p in sys.path if p and os.path.isabs(p) and os.path.isdir(p)]


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


_uid_lock = threading.Lock()
_uid_counter = 0


def _next_uid() -> int:
    """A uid for one run: distinct within this process, and across processes by the pid."""
    global _uid_counter
    with _uid_lock:
        _uid_counter += 1
        return UID_BASE + (os.getpid() % 100_000) * 1000 + _uid_counter % 1000


def _collect(pid: int, out_r: int, err_r: int, chan_r: int, stat_r: int, limits: Limits,
             deadline: float) -> ExecResult:
    """Read the pipes until all close or the backup deadline; caps stdout/stderr. All closed
    means the init and everything it started are gone (each held the write ends)."""
    bufs = {"stdout": bytearray(), "stderr": bytearray(), "channel": bytearray(), "status": bytearray()}
    caps = {"stdout": limits.output_bytes, "stderr": limits.output_bytes, "channel": 1 << 16, "status": 1 << 16}
    sel = selectors.DefaultSelector()
    sel.register(out_r, selectors.EVENT_READ, "stdout")
    sel.register(err_r, selectors.EVENT_READ, "stderr")
    sel.register(chan_r, selectors.EVENT_READ, "channel")
    sel.register(stat_r, selectors.EVENT_READ, "status")
    timed_out = exceeded = False
    try:
        while sel.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            for key, _ in sel.select(remaining):
                chunk = os.read(key.fd, 1 << 16)
                if not chunk:
                    sel.unregister(key.fd)
                    continue
                buf = bufs[key.data]
                room = caps[key.data] - len(buf)
                buf += chunk[: max(room, 0)]
                if len(chunk) > room and key.data in ("stdout", "stderr"):
                    exceeded = True
            if exceeded:
                break
    finally:
        if sel.get_map():  # timed out, output cap passed, or interrupted
            _kill_group(pid)
            _drain(sel, time.monotonic() + 1.0)  # EOF on every pipe: the killed tree is gone
        sel.close()
    status = _parse_status(bytes(bufs["status"]))
    if "setup_error" in status:
        raise SandboxError(status["setup_error"])
    return ExecResult(
        exit_code=status.get("exit_code") if not (timed_out or exceeded) else None,
        signal=status.get("signal"),
        timed_out=timed_out or bool(status.get("timed_out")),
        output_exceeded=exceeded,
        stdout=bufs["stdout"].decode("utf-8", "replace"),
        stderr=bufs["stderr"].decode("utf-8", "replace"),
        channel=bytes(bufs["channel"]),
    )


def _drain(sel: selectors.BaseSelector, deadline: float) -> None:
    """Discard what is left in the still-registered pipes until EOF or the deadline."""
    while sel.get_map() and (remaining := deadline - time.monotonic()) > 0:
        for key, _ in sel.select(remaining):
            if not os.read(key.fd, 1 << 16):
                sel.unregister(key.fd)


def _kill_group(pid: int) -> None:
    """Kill the init's process group (its session, made by setsid), or the init alone if it has not
    made it yet; its pid is not reaped before `reap`, so neither can hit another process."""
    for kill, target in ((os.killpg, pid), (os.kill, pid)):
        try:
            kill(target, signal.SIGKILL)
            return
        except ProcessLookupError:
            continue


def _parse_status(raw: bytes) -> dict:
    """The init's report: a dict literal (read as data only; malformed means no report)."""
    try:
        status = ast.literal_eval(raw.decode("utf-8"))
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError, UnicodeDecodeError):
        return {}
    return status if isinstance(status, dict) else {}


_isolation: str | None = None
_isolation_lock = threading.Lock()


def isolation() -> str:
    """The strongest isolation that works here: probed once per process ("namespaces", "uid" or
    "session"); `REWARD_SANDBOX_ISOLATION` forces one."""
    global _isolation
    with _isolation_lock:
        if _isolation is None:
            forced = os.environ.get("REWARD_SANDBOX_ISOLATION")
            if forced:
                if forced not in ISOLATIONS:
                    raise ValueError(f"REWARD_SANDBOX_ISOLATION={forced!r}; expected one of {ISOLATIONS}")
                _isolation = forced
            else:
                _isolation = _probe()
        return _isolation


def _probe() -> str:
    probe_limits = Limits(wall_s=10.0)
    for mode in ("namespaces", "uid") if os.geteuid() == 0 else ("namespaces",):
        try:
            result = _run("import json, decimal; print('ok')", probe_limits, b"", mode, None)
        except SandboxError:
            continue
        if result.ok and result.stdout == "ok\n":
            return mode
    print("[sandbox] WARNING: no namespaces and not root: code runs with rlimits and a process-group "
          "kill only (files, network and escaped daemons are not contained)", file=sys.stderr, flush=True)
    return "session"


# ---------------------------------------------------------------- cgroups (host side)

CGROUP_PREFIX = "sandbox-"
# Tasks of the sandbox itself in the cgroup besides the program's: the init(s) (two with a pid
# namespace) or the init and its uid killer.
_OWN_TASKS = 2


@dataclass(frozen=True)
class _CgroupLayout:
    version: str  # "v2" or "v1"
    parents: dict[str, str]  # controller ("" for v2) -> directory where run cgroups are made


class _RunCgroup:
    """One run's cgroup (one per v1 hierarchy): made with its limits before the run, emptied and
    removed after it."""

    _counter = 0
    _lock = threading.Lock()

    def __init__(self, layout: _CgroupLayout, limits: Limits) -> None:
        with _RunCgroup._lock:
            _RunCgroup._counter += 1
            name = f"{CGROUP_PREFIX}{os.getpid()}-{_RunCgroup._counter}"
        self.version = layout.version
        self.dirs = {ctl: os.path.join(parent, name) for ctl, parent in layout.parents.items()}
        memory, tasks = str(limits.memory_bytes), str(limits.processes + _OWN_TASKS)
        try:
            for path in self.dirs.values():
                os.mkdir(path, 0o700)
            if self.version == "v2":
                _write_file(self.dirs[""], "memory.max", memory)
                _write_file(self.dirs[""], "memory.swap.max", "0", optional=True)
                _write_file(self.dirs[""], "pids.max", tasks)
            else:
                # memsw (memory + swap) may not be set below the memory limit: memory first.
                _write_file(self.dirs["memory"], "memory.limit_in_bytes", memory)
                _write_file(self.dirs["memory"], "memory.memsw.limit_in_bytes", memory, optional=True)
                if "pids" in self.dirs:
                    _write_file(self.dirs["pids"], "pids.max", tasks)
        except OSError:
            self.remove()
            raise

    @property
    def procs(self) -> list[str]:
        return [os.path.join(path, "cgroup.procs") for path in self.dirs.values()]

    def oom_killed(self) -> bool:
        memory_dir = self.dirs["" if self.version == "v2" else "memory"]
        name = "memory.events" if self.version == "v2" else "memory.oom_control"
        try:
            with open(os.path.join(memory_dir, name)) as f:
                counts = dict(line.split() for line in f if len(line.split()) == 2)
        except OSError:
            return False
        return int(counts.get("oom_kill", "0")) > 0

    def remove(self, wait_s: float = 2.0) -> bool:
        """Kill every task left in the cgroup, then delete it; False if it outlived `wait_s`."""
        deadline = time.monotonic() + wait_s
        for path in self.dirs.values():
            while True:
                _kill_cgroup(path)
                try:
                    os.rmdir(path)
                    break
                except FileNotFoundError:
                    break
                except OSError:  # EBUSY: tasks still exiting
                    if time.monotonic() > deadline:
                        print(f"[sandbox] WARNING: could not remove cgroup {path}", file=sys.stderr, flush=True)
                        return False
                    time.sleep(0.01)
        return True


def _write_file(directory: str, name: str, value: str, optional: bool = False) -> None:
    try:
        with open(os.path.join(directory, name), "w") as f:
            f.write(value)
    except OSError:
        if not optional:
            raise


def _kill_cgroup(path: str) -> None:
    """SIGKILL every task in the cgroup at `path` (cgroup.kill on v2 where the kernel has it)."""
    if os.path.exists(os.path.join(path, "cgroup.kill")):
        _write_file(path, "cgroup.kill", "1", optional=True)
        return
    try:
        with open(os.path.join(path, "cgroup.procs")) as f:
            pids = [int(line) for line in f if line.strip()]
    except OSError:
        return
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


_cgroup: _CgroupLayout | None = None
_cgroup_reason = ""
_cgroup_probed = False
_cgroup_lock = threading.Lock()


def cgroup_layout() -> _CgroupLayout | None:
    """Where per-run cgroups are made, or None when they cannot be (probed once per process)."""
    global _cgroup, _cgroup_reason, _cgroup_probed
    with _cgroup_lock:
        if not _cgroup_probed:
            _cgroup, _cgroup_reason = _probe_cgroups()
            _cgroup_probed = True
        return _cgroup


def isolation_report() -> dict[str, str]:
    """Which isolation and which memory cap are active, and why: `isolation`, `cgroup` ("v1", "v2"
    or "off"), `memory_cap` ("process tree" or "per process") and `cgroup_detail`."""
    layout = cgroup_layout()
    return {
        "isolation": isolation(),
        "cgroup": layout.version if layout else "off",
        "memory_cap": "process tree" if layout else "per process",
        "cgroup_detail": _cgroup_reason,
    }


def _probe_cgroups() -> tuple[_CgroupLayout | None, str]:
    if os.environ.get("REWARD_SANDBOX_CGROUP", "1") == "0":
        return None, "turned off by REWARD_SANDBOX_CGROUP=0"
    reasons = []
    for layout, reason in _cgroup_candidates():
        if layout is None:
            reasons.append(reason)
            continue
        _remove_stale(layout)
        try:
            result = _run("print('ok')", Limits(wall_s=10.0), b"", isolation(), layout)
        except (SandboxError, OSError) as exc:
            reasons.append(f"{layout.version}: {exc}")
            continue
        if result.ok and result.stdout == "ok\n":
            return layout, f"{layout.version}: " + ", ".join(f"{c or 'unified'} at {p}" for c, p in layout.parents.items())
        reasons.append(f"{layout.version}: a trial run failed ({result.stderr.strip()[-200:]})")
    return None, "; ".join(reasons) or "no cgroup file system mounted"


def _cgroup_candidates() -> list[tuple[_CgroupLayout | None, str]]:
    """v2 then v1 layouts under this process's own cgroups, or a reason each is unusable."""
    try:
        with open("/proc/self/mountinfo") as f:
            mounts = [line.split() for line in f]
        with open("/proc/self/cgroup") as f:
            member = [line.rstrip("\n").split(":", 2) for line in f]
    except OSError as exc:
        return [(None, f"cannot read cgroup membership: {exc}")]
    v2_mount, v1_mounts = None, {}
    for fields in mounts:
        sep = fields.index("-")
        fstype, options, root, point = fields[sep + 1], fields[sep + 3].split(","), fields[3], _unescape(fields[4])
        if fstype == "cgroup2":
            v2_mount = (root, point)
        elif fstype == "cgroup":
            v1_mounts.update({opt: (root, point) for opt in options if opt in ("memory", "pids")})
    paths = {}
    for _, controllers, path in (m for m in member if len(m) == 3):
        for controller in controllers.split(",") if controllers else [""]:
            paths[controller] = path

    def inside(mount: tuple[str, str], path: str) -> str:
        root, point = mount
        rel = os.path.relpath(path, root) if path.startswith(root) else path.lstrip("/")
        return os.path.normpath(os.path.join(point, rel))

    candidates: list[tuple[_CgroupLayout | None, str]] = []
    if v2_mount is not None and "" in paths:
        parent = inside(v2_mount, paths[""])
        try:
            with open(os.path.join(parent, "cgroup.subtree_control")) as f:
                delegated = set(f.read().split())
        except OSError as exc:
            delegated = set()
            candidates.append((None, f"v2: {exc}"))
        if {"memory", "pids"} <= delegated:
            candidates.append((_CgroupLayout("v2", {"": parent}), ""))
        elif not candidates:
            candidates.append((None, f"v2: {parent} does not give children the memory and pids controllers "
                                     f"(cgroup.subtree_control: {' '.join(sorted(delegated)) or 'empty'})"))
    if "memory" in v1_mounts and "memory" in paths:
        parents = {c: inside(v1_mounts[c], paths[c]) for c in ("memory", "pids") if c in v1_mounts and c in paths}
        candidates.append((_CgroupLayout("v1", parents), ""))
    else:
        candidates.append((None, "v1: no memory hierarchy mounted"))
    return candidates


def _remove_stale(layout: _CgroupLayout) -> None:
    """Remove empty run cgroups left by processes that died before removing theirs (their tasks
    died with them: PDEATHSIG and the pid namespace). Never kills: a pid that looks dead here may
    belong to another pid namespace sharing this cgroup tree."""
    for parent in layout.parents.values():
        try:
            names = [n for n in os.listdir(parent) if n.startswith(CGROUP_PREFIX)]
        except OSError:
            continue
        for name in names:
            owner = name[len(CGROUP_PREFIX):].split("-")[0]
            if not owner.isdigit() or int(owner) == os.getpid() or _alive(int(owner)):
                continue
            try:
                os.rmdir(os.path.join(parent, name))
            except OSError:
                pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class SandboxPool:
    """Runs programs concurrently, one sandbox per task; `workers` defaults to the usable CPUs."""

    def __init__(self, workers: int | None = None):
        self.workers = workers or len(os.sched_getaffinity(0))
        self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="sandbox")

    def submit(self, source: str, limits: Limits = Limits(), data: bytes = b"") -> Future:
        return self._executor.submit(run_python, source, limits, data)

    def map(self, jobs: list[tuple[str, Limits, bytes]]) -> list[ExecResult]:
        """Run `(source, limits, data)` jobs; results in input order."""
        return [f.result() for f in [self.submit(*job) for job in jobs]]

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True)


_pool: SandboxPool | None = None
_pool_lock = threading.Lock()


def default_pool() -> SandboxPool:
    """A process-wide pool sized to the CPUs this process may use."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = SandboxPool()
        return _pool


# The fork server runs only this side of the file (not the module `rewards.sandbox`, so the worker's
# sys.path stays clean), compiled by the host and passed in marshal form: the host side's imports
# (concurrent.futures, dataclasses, subprocess, ...) would weigh on every fork. Configs also travel as
# marshal, reports as a dict literal, and the worker prints exceptions with the interpreter's
# built-in hook (json and traceback each pull in `re`). Blank lines keep the line numbers of tracebacks.
_SIDE_MARKER = "# " + "-" * 64 + " sandbox side"
_SERVER_COMMAND = (
    "import marshal, sys; m = sys.modules['_sandbox_init'] = type(sys)('_sandbox_init'); "
    "exec(marshal.loads(bytes.fromhex(sys.argv[1])), m.__dict__); m._server_main(int(sys.argv[2]))"
)


@functools.cache
def _init_code() -> str:
    """The sandbox side of this file as a marshalled code object, in hex (an argv string)."""
    with open(__file__) as f:
        src = f.read()
    i = src.index(_SIDE_MARKER)
    head = "from __future__ import annotations; import marshal, math, os, signal, sys"
    return marshal.dumps(compile(head + src[:i].count("\n") * "\n" + src[i:], __file__, "exec")).hex()


# ---------------------------------------------------------------- sandbox side
# Everything below runs in the fork server and the inits it forks for `run_python` (stdlib only,
# no threads).

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


def _server_main(sock_fd: int) -> None:
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
        point = _unescape(fields[4])
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


def _unescape(path: str) -> str:
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
