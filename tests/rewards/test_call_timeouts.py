"""Code-reward calls sharing one sandbox pool: a call that times out drops its queued sandbox jobs,
and time a call's job spends queued behind other calls' jobs is not charged to its timeout.

The order of events is observed on the sandbox pool itself (which job was submitted, started,
finished or cancelled when), so nothing here depends on how fast the machine is."""

from __future__ import annotations

import threading
import time

import pytest

from rewards import code
from rewards.pool import RewardPool
from rewards.sandbox import SandboxPool
from rl.types import Sample


class RecordingPool(SandboxPool):
    """A one-worker sandbox pool that records its jobs' futures in submission order."""

    def __init__(self) -> None:
        super().__init__(workers=1)
        self.jobs: list = []
        self.submitted = threading.Event()

    def submit(self, *args, **kwargs):
        future = super().submit(*args, **kwargs)
        self.jobs.append(future)
        self.submitted.set()
        return future


def _code(program: str) -> Sample:
    return Sample(prompt_id="p", domain="code", prompt="Write f.", prompt_ids=[], completion=program,
                  reference={"tests": ["assert f(2) == 5"]})


@pytest.fixture
def one_worker(monkeypatch):
    """A sandbox pool with a single worker, so jobs of different calls queue behind each other."""
    pool = RecordingPool()
    monkeypatch.setattr(code, "default_pool", lambda: pool)
    code.configure_cache(0, dedup=False)
    yield pool
    code.configure_cache()
    pool.shutdown()


def test_time_queued_behind_another_calls_jobs_does_not_count_against_the_timeout(one_worker):
    # The slow program sleeps longer than the strict call's timeout; the quick one queues behind it.
    slow = _code(f"import time\ntime.sleep(2.5)\ndef f(x): return x + 3  # {time.time()}")
    quick = _code(f"def f(x): return x + 3  # {time.time()}")
    first: dict = {}
    with RewardPool(timeout_s=None) as patient, RewardPool(timeout_s=1.5) as strict:
        thread = threading.Thread(target=lambda: first.update(result=patient.score([slow])))
        thread.start()
        assert one_worker.submitted.wait(timeout=60)  # the slow job is in the sandbox pool first
        (scored,), stats = strict.score([quick])
        slow_job, quick_job = one_worker.jobs
        assert slow_job.done()  # the quick job ran only after the slow one (2.5 s > the 1.5 s timeout)
        thread.join()
    assert quick_job.done() and not quick_job.cancelled()
    assert stats["reward/errors/code"] == 0 and scored.passed and scored.reward == 1.0
    assert first["result"][0][0].passed


def test_a_timed_out_call_drops_its_queued_sandbox_jobs(one_worker):
    stamp = time.time()
    slow = [_code(f"import time\ntime.sleep(4)\ndef f(x): return x + 3  # {stamp} {i}") for i in range(3)]
    with RewardPool(timeout_s=1.0) as pool:
        scored, stats = pool.score(slow)
        running, *queued = one_worker.jobs
        assert not running.done()  # the call returned at its timeout, with its first job still running
        assert len(queued) == 2 and all(job.cancelled() for job in queued)  # the others never start
        assert stats["reward/errors/code"] == 3 and not any(s.passed for s in scored)
        assert pool.abandoned_threads == 1
    # The worker is free once the running job ends: a new job runs (the timeout only guards a hang).
    assert one_worker.submit("pass").result(timeout=60).ok
