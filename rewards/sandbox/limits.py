"""The records the host side of the sandbox shares: a run's limits, its result, and the error for a
sandbox that could not run a program."""

from __future__ import annotations

from dataclasses import dataclass

GIB = 1 << 30
MAX_MEMORY_BYTES = 4 * GIB


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
