"""The sandbox against hostile programs: each must end as a failure, stopped by its limits, and
leave the host untouched. How long the stopping takes is measured by bench/bench_sandbox.py."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from rewards.sandbox import (
    CGROUP_PREFIX,
    UID_BASE,
    Limits,
    SandboxError,
    SandboxPool,
    cgroup_layout,
    isolation,
    isolation_report,
    run_python,
)
from rewards.sandbox import host
from rewards.sandbox.forkserver import spawner

LIMITS = Limits(wall_s=2.0, cpu_s=1.0, memory_bytes=512 << 20, processes=16, output_bytes=64 << 10)
CONTAINED = pytest.mark.skipif(isolation() == "session", reason="no namespaces and not root: nothing to contain")
NAMESPACES = pytest.mark.skipif(isolation() != "namespaces", reason="needs mount and network namespaces")
CGROUPS = pytest.mark.skipif(cgroup_layout() is None,
                             reason=f"no writable cgroups here: {isolation_report()['cgroup_detail']}")


def sandbox_processes() -> list[int]:
    """Host pids of live (not zombie) processes running as a sandbox uid."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        if int(fields["Uid"].split()[0]) >= UID_BASE and not fields["State"].strip().startswith("Z"):
            pids.append(int(entry))
    return pids


def eventually(condition, wait_s: float = 60.0) -> bool:
    """Whether `condition()` holds now or becomes true while polling for up to `wait_s` (a bound
    for a busy machine, not a measured duration: killed processes take a moment to be reaped)."""
    deadline = time.monotonic() + wait_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def run(source: str, limits: Limits = LIMITS, **kwargs):
    return run_python(source, limits, **kwargs)


def stopped_by_a_limit(result) -> bool:
    """The sandbox ended the run: wall limit, output cap, or the CPU limit's signals."""
    return result.timed_out or result.output_exceeded or result.signal in (signal.SIGXCPU, signal.SIGKILL)


def test_runs_a_program_and_reports_its_output():
    result = run("import sys\nprint('out')\nprint('err', file=sys.stderr)")
    assert result.ok and result.exit_code == 0
    assert (result.stdout, result.stderr) == ("out\n", "err\n")


@pytest.mark.parametrize(
    "source, exit_code",
    [("import sys; sys.exit(5)", 5), ("import os; os._exit(3)", 3), ("raise ValueError('x')", 1),
     ("import sys; sys.exit('bye')", 1), ("raise SystemExit", 0)],
)
def test_exit_status_follows_python(source, exit_code):
    assert run(source).exit_code == exit_code


def test_data_reaches_the_program_only_through_its_globals():
    result = run("import sys\nprint(__sandbox_data__.decode(), sys.argv)", data=b"secret-123")
    assert result.stdout == "secret-123 ['<program>']\n"


def test_stdin_is_empty_and_workdir_is_private_and_removed():
    result = run("import os, sys\nprint(repr(sys.stdin.read()), os.listdir('.'), os.getcwd())\n"
                 "open('scratch.txt', 'w').write('fine')\nprint(open('scratch.txt').read())")
    assert result.ok, result.stderr
    first, second = result.stdout.splitlines()
    assert first.startswith("'' [] ") and second == "fine"
    assert not os.path.exists(first.split()[-1])


ADVERSARIAL = {
    "busy loop": "while True:\n    pass",
    "loop ignoring signals": (
        "import signal\nfor s in (signal.SIGXCPU, signal.SIGTERM, signal.SIGINT, signal.SIGALRM):\n"
        "    signal.signal(s, signal.SIG_IGN)\nwhile True:\n    try:\n        pass\n    except BaseException:\n        pass"
    ),
    "sleep in C": "import time\ntime.sleep(1000)",
    "ctypes pause": "import ctypes\nctypes.CDLL(None).pause()",
    "blocked on a pipe": "import os\nr, w = os.pipe()\nos.read(r, 1)",
    "memory bomb": "x = []\nwhile True:\n    x.append(bytearray(64 << 20))",
    "fork bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
    "print gigabytes": "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)",
    "kill the parent": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nos.killpg(0, signal.SIGKILL)\nimport time\ntime.sleep(1000)",
    "kill everything": "import os, signal\nos.kill(-1, signal.SIGKILL)\nimport time\ntime.sleep(1000)",
}


# Programs that never end by themselves: only the sandbox's limits can stop them.
ENDLESS = ("busy loop", "loop ignoring signals", "sleep in C", "ctypes pause", "blocked on a pipe", "fork bomb",
           "print gigabytes")


@pytest.mark.parametrize("name", list(ADVERSARIAL))
def test_adversarial_programs_fail_and_leave_nothing_behind(name):
    result = run(ADVERSARIAL[name])
    assert not result.ok
    if name in ENDLESS:
        assert stopped_by_a_limit(result), result
    assert sandbox_processes() == []


