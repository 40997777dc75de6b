"""Scoring while generating: the same samples and rewards as generating then scoring."""

from __future__ import annotations

import numpy as np
import pytest


# ---- generation and scoring through real actors ------------------------------------------------------


@pytest.mark.slow
def test_scoring_while_generating_gives_what_generate_then_score_gives(tiny_checkpoint, ray_session):
    import ray

    from data_mining.tasks import make_task_split
    from rewards.pool import RewardWorker
    from rl.actors import Actors, generate_and_score
    from rl.metrics import PhaseTimer
    from rl.config import RewardConfig, RolloutConfig
    from rl.rollout import RolloutWorker

    rollouts = [
        ray.remote(RolloutWorker).options(num_cpus=1).remote(tiny_checkpoint, RolloutConfig(record_routing=True),
                                                             seed=i, max_model_len=160)
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
