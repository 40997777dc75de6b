"""The host's end of the fork server: a small long-lived interpreter that forks one init per run.

The server is `python -I -S` running only `inside.py`, executed from its own file as the module
`_sandbox_init` (not imported as `rewards.sandbox.inside`, so neither the package nor the host
side's imports, such as concurrent.futures, dataclasses and subprocess, weigh on every fork, and the
worker's sys.path stays clean).
"""

from __future__ import annotations

import marshal
import os
import socket
import subprocess
import sys
import threading

from rewards.sandbox.limits import SandboxError

INSIDE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "inside.py")
# argv: the path of inside.py, the socket's descriptor.
SERVER_COMMAND = (
    "import sys\n"
    "m = sys.modules['_sandbox_init'] = type(sys)('_sandbox_init')\n"
    "m.__file__ = sys.argv[1]\n"
    "with open(sys.argv[1], 'rb') as f:\n"
    "    exec(compile(f.read(), sys.argv[1], 'exec'), m.__dict__)\n"
    "m.server_main(int(sys.argv[2]))\n"
)

class Spawner:
    """The host's end of the fork server: a small long-lived interpreter (`python -I -S`, inside.py
    loaded, ctypes imported) that forks one init per run. A fork costs well under
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
                [sys.executable, "-I", "-S", "-c", SERVER_COMMAND, INSIDE, str(theirs.fileno())],
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


spawner = Spawner()
os.register_at_fork(after_in_child=spawner._forget)