@CONTAINED
def test_daemonised_children_die_with_the_sandbox():
    # The program double-forks a child that leaves the session and ignores SIGTERM/SIGHUP, then
    # returns at once (first case) or hangs until the wall limit (second case).
    daemon = (
        "import os, signal, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "        signal.signal(signal.SIGHUP, signal.SIG_IGN)\n"
        "        time.sleep(1000)\n"
        "    os._exit(0)\n"
        "time.sleep(0.2)\n"
    )
    for tail in ("print('parent leaves')", "time.sleep(1000)"):
        result = run(daemon + tail)
        assert result.ok == (tail.startswith("print"))
        assert eventually(lambda: sandbox_processes() == [])


@CONTAINED
def test_files_outside_the_workdir_cannot_be_changed(tmp_path):
    # World-writable on purpose: only the sandbox (read-only mounts, its own uid) stands in the way.
    canary = tmp_path / "canary.txt"
    canary.write_text("alive")
    os.chmod(tmp_path, 0o777)
    os.chmod(canary, 0o666)
    attacks = [
        f"import os\nos.remove({str(canary)!r})",
        f"open({str(canary)!r}, 'w').write('overwritten')",
        f"open({str(canary)!r}, 'a').write('appended')",
        f"os.rename({str(canary)!r}, {str(canary)!r} + '.moved')",
        f"open({str(tmp_path / 'new.txt')!r}, 'w').write('x')",
        f"import shutil\nshutil.rmtree({str(tmp_path)!r})",
        "open('/tmp/sandbox-escape.txt', 'w').write('x')",
        f"open({os.path.abspath(__file__)!r}, 'a').write('# x')",
    ]
    for attack in attacks:
        result = run("import os\n" + attack)
        assert not result.ok, attack
    assert canary.read_text() == "alive"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["canary.txt"]
    assert not os.path.exists("/tmp/sandbox-escape.txt")


@NAMESPACES
def test_no_network():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    try:
        result = run(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\nprint('connected')")
    finally:
        server.close()
    assert not result.ok and "connected" not in result.stdout


def test_output_is_capped():
    result = run("print('y' * 10_000_000)")
    assert result.output_exceeded and not result.ok
    assert len(result.stdout) <= LIMITS.output_bytes


def test_memory_limit():
    result = run("x = bytearray(1 << 30)\nprint('allocated')")
    assert not result.ok and "MemoryError" in result.stderr
    with pytest.raises(ValueError, match="4 GiB"):
        Limits(memory_bytes=5 << 30)


FORKED_MEMORY = """
import os, time
children = []
for _ in range(4):
    pid = os.fork()
    if pid == 0:
        block = b"x" * (200 << 20)  # written, so resident
        time.sleep(1.0)
        os._exit(0)
    children.append(pid)
failed = sum(os.waitpid(pid, 0)[1] != 0 for pid in children)
print("failed children:", failed)
raise SystemExit(1 if failed else 0)
"""


@CGROUPS
def test_memory_cap_covers_the_whole_process_tree():
    # Each child stays under the per-process cap; together they hold 800 MiB against a 256 MiB cap.
    limits = Limits(wall_s=4.0, cpu_s=3.0, memory_bytes=256 << 20)
    result = run(FORKED_MEMORY, limits)
    assert not result.ok and result.oom_killed and result.cgroup == cgroup_layout().version, result
    assert sandbox_processes() == []
    leftovers = [name for parent in cgroup_layout().parents.values() for name in os.listdir(parent)
                 if name.startswith(f"{CGROUP_PREFIX}{os.getpid()}-")]
    assert leftovers == []
    # Per-process limits alone let the same tree through.
    result = run(FORKED_MEMORY, limits, cgroup=False)
    assert result.ok and result.stdout == "failed children: 0\n" and not result.oom_killed


def test_isolation_report_names_the_active_mode():
    report = isolation_report()
    assert report["isolation"] == isolation() and report["cgroup"] in ("v1", "v2", "off")
    assert report["memory_cap"] == ("per process" if report["cgroup"] == "off" else "process tree")
    assert report["cgroup_detail"]
    assert run("print(1)").cgroup == ("" if report["cgroup"] == "off" else report["cgroup"])
    # Turned off: the per-process limits only, and programs still run.
    probe = ("from rewards.sandbox import Settings, configure, isolation_report, run_python\n"
             "configure(Settings(cgroup=False))\n"
             "r = run_python('print(2)')\nprint(isolation_report()['cgroup'], r.stdout.strip(), repr(r.cgroup))")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[2], env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.stdout.split() == ["off", "2", "''"], proc.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="the uid fallback needs root")
