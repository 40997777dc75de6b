"""Every supported MoE family: vLLM and the trainer agree, weight sync is exact, routing replays.

Qwen3-MoE (routed experts only) and Qwen2-MoE (routed experts plus a gated shared expert, the
layout DeepSeek-V3 and Pangu use) are built by the same bootstrap code with a short warm start.
"""

from __future__ import annotations


import pytest

pytestmark = pytest.mark.slow

ROWS = [{"id": f"p{i}", "domain": "math", "prompt": f"{i % 10}+{(7 * i) % 10}=", "reference": {}} for i in range(16)]


@pytest.fixture(scope="module", params=["qwen3_moe", "qwen2_moe"])
def family_checkpoint(request, tiny_checkpoint, tmp_path_factory):
    if request.param == "qwen3_moe":
        return tiny_checkpoint  # the session's shared checkpoint is this family
    from data_mining.bootstrap import BootstrapSpec, bootstrap
    from tests.conftest import TINY_SPEC

    spec = BootstrapSpec(**{**TINY_SPEC, "sft_steps": 60}, family=request.param)
    return str(bootstrap(tmp_path_factory.mktemp(request.param) / "ckpt", spec, threads=2))


def _max_gap(a, b):
    return max(abs(x - y) for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True))


def test_family_parity_sync_and_replay(family_checkpoint, ray_session):
    from rl.config import RolloutConfig, TrainConfig
    from rl.rollout import RolloutWorker
    from rl.trainer import TrainerWorker

    ray = ray_session
    rollout = ray.remote(RolloutWorker).options(num_cpus=1).remote(
        family_checkpoint, RolloutConfig(record_routing=True), max_model_len=96
    )
    try:
        samples = ray.get(rollout.generate.remote(ROWS, n=4, max_new_tokens=8))
        trainer = TrainerWorker(family_checkpoint, TrainConfig(lr=1e-2), max_new_tokens=8)
        report = trainer.routing_report(samples)
        print(family_checkpoint, report)
        assert report["logprob_abs_diff_max"] < 1e-4
        assert report["token_layer_pairs"] > 0 and report["routing_used_agreement"] == 1.0

        probes = [s.prompt_ids + s.completion_ids for s in samples[::8]]
        before = ray.get(rollout.sequence_logprobs.remote(probes))
        for s in samples:
            s.reward = float(s.group_index % 2)  # any non-uniform rewards: the update must move the weights
        trainer.train_step(samples)
        ray.get(rollout.load_weights.remote(trainer.weights(), 1))
        after_engine = ray.get(rollout.sequence_logprobs.remote(probes))
        after_trainer = trainer.sequence_logprobs(probes)
        assert _max_gap(before, after_engine) > 1e-3  # the engine now runs other weights...
        assert _max_gap(after_engine, after_trainer) < 1e-4  # ...exactly the trainer's
    finally:
        ray.kill(rollout)
