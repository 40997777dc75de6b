"""Routing replay: the trainer's MoE forward can run exactly the experts the rollout engine used."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from data_mining.bootstrap import BootstrapSpec, build_model
from rl.policy import CompletionBatch, completion_logprobs
from rl.routing import RoutingReplay, routing_tensor
from rl.types import Sample


def _tiny_model():
    spec = BootstrapSpec(hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1, num_experts=4)
    return build_model(spec, vocab_size=64, eos_id=0)


def _samples():
    return [
        Sample("a", "math", "", [5, 6, 7], completion_ids=[8, 9, 0]),
        Sample("b", "math", "", [5], completion_ids=[10]),
        Sample("c", "math", "", [11, 12, 13, 14], completion_ids=[16, 17, 0]),
    ]


def test_routing_tensor_puts_position_p_of_sample_i_at_row_i_times_s_plus_p():
    r0 = np.arange(3 * 2 * 2, dtype=np.int16).reshape(3, 2, 2)  # [positions, layers, k]
    out = routing_tensor([r0, None], seq_len=4, num_layers=2, top_k=2)  # [layers, 2 * 4, k]
    assert out.shape == (2, 8, 2)
    for p in range(3):
        for layer in range(2):
            assert out[layer, p].tolist() == r0[p, layer].tolist()
    assert (out[:, 3] == -1).all() and (out[:, 4:] == -1).all()  # unrecorded position, sample without routing


def test_routing_recorded_for_another_layer_count_is_an_error():
    r0 = np.zeros((3, 3, 2), dtype=np.int16)  # 3 layers recorded (a dense layer counted, say), the model has 2
    with pytest.raises(ValueError, match="3 MoE layers x top-2, the trainer's model 2 x top-2"):
        routing_tensor([r0], seq_len=4, num_layers=2, top_k=2)


def test_forcing_the_models_own_choices_changes_nothing():
    model = _tiny_model().eval()
    replay = RoutingReplay(model)
    assert replay.num_layers == 2 and replay.top_k == 2
    batch = CompletionBatch.from_samples(_samples(), pad_id=0)
    with torch.no_grad(), replay.apply(None):
        free, _ = completion_logprobs(model, batch)
    own = torch.stack([replay.own[layer] for layer in range(2)])  # [layers, N, k]
    with torch.no_grad(), replay.apply(own.flip(-1)):  # same sets, other order
        forced, _ = completion_logprobs(model, batch)
    torch.testing.assert_close(forced, free, atol=1e-6, rtol=0)


def test_forced_experts_are_run_and_the_router_still_gets_gradients():
    model = _tiny_model().train()
    replay = RoutingReplay(model)
    batch = CompletionBatch.from_samples(_samples(), pad_id=0)
    n = batch.input_ids.numel()
    gen = torch.Generator().manual_seed(0)
    forced = torch.stack([torch.randperm(4, generator=gen)[:2] for _ in range(2 * n)]).reshape(2, n, 2)
    forced[:, 0] = -1  # an unrecorded token keeps its own choice
    with replay.apply(None), torch.no_grad():
        free, _ = completion_logprobs(model, batch)
    own = {k: v.clone() for k, v in replay.own.items()}
    with replay.apply(forced):
        logprobs, _ = completion_logprobs(model, batch)
    for layer in range(2):
        assert torch.equal(replay.used[layer][1:], forced[layer, 1:])
        assert torch.equal(replay.used[layer][0], own[layer][0])
    valid = torch.ones(n, dtype=torch.bool)
    match, total = replay.agreement(forced, valid, used=True)
    assert total == 2 * (n - 1) and match == total
    assert not torch.allclose(logprobs.detach(), free)
    logprobs.sum().backward()
    gate = model.model.layers[0].mlp.gate.weight
    assert gate.grad is not None and gate.grad.abs().sum() > 0


def test_agreement_counts_matching_sets_on_valid_known_tokens():
    model = _tiny_model()
    replay = RoutingReplay(model)
    replay.own = {0: torch.tensor([[0, 1], [2, 3], [1, 0]]), 1: torch.tensor([[0, 1], [2, 3], [1, 0]])}
    recorded = torch.tensor([[[1, 0], [2, 1], [-1, -1]], [[0, 1], [3, 2], [0, 1]]])  # [layers, N, k]
    valid = torch.tensor([True, True, False])
    # layer 0: token 0 same set, token 1 differs, token 2 unknown; layer 1: tokens 0, 1 match, 2 invalid
    assert replay.agreement(recorded, valid) == (3.0, 4.0)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_replay_runs_the_rollouts_experts_end_to_end(tiny_checkpoint, ray_session, dtype):
    """vLLM records the experts of every token; with replay the trainer runs exactly those."""

    from rl.config import RolloutConfig, TrainConfig
    from rl.rollout import RolloutWorker
    from rl.trainer import TrainerWorker

    ray = ray_session
    rollout = ray.remote(RolloutWorker).options(num_cpus=1).remote(
        tiny_checkpoint, RolloutConfig(record_routing=True), dtype=dtype, max_model_len=96
    )
    rows = [{"id": f"p{i}", "domain": "math", "prompt": f"{i % 10}+{(3 * i) % 10}=", "reference": {}} for i in range(16)]
    samples = ray.get(rollout.generate.remote(rows, n=4, max_new_tokens=8))
    ray.kill(rollout)
    # vLLM's detokenizer is off (`rl.rollout.sampling_params`): the text comes from the worker's own
    # decode and every sampled token still has its log-prob.
    assert sum(bool(s.completion) for s in samples) >= len(samples) // 2
    assert all(len(s.rollout_logprobs) == len(s.completion_ids) > 0 for s in samples)
    assert all(lp <= 0.0 for s in samples for lp in s.rollout_logprobs)
    assert all(s.routed_experts is not None for s in samples)
    s = samples[0]
    assert s.routed_experts.shape[0] == len(s.prompt_ids) + len(s.completion_ids) - 1
    assert (s.routed_experts >= 0).all()  # every token the engine ran has its experts

    reports = {}
    for replay in (False, True):
        trainer = TrainerWorker(tiny_checkpoint, TrainConfig(routing_replay=replay), dtype=dtype)
        reports[replay] = trainer.routing_report(samples)
    on, off = reports[True], reports[False]
    print(dtype, "replay off:", off, "replay on:", on)
    assert on["token_layer_pairs"] > 1000
    assert on["routing_used_agreement"] == 1.0  # 100% of token-layer pairs run the rollout's experts
    assert off["routing_used_agreement"] == off["routing_agreement"]
    assert on["logprob_abs_diff_mean"] <= off["logprob_abs_diff_mean"] * 1.05 + 1e-7
    if dtype == "float32":
        assert on["logprob_abs_diff_max"] < 1e-4


def test_replay_without_recorded_routing_is_a_config_error():
    from rl.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="train.routing_replay"):
        load_config(None, ["rollout.record_routing=false"])
    assert not load_config(None, ["rollout.record_routing=false", "train.routing_replay=false"]).train.routing_replay
