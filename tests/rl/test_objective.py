"""The trainer's objective as a pure function: closed forms, accumulation invariance, gradients."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from rl import algos
from rl.config import TrainConfig
from rl.objective import MicroBatch, Normalisers, StepStats, gap_metrics, micro_batch_loss, token_gaps
from rl.types import Sample


def _batch(seed: int = 0, b: int = 4, t: int = 5, experts: int = 4, layers: int = 2, seq: int = 7) -> MicroBatch:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, t + 1, (b,), generator=g)
    mask = (torch.arange(t)[None, :] < lengths[:, None]).float()  # [b, T]
    old = -torch.rand(b, t, generator=g) - 0.1
    logprobs = (old + 0.3 * torch.randn(b, t, generator=g)).requires_grad_(True)
    return MicroBatch(
        logprobs=logprobs, old_logprobs=old, rollout_logprobs=old + 0.05 * torch.randn(b, t, generator=g),
        advantages=torch.randn(b, 1, generator=g).expand(-1, t), mask=mask, entropy=torch.rand(b, t, generator=g),
        ref_logprobs=old - 0.2 * torch.rand(b, t, generator=g),
        router_logits=[torch.randn(b * seq, experts, generator=g).requires_grad_(True) for _ in range(layers)],
        router_mask=torch.rand(b * seq, generator=g) > 0.2,
    )


def _norm(*batches: MicroBatch) -> Normalisers:
    return Normalisers(tokens=float(sum(mb.mask.sum() for mb in batches)),
                       seqs=float(sum((mb.mask.sum(-1) > 0).sum() for mb in batches)),
                       valid=float(sum(mb.router_mask.sum() for mb in batches)))


def _rows(mb: MicroBatch, rows: slice, seq: int = 7) -> MicroBatch:
    token = {f.name: getattr(mb, f.name)[rows] for f in dataclasses.fields(mb)
             if isinstance(getattr(mb, f.name), torch.Tensor) and f.name != "router_mask"}
    r0, r1 = rows.start * seq, rows.stop * seq
    return MicroBatch(**token, router_logits=[z[r0:r1] for z in mb.router_logits], router_mask=mb.router_mask[r0:r1])


def test_default_objective_is_the_aggregated_policy_loss():
    mb, cfg = _batch(), TrainConfig()
    loss, metrics = micro_batch_loss(mb, cfg, _norm(mb), max_len=5, top_k=2)
    per_token, stats = algos.ppo_clip_loss(mb.logprobs, mb.old_logprobs, mb.advantages, mb.mask, clip_low=0.2,
                                           clip_high=0.2)
    expected = (per_token * mb.mask).sum() / mb.mask.sum()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert metrics["train/clip_fraction"] == pytest.approx(stats["clip_fraction"].item())
    assert metrics["train/entropy"] == pytest.approx(((mb.entropy * mb.mask).sum() / mb.mask.sum()).item())
    assert "train/kl" not in metrics or cfg.kl_coef == 0  # KL enters only with a reference and kl_coef


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_micro_batches_add_up_to_the_whole_batch(agg):
    """Split across two micro-batches with the step's normalisers, the parts sum to the whole batch's
    loss (TIS and KL included). The balance loss is left out: its load fractions are per micro-batch
    by design, so it adds up only over the same micro-batches."""
    mb = _batch(seed=1)
    cfg = TrainConfig(loss_agg=agg, tis_cap=1.2, kl_coef=0.05)
    norm = _norm(mb)
    whole, _ = micro_batch_loss(mb, cfg, norm, max_len=5, top_k=2)
    parts = [micro_batch_loss(_rows(mb, s), cfg, norm, max_len=5, top_k=2)[0] for s in (slice(0, 1), slice(1, 4))]
    assert (parts[0] + parts[1]).item() == pytest.approx(whole.item(), rel=1e-5)


def test_terms_enter_only_when_switched_on():
    mb = _batch(seed=2)
    norm = _norm(mb)
    plain, m0 = micro_batch_loss(dataclasses.replace(mb, ref_logprobs=None), TrainConfig(), norm, max_len=5, top_k=2)
    assert set(m0) == {"train/entropy", "train/clip_fraction"}
    # TIS with old == rollout log-probs weighs every token 1: the loss is unchanged.
    same = dataclasses.replace(mb, ref_logprobs=None, rollout_logprobs=mb.old_logprobs)
    tis, m1 = micro_batch_loss(same, TrainConfig(tis_cap=2.0), norm, max_len=5, top_k=2)
    assert tis.item() == pytest.approx(plain.item(), rel=1e-6) and m1["train/tis_weight_mean"] == pytest.approx(1.0)
    # KL against a reference equal to the policy is 0 (k3), so the loss is unchanged too.
    kl, m2 = micro_batch_loss(dataclasses.replace(mb, ref_logprobs=mb.logprobs.detach()), TrainConfig(kl_coef=0.5),
                              norm, max_len=5, top_k=2)
    assert kl.item() == pytest.approx(plain.item(), abs=1e-6) and m2["train/kl"] == pytest.approx(0.0, abs=1e-7)
    # The balance loss: coefficient times the layer mean of the EP-group loss, times the token share.
    aux, m3 = micro_batch_loss(dataclasses.replace(mb, ref_logprobs=None), TrainConfig(aux_loss_coef=0.1), norm,
                               max_len=5, top_k=2)
    expected = sum(algos.load_balancing_loss(z, 2, mb.router_mask) for z in mb.router_logits) / 2
    assert m3["moe/aux_loss"] == pytest.approx(expected.item(), rel=1e-6)  # share 1: one micro-batch
    assert aux.item() == pytest.approx(plain.item() + 0.1 * expected.item(), rel=1e-6)


def test_gradient_reaches_only_the_policy_and_the_routers():
    mb = _batch(seed=3)
    mb.rollout_logprobs.requires_grad_(True)
    loss, _ = micro_batch_loss(mb, TrainConfig(aux_loss_coef=0.1, kl_coef=0.1, tis_cap=1.5), _norm(mb), max_len=5,
                               top_k=2)
    loss.backward()
    assert mb.logprobs.grad is not None and mb.logprobs.grad[mb.mask == 0].abs().max() == 0  # padding gets none
    assert all(z.grad is not None and z.grad.abs().sum() > 0 for z in mb.router_logits)
    assert mb.rollout_logprobs.grad is None  # the TIS weights carry no gradient


def test_token_gaps_and_gap_metrics():
    trainer = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, 0.0, 0.0]])
    rollout = torch.tensor([[-1.5, -2.0, 9.0], [-0.25, 9.0, 9.0]])
    gaps = token_gaps(trainer, rollout, [2, 1])  # padding positions are never compared
    assert [g.tolist() for g in gaps] == [[0.5, 0.0], [0.25]]
    m = gap_metrics({"math": gaps[0], "code": gaps[1]})
    assert m["rollout/logprob_abs_diff_max"] == 0.5 and m["rollout/logprob_abs_diff_max/code"] == 0.25
    assert m["rollout/logprob_abs_diff_mean"] == pytest.approx(0.75 / 3)
    # No token sampled by the current weights (an asynchronous batch of older tokens): no gap to report.
    assert "rollout/logprob_abs_diff_max" not in gap_metrics({})


def test_step_stats_merge_in_process_order_equals_one_process():
    samples = [Sample("a", "math", "", [1]), Sample("b", "code", "", [2])]
    one, parts = StepStats(), [StepStats(), StepStats()]
    for i, stats in enumerate(parts):
        for target in (one, stats):
            target.add({"train/loss": float(i + 1)})
            target.add_gaps(samples[i:i + 1], [torch.tensor([0.1 * (i + 1)])])
            target.add_agreement(3.0, 4.0)
            used = {0: torch.tensor([[i, 1]]), 1: torch.tensor([[2, 3]])}
            logits = {0: torch.zeros(1, 4), 1: torch.zeros(1, 4)}
            target.count_experts([samples[i].domain], torch.tensor([True]), used, logits, 4, 2)
    merged = StepStats.merged(parts).summary()
    assert merged == one.summary()
    assert merged["train/loss"] == 1.5 and merged["rollout/routing_agreement"] == 0.75
    assert merged["moe/expert_load"][1] == [0.0, 0.0, 0.5, 0.5]


@pytest.mark.parametrize("key", ["advantage", "policy_loss"])
def test_unknown_algorithm_names_are_config_errors_naming_the_key(key):
    from rl.config import ConfigError, load_config
    from rl.objective import check_names

    assert load_config(None, [f"train.{key}=nope"]).train  # the config tree alone knows no algorithm names
    with pytest.raises(ConfigError, match=rf"config key 'train.{key}' must be one of \[.*\], got 'nope'"):
        load_config(None, [f"train.{key}=nope"], checks={"train": check_names})


# ---- off-policy corrections (asynchronous training) ----------------------------------------------


def test_behaviour_weights_closed_form_and_cap():
    prox = torch.tensor([[-1.0, -2.0, -0.5]])
    behav = torch.tensor([[-1.5, -2.0, -0.1]])
    w = algos.behaviour_weights(prox, behav)
    assert torch.allclose(w, torch.exp(prox - behav))
    assert torch.allclose(algos.behaviour_weights(prox, behav, cap=1.2), torch.exp(prox - behav).clamp(max=1.2))
    with pytest.raises(ValueError):
        algos.behaviour_weights(prox, behav, cap=0.0)


def test_decoupled_loss_is_ppo_against_the_proximal_policy_times_the_behaviour_weight():
    mb = _batch(3)
    norm = _norm(mb)
    loss, metrics = micro_batch_loss(mb, TrainConfig(decoupled="on"), norm, max_len=5, top_k=2)
    per_token, _ = algos.ppo_clip_loss(mb.logprobs, mb.old_logprobs, mb.advantages, mb.mask, clip_low=0.2,
                                       clip_high=0.2)
    w = torch.exp(mb.old_logprobs - mb.rollout_logprobs)
    expected = (per_token * w * mb.mask).sum() / norm.tokens
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert metrics["train/behaviour_weight_mean"] == pytest.approx(algos.masked_mean(w, mb.mask).item(), rel=1e-6)
    # The ratio is clipped against the proximal policy, not the behaviour one: moving the behaviour
    # log-probs rescales each token's loss but never changes which tokens are clipped.
    shifted = dataclasses.replace(mb, rollout_logprobs=mb.rollout_logprobs - 0.7)
    loss2, _ = micro_batch_loss(shifted, TrainConfig(decoupled="on"), norm, max_len=5, top_k=2)
    assert loss2.item() == pytest.approx(loss.item() * float(torch.exp(torch.tensor(0.7))), rel=1e-5)


def test_on_policy_samples_reduce_decoupled_and_tis_to_plain_ppo_exactly():
    """max_staleness=0: every token sampled by the proximal policy, so w = 1 and the loss is today's."""
    mb = _batch(5)
    on_policy = dataclasses.replace(mb, rollout_logprobs=mb.old_logprobs.clone())
    norm = _norm(mb)
    plain, _ = micro_batch_loss(on_policy, TrainConfig(), norm, max_len=5, top_k=2)
    for cfg in (TrainConfig(decoupled="on"), TrainConfig(decoupled="on", tis_cap=2.0), TrainConfig(tis_cap=2.0)):
        loss, _ = micro_batch_loss(on_policy, cfg, norm, max_len=5, top_k=2)
        assert loss.item() == plain.item()
    off = TrainConfig(decoupled="off")  # "off" and the default leave the loss untouched whatever the behaviour
    assert micro_batch_loss(mb, off, norm, max_len=5, top_k=2)[0].item() == micro_batch_loss(
        mb, TrainConfig(), norm, max_len=5, top_k=2)[0].item()


