"""Scoring while generating: the same samples and rewards as generating then scoring; code-reward
calls that time out drop their queued sandbox jobs and are not charged for other calls' jobs."""

from __future__ import annotations

import marshal
import threading
import time

import numpy as np
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


# ---- generation and scoring through real actors ------------------------------------------------------


@pytest.mark.slow
def test_scoring_while_generating_gives_what_generate_then_score_gives(tiny_checkpoint, ray_session):
    import ray

    from data_mining.tasks import make_task_split
    from rewards.pool import RewardWorker
    from rl.actors import Actors, generate_and_score
    from rl.config import RewardConfig
    from rl.metrics import PhaseTimer
    from rl.rollout import RolloutWorker

    rollouts = [
        ray.remote(RolloutWorker).options(num_cpus=1).remote(tiny_checkpoint, seed=i, max_model_len=160,
                                                             record_routing=True)
        for i in range(2)
    ]
    rewards = [ray.remote(RewardWorker).options(num_cpus=0).remote(RewardConfig(threads=2)) for _ in range(2)]
    actors = Actors(rollouts, rewards, trainer=None)
    rows, _ = make_task_split(["arithmetic", "code"], [1.0, 1.0], 10, 0, seed=3, max_digits=1)
    sampling = dict(n=4, temperature=1.0, max_new_tokens=24)
    states = ray.get([r.rng_state.remote() for r in rollouts])

    plain, plain_stats = generate_and_score(actors, rows, overlap=False, **sampling)
    ray.get([r.restore.remote(s, 0) for r, s in zip(rollouts, states)])
    timer = PhaseTimer()
    overlapped, stats = generate_and_score(actors, rows, overlap=True, timer=timer, **sampling)

    assert [(s.prompt_id, s.group_index) for s in plain] == [
        (row["id"], k) for part in (rows[0::2], rows[1::2]) for row in part for k in range(4)
    ]
    assert len({tuple(s.completion_ids) for s in plain}) > len(rows)  # sampled, not one answer per row
    for a, b in zip(plain, overlapped, strict=True):
        assert (a.prompt_id, a.group_index, a.domain) == (b.prompt_id, b.group_index, b.domain)
        assert a.completion_ids == b.completion_ids and a.completion == b.completion
        assert a.rollout_logprobs == b.rollout_logprobs and a.finish_reason == b.finish_reason
        assert a.routed_experts is not None and np.array_equal(a.routed_experts, b.routed_experts)
        assert (a.reward, a.reward_components, a.passed) == (b.reward, b.reward_components, b.passed)
    for key in [k for k in plain_stats if k.startswith("reward/errors/")] + ["reward/code/lookups"]:
        assert stats[key] == plain_stats[key], key
    assert "reward/errors/code" in stats and set(stats) >= set(plain_stats) - {"reward/code/shared"}
    assert stats["time/reward_compute"] > 0 and set(timer.seconds) == {"time/generate", "time/reward"}

    # Groups finish at different engine steps, so the rows reach the reward actors in several calls.
    ray.get([r.restore.remote(s, 0) for r, s in zip(rollouts, states)])
    calls = ray.get(rollouts[0].generate_scored.remote(rows[0::2], rewards, **sampling))
    assert len(calls) > 1
    assert sorted(i for row_indices, _ in calls for i in row_indices) == list(range(len(rows[0::2])))
    for row_indices, ref in calls:
        scored, _ = ray.get(ref)
        assert [s.prompt_id for s in scored] == [rows[0::2][i]["id"] for i in row_indices for _ in range(4)]

    # An error mid-generation (rows without an id fail when the first group finishes, with the others
    # still generating) leaves the engine empty, and the next call gets only its own rows.
    broken = [{k: v for k, v in row.items() if k != "id"} for row in rows[0::2]]
    with pytest.raises(ray.exceptions.RayTaskError, match="KeyError"):
        ray.get(rollouts[0].generate_scored.remote(broken, rewards, **sampling))
    assert not ray.get(rollouts[0].__ray_call__.remote(lambda worker: worker.llm.llm_engine.has_unfinished_requests()))
    calls = ray.get(rollouts[0].generate_scored.remote(rows[0::2], rewards, **sampling))
    assert sorted(i for row_indices, _ in calls for i in row_indices) == list(range(len(rows[0::2])))
    for row_indices, ref in calls:
        assert len(ray.get(ref)[0]) == 4 * len(row_indices)
    for actor in rollouts + rewards:
        ray.kill(actor)
