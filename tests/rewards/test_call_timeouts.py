"""Code-reward calls sharing one sandbox pool: a call that times out drops its queued sandbox jobs,
and time a call's job spends queued behind other calls' jobs is not charged to its timeout. The
worker is held by a gate the test opens, so the order of events is decided, not timed."""

from __future__ import annotations

import marshal
import threading
import time

import pytest

from rewards import code
from rewards.pool import RewardPool
from rewards.sandbox import SandboxPool, host
from rl.types import Sample


# ---- the code reward's calls sharing one sandbox pool ----------------------------------------------


def _code(program: str) -> Sample:
    return Sample(prompt_id="p", domain="code", prompt="Write f.", prompt_ids=[], completion=program,
                  reference={"tests": ["assert f(2) == 5"]})


@pytest.fixture
def one_worker(monkeypatch):
    """A sandbox pool with a single worker, so jobs of different calls queue behind each other."""
    pool = SandboxPool(workers=1)
    monkeypatch.setattr(code, "default_pool", lambda: pool)
    code.configure_cache(0, dedup=False)
    yield pool
    code.configure_cache()
    pool.shutdown()


@pytest.fixture
def gated(monkeypatch):
    """Sandbox runs whose program holds `# gated` wait for `gate` before they start (host side, in
    the sandbox pool's worker), so a test decides when the single worker frees up; `ran` lists
    the programs' first lines in the order the worker ran them."""
    gate, ran = threading.Event(), []
    real_run = host.run_python

    def run_python(source, limits, data=b"", **kwargs):
        program = marshal.loads(data)["program"] if data else source
        ran.append(program.splitlines()[0])
        if "# gated" in program:
            gate.wait(60)
        return real_run(source, limits, data, **kwargs)

    monkeypatch.setattr(host, "run_python", run_python)
    yield gate, ran
    gate.set()


def test_time_queued_behind_another_calls_jobs_does_not_count_against_the_timeout(one_worker, gated):
    gate, ran = gated
    slow = _code(f"def f(x): return x + 3  # gated {time.time()}")
    quick = _code(f"def f(x): return x + 3  # quick {time.time()}")
    first, second = {}, {}
    with RewardPool(timeout_s=None) as patient, RewardPool(timeout_s=0.5) as strict:
        threading.Thread(target=lambda: first.update(result=patient.score([slow]))).start()
        while not ran:  # the slow job holds the only worker
            time.sleep(0.01)
        thread = threading.Thread(target=lambda: second.update(result=strict.score([quick])))
        thread.start()
        time.sleep(1.5)  # the quick job waits queued for three times its call's timeout
        gate.set()
        thread.join(60)
    (scored,), stats = second["result"]
    assert stats["reward/errors/code"] == 0 and scored.passed and scored.reward == 1.0
    assert [line.split("# ")[1].split()[0] for line in ran] == ["gated", "quick"]


def test_a_timed_out_call_drops_its_queued_sandbox_jobs(one_worker, gated):
    gate, ran = gated
    stamp = time.time()
    slow = [_code(f"def f(x): return x + 3  # gated {stamp} {i}") for i in range(3)]
    with RewardPool(timeout_s=0.5) as pool:
        scored, stats = pool.score(slow)
        assert len(ran) == 1  # returned at the timeout, while the first job still held the worker
        assert stats["reward/errors/code"] == 3 and not any(s.passed for s in scored)
        assert pool.abandoned_threads == 1
    gate.set()
    assert one_worker.submit("pass").result(timeout=60).ok
    # The other two jobs were dropped from the queue: the worker's next run was the new job.
    assert len(ran) == 2 and ran[1] == "pass"


