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

Fallbacks, chosen once by `isolation()` by probing (or fixed by `reward.sandbox.isolation`): without
namespaces but as root, "uid" runs the worker as a fresh uid and kills every process of that uid at
the end (kill(-1) as that uid), but files in world-writable directories (/tmp) and the network stay
reachable; without either, "session" only has rlimits and a process-group kill, and a warning is
printed. Non-root users get
"namespaces" through a user namespace where the kernel allows unprivileged ones.

Memory across the process tree: where this process may create cgroups, each run gets one with the
memory and task caps for the whole tree (see `cgroup`); otherwise the per-process rlimits are the
only ones. `isolation_report()` says which mode is active and why;
`reward.sandbox.cgroup=false` turns cgroups off.

Modules: `host` (runs and pools, the probes, `configure`), `forkserver` (the host's end of the fork
server), `cgroup` (per-run cgroups), `inside` (everything that runs in the fork server and below
it, executed there from its own file), `limits` (the shared records) and `harness` (the code
reward's test harness, a program sent into the sandbox).

The program sees `__sandbox_data__` (bytes, from the `data` argument) in its globals; data travels
through an anonymous memory file, never a path or argv. File descriptor 4 is a side channel whose
bytes come back as `ExecResult.channel` (for a harness's end marker).
"""

from rewards.sandbox.cgroup import CGROUP_PREFIX
from rewards.sandbox.host import (
    ISOLATIONS,
    UID_BASE,
    SandboxPool,
    Settings,
    cgroup_layout,
    configure,
    default_pool,
    isolation,
    isolation_report,
    run_python,
)
from rewards.sandbox.limits import GIB, MAX_MEMORY_BYTES, ExecResult, Limits, SandboxError

__all__ = [
    "CGROUP_PREFIX",
    "GIB",
    "ISOLATIONS",
    "MAX_MEMORY_BYTES",
    "UID_BASE",
    "ExecResult",
    "Limits",
    "SandboxError",
    "SandboxPool",
    "Settings",
    "cgroup_layout",
    "configure",
    "default_pool",
    "isolation",
    "isolation_report",
    "run_python",
]