def test_tis_weights_are_capped_ratios_to_the_rollout_policy():
    old = torch.tensor([[-1.0, -0.2]])
    roll = torch.tensor([[-1.1, -2.0]])
    assert torch.allclose(algos.truncated_is_weights(old, roll, 2.0), torch.tensor([[float(torch.exp(torch.tensor(0.1))), 2.0]]))


def test_split_by_version_separates_the_samples_the_current_policy_sampled_whole():
    from rl.objective import split_by_version

    gaps = [torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0.4, 0.5]), torch.tensor([0.6, 0.7])]
    samples = [Sample("a", "math", "", [1], token_versions=[2, 3, 3], policy_version=2),  # continued across a load
               Sample("b", "math", "", [1], policy_version=3),
               Sample("c", "math", "", [1], token_versions=[3, 3], policy_version=3)]
    current, stale = split_by_version(gaps, samples, version=3)
    # Sample a's version-3 tokens attend over keys and values of version 2: not a parity measurement.
    assert [c.tolist() for c in current] == [[], pytest.approx([0.4, 0.5]), pytest.approx([0.6, 0.7])]
    assert stale.tolist() == pytest.approx([0.1, 0.2, 0.3])


def test_non_finite_names_what_is_not_finite():
    from rl.objective import non_finite

    assert non_finite(0.5, 2.0) is None
    assert non_finite(float("nan"), 2.0) == "loss nan"
    assert non_finite(1.0, float("inf")) == "gradient norm inf"
    assert non_finite(float("-inf"), float("nan")) == "loss -inf, gradient norm nan"
