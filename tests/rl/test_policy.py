"""Batched completion log-probs agree with a plain one-sequence-at-a-time computation."""

import torch

from data_mining.bootstrap import BootstrapSpec, build_model
from rl.policy import CompletionBatch, completion_logprobs
from rl.objective import assign_advantages, group_indices
from rl.types import Sample


def _tiny_model():
    spec = BootstrapSpec(hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1, num_experts=4)
    return build_model(spec, vocab_size=64, eos_id=0).eval()


def test_batched_logprobs_match_single_sequences():
    model = _tiny_model()
    samples = [
        Sample("a", "math", "", [5, 6, 7], completion_ids=[8, 9, 0]),
        Sample("b", "math", "", [5], completion_ids=[10]),
        Sample("c", "math", "", [11, 12, 13, 14, 15], completion_ids=[16, 17, 18, 19, 0]),
    ]
    batch = CompletionBatch.from_samples(samples, pad_id=0)
    logprobs, entropy = completion_logprobs(model, batch, with_entropy=True)
    for i, s in enumerate(samples):
        ids = torch.tensor([s.prompt_ids + s.completion_ids])
        with torch.no_grad():
            logits = model(ids).logits[0]
        expected = torch.log_softmax(logits[len(s.prompt_ids) - 1 : -1], -1)
        expected = expected.gather(-1, torch.tensor(s.completion_ids)[:, None])[:, 0]
        n = len(s.completion_ids)
        torch.testing.assert_close(logprobs[i, :n], expected, atol=1e-5, rtol=0)
        assert batch.completion_mask[i].sum().item() == n
    assert entropy.shape == logprobs.shape and (entropy[batch.completion_mask.bool()] > 0).all()


def test_group_advantages_follow_prompt_ids():
    samples = [Sample(pid, "math", "", [1], reward=r) for pid, r in [("x", 1.0), ("y", 0.0), ("x", 0.0), ("y", 0.0)]]
    assert group_indices(samples).tolist() == [0, 1, 0, 1]
    assign_advantages(samples, "grpo")
    # Group x has one success and one failure; group y has no variance and teaches nothing.
    assert samples[0].advantage > 0 > samples[2].advantage
    assert samples[1].advantage == 0.0 and samples[3].advantage == 0.0


def test_lr_schedule_warmup_then_cosine_to_floor():
    import math

    from rl.config import TrainConfig
    from rl.objective import lr_factor

    cfg = TrainConfig(lr_schedule="cosine", min_lr_ratio=0.1, warmup_steps=2)
    factors = [lr_factor(i, cfg, total=12) for i in range(12)]
    assert factors[:2] == [0.5, 1.0]
    assert factors[2] == 1.0 and math.isclose(factors[-1], 0.1)
    assert math.isclose(factors[7], 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 5 / 9)))
    assert all(a >= b for a, b in zip(factors[2:], factors[3:]))
    assert lr_factor(5, TrainConfig(lr_schedule="constant"), total=12) == 1.0