def test_uid_fallback_kills_daemons():
    # Without namespaces, every process of the run's own uid is killed at the end.
    result = run("import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(1000)\nprint('done')", mode="uid")
    assert result.ok and result.stdout == "done\n"
    assert eventually(lambda: sandbox_processes() == [])


def test_pool_runs_jobs_concurrently_in_order(monkeypatch):
    # Each run waits at a barrier for a second one before it starts: one run at a time would break
    # the barrier (after its generous timeout) and fail the runs.
    barrier = threading.Barrier(2, timeout=60)
    real_run = host.run_python

    def paired_run(*args, **kwargs):
        barrier.wait()
        return real_run(*args, **kwargs)

    monkeypatch.setattr(host, "run_python", paired_run)
    pool = SandboxPool(workers=2)
    try:
        results = pool.map([(f"print({i})", LIMITS, b"") for i in range(4)])
    finally:
        pool.shutdown()
    assert [r.stdout for r in results] == ["0\n", "1\n", "2\n", "3\n"]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_program_sees_only_its_own_descriptors():
    # Nothing of the fork server (its socket) or of other runs reaches the program.
    result = run("import os\nopen_fds = {}\nfor fd in os.listdir('/proc/self/fd'):\n    try:\n"
                 "        open_fds[int(fd)] = os.readlink(f'/proc/self/fd/{fd}')\n"
                 "    except OSError:\n        pass  # the listing's own descriptor, closed by now\nprint(open_fds)")
    fds = eval(result.stdout)
    assert result.ok and sorted(fds) == [0, 1, 2, 4] and fds[0] == "/dev/null", fds
    assert all(target.startswith("pipe:") for fd, target in fds.items() if fd), fds


def test_fork_server_is_restarted_after_it_dies():
    assert run("print(1)").stdout == "1\n"
    server = spawner._proc
    server.kill()
    server.wait()
    assert run("print(2)").stdout == "2\n"
    assert spawner._proc is not server and spawner._proc.poll() is None


def test_fork_server_exits_with_its_host_and_a_forked_host_gets_its_own():
    # The host dies (SIGKILL, no clean-up): its fork server reads EOF and exits; a run it had in
    # flight dies with it (PDEATHSIG), leaving no sandbox process behind.
    code = ("import os, sys, time\nfrom rewards import sandbox\nfrom rewards.sandbox.forkserver import spawner\n"
            "assert sandbox.run_python('print(1)').stdout == '1\\n'\n"
            "print(spawner._proc.pid, flush=True)\n"
            "child = os.fork()\n"
            "if child == 0:\n"  # a forked host must not talk to its parent's server
            "    r = sandbox.run_python('print(3)')\n"
            "    print(r.stdout.strip(), spawner._proc.pid, flush=True)\n"
            "    os._exit(0)\n"
            "os.waitpid(child, 0)\n"
            "sandbox.run_python('import time\\ntime.sleep(100)', sandbox.Limits(wall_s=60))\n")
    host = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[2], env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        server = int(host.stdout.readline())
        out, child_server = host.stdout.readline().split()
        assert out == "3" and int(child_server) != server
        time.sleep(1.0)  # the long run is in flight
        assert _alive(server)
    finally:
        host.kill()
        host.wait()
    assert eventually(lambda: not _alive(server) and sandbox_processes() == [])


def test_a_run_whose_fork_server_dies_is_a_sandbox_error_not_a_verdict():
    # The init dies with its server, so the run ends without a report; that is the sandbox's failure
    # (a reward error), not a program that crashed.
    assert run("print(1)").ok
    server = spawner._proc
    outcome: dict = {}

    def long_run():
        try:
            outcome["result"] = run_python("import time\ntime.sleep(5)\nprint('slept')", Limits(wall_s=10.0))
        except SandboxError as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=long_run)
    thread.start()
    time.sleep(1.0)
    server.kill()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert "fork server died" in str(outcome.get("error")), outcome
    # With the server alive, a program that dies of a signal is still the program's failure.
    killed = run("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
    assert not killed.ok and killed.signal == 9
    assert run("print(2)").stdout == "2\n"


def test_programs_start_without_the_host_side_or_heavy_modules_loaded():
    # The fork server runs inside.py alone (python -I -S): nothing of the package, of site, or of
    # the modules that cost milliseconds per run (json, re, traceback each pull in re) is loaded.
    result = run("import sys\nprint(sorted(sys.modules))")
    loaded = set(eval(result.stdout))
    assert result.ok and "_sandbox_init" in loaded, result
    heavy = {"json", "re", "traceback", "dataclasses", "subprocess", "concurrent", "site", "typing", "inspect"}
    assert not loaded & heavy and not any(m.startswith("rewards") for m in loaded), sorted(loaded)
