"""The host side of the sandbox: run one program (`run_python`), many at once (`SandboxPool`), and
decide once per process which isolation and memory cap work here (`isolation`, `cgroup_layout`).
Settings come from `configure` (the reward config's `reward.sandbox` section); see the package
docstring for the process layout."""

from __future__ import annotations

import ast
import os
import selectors
import shutil
import signal
import sys
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass

from rewards.sandbox.cgroup import CgroupLayout, RunCgroup, candidates, remove_stale
from rewards.sandbox.forkserver import spawner
from rewards.sandbox.limits import ExecResult, Limits, SandboxError

UID_BASE = 1_700_000_000  # unprivileged uids no account uses; one per run so kills and counts stay per run
ISOLATIONS = ("namespaces", "uid", "session")


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


def _run(source: str, limits: Limits, data: bytes, mode: str, layout: CgroupLayout | None) -> ExecResult:
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
                group = RunCgroup(layout, limits)
            except OSError as exc:
                raise SandboxError(f"sandbox cgroup ({layout.version}): {exc}") from exc
        config = {
            "limits": asdict(limits), "isolation": mode, "workdir": workdir, "uid": uid,
            "host_uid": os.getuid(), "host_gid": os.getgid(), "path": _import_path(),
            "cgroup_procs": group.procs if group is not None else [],
        }
        start = time.monotonic()
        pid, server = spawner.spawn(config, theirs)
        for fd in theirs:
            os.close(fd)
        theirs = []
        try:
            result = _collect(pid, out_r, err_r, chan_r, stat_r, limits, start + limits.wall_s + 1.0)
        finally:
            spawner.reap(pid)
        if result.exit_code is None and result.signal is None and not (result.timed_out or result.output_exceeded) \
                and spawner.lost(server):
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


@dataclass(frozen=True)
class Settings:
    """Process-wide sandbox settings: the reward config's `reward.sandbox.isolation`, `.cgroup`
    and `.workers`."""

    isolation: str = "auto"  # "auto": the strongest that works here (probed); else one of ISOLATIONS
    cgroup: bool = True  # a cgroup per run (a memory cap on the whole tree) where this process may make them
    workers: int = 0  # concurrent runs of `default_pool`; 0 = the CPUs this process may use

    def __post_init__(self) -> None:
        if self.isolation != "auto" and self.isolation not in ISOLATIONS:
            raise ValueError(f"sandbox isolation {self.isolation!r}; expected 'auto' or one of {ISOLATIONS}")
        if self.workers < 0:
            raise ValueError(f"sandbox workers must be >= 0 (0 = usable CPUs), got {self.workers}")


_settings = Settings()
_isolation: str | None = None
_isolation_lock = threading.Lock()


def configure(settings: Settings) -> None:
    """Use `settings` from now on in this process: what they change (the isolation mode, the cgroup
    probe, the default pool's size) is decided again at its next use."""
    global _settings, _isolation, _cgroup_probed, _pool
    old, _settings = _settings, settings
    if settings.isolation != old.isolation:
        with _isolation_lock:
            _isolation = None
    if (settings.isolation, settings.cgroup) != (old.isolation, old.cgroup):
        with _cgroup_lock:
            _cgroup_probed = False
    if settings.workers != old.workers:
        with _pool_lock:
            if _pool is not None:
                _pool.shutdown(wait=False)  # its queued and running jobs still finish
            _pool = None


def isolation() -> str:
    """The isolation in use: `Settings.isolation`, or for "auto" the strongest that works here,
    probed once per process ("namespaces", "uid" or "session")."""
    global _isolation
    with _isolation_lock:
        if _isolation is None:
            _isolation = _probe() if _settings.isolation == "auto" else _settings.isolation
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


_cgroup: CgroupLayout | None = None
_cgroup_reason = ""
_cgroup_probed = False
_cgroup_lock = threading.Lock()


def cgroup_layout() -> CgroupLayout | None:
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


def _probe_cgroups() -> tuple[CgroupLayout | None, str]:
    if not _settings.cgroup:
        return None, "turned off (reward.sandbox.cgroup=false)"
    reasons = []
    for layout, reason in candidates():
        if layout is None:
            reasons.append(reason)
            continue
        remove_stale(layout)
        try:
            result = _run("print('ok')", Limits(wall_s=10.0), b"", isolation(), layout)
        except (SandboxError, OSError) as exc:
            reasons.append(f"{layout.version}: {exc}")
            continue
        if result.ok and result.stdout == "ok\n":
            return layout, f"{layout.version}: " + ", ".join(f"{c or 'unified'} at {p}" for c, p in layout.parents.items())
        reasons.append(f"{layout.version}: a trial run failed ({result.stderr.strip()[-200:]})")
    return None, "; ".join(reasons) or "no cgroup file system mounted"


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

    def shutdown(self, wait: bool = True) -> None:
        self._executor.shutdown(wait=wait)


_pool: SandboxPool | None = None
_pool_lock = threading.Lock()


def default_pool() -> SandboxPool:
    """The process-wide pool: `Settings.workers` workers, by default one per usable CPU."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = SandboxPool(_settings.workers or None)
        return _pool

