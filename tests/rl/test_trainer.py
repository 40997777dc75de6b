"""The trainer's MoE terms: expert-load metrics, the balance loss, TIS weights, staleness."""

from __future__ import annotations


import pytest
import torch

from rl import algos
from rl.config import TrainConfig
from rl.trainer import TrainerWorker
from rl.types import Sample


def _samples(trainer: TrainerWorker, shift: float = 0.0) -> list[Sample]:
    """Two groups of two, domains math and code; rollout log-probs = trainer's minus `shift`."""
    samples = [
        Sample("a", "math", "", [5, 6, 7], completion_ids=[8, 9, 0], reward=1.0),
        Sample("a", "math", "", [5, 6, 7], completion_ids=[10, 0], reward=0.0),
        Sample("b", "code", "", [11, 12], completion_ids=[13, 14, 15, 0], reward=0.0),
        Sample("b", "code", "", [11, 12], completion_ids=[16, 0], reward=1.0),
    ]
    for s, lp in zip(samples, trainer.scorer.logprobs(trainer.model, samples, list(range(len(samples)))).values()):
        s.rollout_logprobs = (lp - shift).tolist()
    return samples


def _trainer(path: str, **cfg) -> TrainerWorker:
    return TrainerWorker(path, TrainConfig(lr=1e-2, **cfg), seed=0, max_new_tokens=8)


def test_step_logs_expert_load_per_domain_and_staleness(tiny_dir):
    trainer = _trainer(tiny_dir)
    stats = trainer.train_step(_samples(trainer))
    for suffix in ("", "/math", "/code"):
        load = torch.tensor(stats[f"moe/expert_load{suffix}"])  # [layers, experts]
        assert load.shape == (2, 4)
        torch.testing.assert_close(load.sum(-1), torch.ones(2), atol=1e-4, rtol=0)
        vmax, vmean = algos.load_violation(load)
        assert stats[f"moe/load_violation_max{suffix}"] == pytest.approx(vmax.max().item(), abs=1e-3)
        assert 0 < stats[f"moe/router_entropy{suffix}"] <= torch.log(torch.tensor(4.0)).item() + 1e-6
    assert stats["rollout/staleness_max"] == 0.0
    assert "moe/aux_loss" not in stats
    second = _samples(trainer)
    for s in second:
        s.policy_version = 0  # generated before the first update
    assert trainer.train_step(second)["rollout/staleness_max"] == 1.0


def test_logprob_gap_is_reported_per_domain(tiny_dir):
    trainer = _trainer(tiny_dir)
    samples = _samples(trainer)
    samples[2].rollout_logprobs[1] -= 3e-3  # a code token off by 3e-3; math tokens off by 1e-3
    for s in samples[:2]:
        s.rollout_logprobs = [lp - 1e-3 for lp in s.rollout_logprobs]
    stats = trainer.train_step(samples)
    assert stats["rollout/logprob_abs_diff_max/code"] == pytest.approx(3e-3, rel=1e-3)
    assert stats["rollout/logprob_abs_diff_max/math"] == pytest.approx(1e-3, rel=1e-3)
    assert stats["rollout/logprob_abs_diff_max"] == stats["rollout/logprob_abs_diff_max/code"]


def test_logged_loss_does_not_depend_on_the_micro_batch_size(tiny_dir):
    losses = []
    for micro in (1, 64):
        trainer = _trainer(tiny_dir, micro_batch_samples=micro)
        samples = _samples(trainer, shift=0.05)  # off-policy: the clipped surrogate is not trivially 0
        losses.append(trainer.train_step(samples)["train/loss"])
    assert losses[0] == pytest.approx(losses[1], rel=1e-5, abs=1e-7)
    assert losses[0] != 0.0


def test_balance_loss_reaches_the_router_only_when_on(tiny_dir):
    grads = {}
    for coef in (0.0, 1.0):
        trainer = _trainer(tiny_dir, aux_loss_coef=coef, aux_loss_group_size=2)
        samples = _samples(trainer)
        for s in samples:
            s.reward = 0.0  # no advantage: only the balance loss can move the weights
        before = trainer.model.model.layers[0].mlp.gate.weight.detach().clone()
        stats = trainer.train_step(samples)
        grads[coef] = (trainer.model.model.layers[0].mlp.gate.weight.detach() - before).abs().max().item()
        assert ("moe/aux_loss" in stats) == (coef > 0)
    assert grads[0.0] == 0.0 and grads[1.0] > 0.0


def test_tis_weights_are_capped_ratios(tiny_dir):
    trainer = _trainer(tiny_dir, tis_cap=2.0)
    stats = trainer.train_step(_samples(trainer, shift=1.0))  # ratio e^1 > 2 on every token
    assert stats["train/tis_capped_fraction"] == 1.0
    assert stats["train/tis_weight_mean"] == pytest.approx(2.0)
    old, rollout = torch.tensor([[0.0, -1.0]]), torch.tensor([[-0.5, -0.2]])
    torch.testing.assert_close(algos.truncated_is_weights(old, rollout, 1.5), torch.tensor([[1.5, torch.exp(torch.tensor(-0.8))]]))


def test_load_violation_closed_form():
    vmax, vmean = algos.load_violation(torch.tensor([[0.25, 0.25, 0.25, 0.25], [0.5, 0.5, 0.0, 0.0]]))
    torch.testing.assert_close(vmax, torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(vmean, torch.tensor([0.0, 1.0]))


def test_per_domain_advantage_normalisation_puts_domains_on_one_scale():
    from rl.objective import assign_advantages

    samples = [Sample(pid, dom, "", [1], reward=r) for pid, dom, r in
               [("a", "math", 1.0), ("a", "math", 0.0), ("b", "code", 0.1), ("b", "code", 0.0)]]
    assign_advantages(samples, "dr_grpo", per_domain=True)
    math_adv = [s.advantage for s in samples[:2]]
    code_adv = [s.advantage for s in samples[2:]]
    assert math_adv == pytest.approx(code_adv, abs=1e-4)  # 10x smaller code rewards, same scale after
    assign_advantages(samples, "dr_grpo", per_domain=False)
    assert abs(samples[0].advantage) == pytest.approx(10 * abs(samples[2].advantage), rel=1e-4)


@pytest.mark.parametrize("grad_clip", [1.0, 0.0])
def test_non_finite_loss_skips_the_optimiser_step_with_weights_untouched(tiny_dir, grad_clip):
    trainer = _trainer(tiny_dir, grad_clip=grad_clip, advantage="dr_grpo")
    samples = _samples(trainer, shift=0.05)
    samples[0].reward = float("inf")  # Dr. GRPO's r - mean(r): NaN advantages in group "a", so a NaN loss
    before = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    stats = trainer.train_step(samples)
    assert stats["train/skipped_steps"] == 1.0
    assert not torch.isfinite(torch.tensor(stats["train/loss"]))
    after = trainer.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not trainer.optimizer.state  # no Adam moments were written
    good = trainer.train_step(_samples(trainer, shift=0.05))  # the next finite step trains as usual
    assert good["train/skipped_steps"] == 0.0
    assert not all(torch.equal(before[k], trainer.model.state_dict()[k]) for k in before)
    assert all(torch.isfinite(v).all() for v in trainer.model.state_dict().values())
