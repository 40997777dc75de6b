"""Per-run cgroups (host side): where they can be made, one run's cgroup with its memory and task
caps, and the clean-up of cgroups that dead processes left behind.

Memory across the process tree: RLIMIT_AS caps each process, so a program that forks N children
could use N times the cap. Where this process may create cgroups (v2 with the memory and pids
controllers delegated, or v1 memory and pids hierarchies, as root in a container), each run gets a
cgroup of its own with the memory cap (`memory.max` / `memory.limit_in_bytes`, swap off) for the
whole tree and a task cap (`pids.max`); the kernel's OOM killer ends the run when the tree passes
it. The init joins the cgroup before anything else, so every descendant is in it; afterwards the
host kills whatever is left there and removes it. Whether a layout actually works is decided by a
trial run, in `host.cgroup_layout`.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from dataclasses import dataclass

from rewards.sandbox.inside import unescape
from rewards.sandbox.limits import Limits

CGROUP_PREFIX = "sandbox-"
# Tasks of the sandbox itself in the cgroup besides the program's: the init(s) (two with a pid
# namespace) or the init and its uid killer.
_OWN_TASKS = 2


@dataclass(frozen=True)
class CgroupLayout:
    version: str  # "v2" or "v1"
    parents: dict[str, str]  # controller ("" for v2) -> directory where run cgroups are made


class RunCgroup:
    """One run's cgroup (one per v1 hierarchy): made with its limits before the run, emptied and
    removed after it."""

    _counter = 0
    _lock = threading.Lock()

    def __init__(self, layout: CgroupLayout, limits: Limits) -> None:
        with RunCgroup._lock:
            RunCgroup._counter += 1
            name = f"{CGROUP_PREFIX}{os.getpid()}-{RunCgroup._counter}"
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



def candidates() -> list[tuple[CgroupLayout | None, str]]:
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
        fstype, options, root, point = fields[sep + 1], fields[sep + 3].split(","), fields[3], unescape(fields[4])
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

    candidates: list[tuple[CgroupLayout | None, str]] = []
    if v2_mount is not None and "" in paths:
        parent = inside(v2_mount, paths[""])
        try:
            with open(os.path.join(parent, "cgroup.subtree_control")) as f:
                delegated = set(f.read().split())
        except OSError as exc:
            delegated = set()
            candidates.append((None, f"v2: {exc}"))
        if {"memory", "pids"} <= delegated:
            candidates.append((CgroupLayout("v2", {"": parent}), ""))
        elif not candidates:
            candidates.append((None, f"v2: {parent} does not give children the memory and pids controllers "
                                     f"(cgroup.subtree_control: {' '.join(sorted(delegated)) or 'empty'})"))
    if "memory" in v1_mounts and "memory" in paths:
        parents = {c: inside(v1_mounts[c], paths[c]) for c in ("memory", "pids") if c in v1_mounts and c in paths}
        candidates.append((CgroupLayout("v1", parents), ""))
    else:
        candidates.append((None, "v1: no memory hierarchy mounted"))
    return candidates


def remove_stale(layout: CgroupLayout) -> None:
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

