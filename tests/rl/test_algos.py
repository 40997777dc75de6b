"""Tests for rl/algos.py: hand-computed values, loop references, gradient routing, micro-batch algebra."""

import math

import pytest
import torch

from rl import algos

torch.set_num_threads(1)

ALL_ADVANTAGES = ["grpo", "dr_grpo", "rloo", "reinforce_pp_baseline"]
ALL_LOSSES = ["ppo_clip", "gspo", "cispo"]
ALL_KL = ["k1", "k2", "k3"]
ALL_MODES = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]


def _t(values, dtype=torch.float64):
    return torch.tensor(values, dtype=dtype)


# ----------------------------------------------------------------------------------------------------
# Registries
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "getter, known",
    [
        (algos.get_advantage, ALL_ADVANTAGES),
        (algos.get_policy_loss, ALL_LOSSES),
        (algos.get_kl, ALL_KL),
        (algos.get_aggregation, ALL_MODES),
    ],
)
def test_registry_names_and_unknown_name_lists_known(getter, known):
    for name in known:
        assert callable(getter(name))
    with pytest.raises(KeyError) as info:
        getter("no-such-variant")
    message = str(info.value)
    assert "no-such-variant" in message
    for name in known:
        assert name in message
    with pytest.raises(ValueError):  # the same error is catchable as ValueError
        getter("no-such-variant")


def test_registry_sets_are_exact_and_duplicates_rejected():
    assert algos.ADVANTAGES.names() == sorted(ALL_ADVANTAGES)
    assert algos.POLICY_LOSSES.names() == sorted(ALL_LOSSES)
    assert algos.KL_ESTIMATORS.names() == sorted(ALL_KL)
    assert algos.AGGREGATIONS.names() == sorted(ALL_MODES)
    with pytest.raises(ValueError, match="already registered"):
        algos.register_kl("k1")(algos.kl_k1)


def test_convenience_wrappers_raise_on_unknown_names():
    x = torch.zeros(1, 2)
    with pytest.raises(KeyError, match="grpo"):
        algos.compute_advantages("nope", torch.zeros(2), torch.zeros(2, dtype=torch.long))
    with pytest.raises(KeyError, match="ppo_clip"):
        algos.policy_loss("nope", x, x, x, x)
    with pytest.raises(KeyError, match="k3"):
        algos.kl_penalty("nope", x, x)
    with pytest.raises(KeyError, match="token-mean"):
        algos.aggregate_loss(x, x, "nope")


# ----------------------------------------------------------------------------------------------------
# Advantages
# ----------------------------------------------------------------------------------------------------

# Non-contiguous, interleaved, uneven groups: id 10 -> [1, 0, 1, 0], id 2 -> [2, 2], id 5 -> [5].
REWARDS = _t([1.0, 2.0, 0.0, 5.0, 1.0, 2.0, 0.0])
GROUPS = torch.tensor([10, 2, 10, 5, 10, 2, 10])


def test_grpo_closed_form():
    adv = algos.grpo_advantage(REWARDS, GROUPS, eps=0.0)
    # group 10: mean 0.5, population std 0.5; group 2 constant -> 0; singleton -> 0
    assert torch.equal(adv, _t([1.0, 0.0, -1.0, 0.0, 1.0, 0.0, -1.0]))
    adv_eps = algos.grpo_advantage(REWARDS, GROUPS)
    assert adv_eps[0].item() == pytest.approx(0.5 / (0.5 + 1e-6), abs=1e-12)


def test_grpo_uses_population_std():
    adv = algos.grpo_advantage(_t([0.0, 1.0, 2.0]), torch.tensor([0, 0, 0]), eps=0.0)
    # population std sqrt(2/3); the unbiased std (1.0) would give [-1, 0, 1]
    s = math.sqrt(1.5)
    torch.testing.assert_close(adv, _t([-s, 0.0, s]), rtol=0, atol=1e-12)


def test_dr_grpo_closed_form():
    adv = algos.dr_grpo_advantage(REWARDS, GROUPS)
    assert torch.equal(adv, _t([0.5, 0.0, -0.5, 0.0, 0.5, 0.0, -0.5]))


def test_rloo_closed_form():
    adv = algos.rloo_advantage(_t([1.0, 0.0, 0.0, 3.0]), torch.tensor([4, 4, 4, 9]))
    # 1 - mean(0, 0) = 1; 0 - mean(1, 0) = -0.5; singleton -> 0
    torch.testing.assert_close(adv, _t([1.0, -0.5, -0.5, 0.0]), rtol=0, atol=1e-12)


def test_reinforce_pp_baseline_closed_form():
    rewards, groups = _t([1.0, 0.0, 3.0, 1.0, 2.0]), torch.tensor([0, 0, 1, 1, 1])
    adv = algos.reinforce_pp_baseline_advantage(rewards, groups, eps=0.0)
    # centered [0.5, -0.5, 1, -1, 0]; batch population std sqrt(2.5 / 5)
    torch.testing.assert_close(adv, _t([0.5, -0.5, 1.0, -1.0, 0.0]) / math.sqrt(0.5), rtol=0, atol=1e-12)


def _loop_advantage(name, rewards, groups, eps):
    """Plain-python reference."""
    r, g = rewards.tolist(), groups.tolist()
    members = {}
    for i, gid in enumerate(g):
        members.setdefault(gid, []).append(i)
    centered = []
    out = []
    for i, gid in enumerate(g):
        vals = [r[j] for j in members[gid]]
        n = len(vals)
        mean = sum(vals) / n
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / n)
        c = r[i] - mean
        centered.append(c)
        if name == "grpo":
            out.append(c / (std + eps))
        elif name == "dr_grpo":
            out.append(c)
        elif name == "rloo":
            out.append(0.0 if n == 1 else r[i] - (sum(vals) - r[i]) / (n - 1))
    if name == "reinforce_pp_baseline":
        batch_std = math.sqrt(sum(c * c for c in centered) / len(centered))
        out = [c / (batch_std + eps) for c in centered]
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("name", ALL_ADVANTAGES)
def test_advantage_matches_loop_reference_on_uneven_groups(name):
    gen = torch.Generator().manual_seed(0)
    groups = torch.tensor([3, 7, 7, 0, 3, 7, 12, 3, 7, 0, 3, 3, 42])  # sizes 5, 4, 2, 1, 1
    rewards = torch.randn(groups.numel(), generator=gen, dtype=torch.float64)
    vec = algos.compute_advantages(name, rewards, groups, eps=1e-6)
    assert vec.shape == rewards.shape and vec.dtype == rewards.dtype
    torch.testing.assert_close(vec, _loop_advantage(name, rewards, groups, 1e-6), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ALL_ADVANTAGES)
def test_constant_groups_give_exact_zero(name):
    # 0.1 * 3 / 3 != 0.1 in floating point; the estimators must still return exact zeros.
    rewards = torch.tensor([0.1, 0.1, 0.1, 0.7, 0.7], dtype=torch.float32)
    for eps in (1e-6, 0.0):
        adv = algos.compute_advantages(name, rewards, torch.tensor([0, 0, 0, 1, 1]), eps=eps)
        assert torch.equal(adv, torch.zeros(5))


def test_advantage_shape_mismatch_raises():
    with pytest.raises(ValueError, match="group_index"):
        algos.grpo_advantage(torch.zeros(3), torch.zeros(2, dtype=torch.long))


def test_per_domain_normalisation_closed_form_and_balance():
    # Domain 0 (e.g. math, 0/1 rewards) has advantages of size 3, domain 1 (instruction fractions)
    # of size 0.1; a constant domain 2 stays exactly zero. After normalisation both live domains
    # have zero mean and unit RMS, so neither drowns the other.
    adv = _t([3.0, -3.0, 3.0, -3.0, 0.1, -0.1, 0.2, 0.0, 0.5, 0.5])
    domains = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2])
    out = algos.normalize_advantages_per_domain(adv, domains, eps=0.0)
    torch.testing.assert_close(out[:4], _t([1.0, -1.0, 1.0, -1.0]), rtol=0, atol=1e-12)
    # domain 1: mean 0.05, centered [0.05, -0.15, 0.15, -0.05], population std sqrt(0.0125)
    torch.testing.assert_close(out[4:8], _t([0.05, -0.15, 0.15, -0.05]) / math.sqrt(0.0125), rtol=0, atol=1e-12)
    assert torch.equal(out[8:], torch.zeros(2, dtype=torch.float64))
    for d in (0, 1):
        part = out[domains == d]
        assert abs(float(part.mean())) < 1e-12 and abs(float(part.square().mean()) - 1.0) < 1e-12


def test_per_domain_normalisation_matches_loop_and_keeps_dtype():
    gen = torch.Generator().manual_seed(1)
    domains = torch.tensor([2, 0, 0, 5, 2, 0, 5, 5, 2, 9])  # non-contiguous ids, a singleton domain
    adv = torch.randn(domains.numel(), generator=gen, dtype=torch.float32)
    out = algos.normalize_advantages_per_domain(adv, domains)
    assert out.dtype == torch.float32 and out.shape == adv.shape
    expected = []
    for i, d in enumerate(domains.tolist()):
        vals = [a for a, dd in zip(adv.tolist(), domains.tolist()) if dd == d]
        mean = sum(vals) / len(vals)
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / len(vals))
        expected.append(0.0 if std == 0 else (adv[i].item() - mean) / (std + 1e-6))
    torch.testing.assert_close(out, torch.tensor(expected, dtype=torch.float32), rtol=1e-5, atol=1e-6)
    assert out[domains == 9].item() == 0.0
    # One domain only: the same as whitening the whole batch.
    whole = algos.normalize_advantages_per_domain(adv, torch.zeros_like(domains), eps=0.0)
    torch.testing.assert_close(whole, (adv - adv.mean()) / adv.std(unbiased=False), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------------
# Policy losses
# ----------------------------------------------------------------------------------------------------

# One sequence, 4 valid tokens + 1 padded token holding garbage.
PPO_RATIOS = [1.5, 0.5, 1.1, 0.7]
PPO_ADV = [1.0, -1.0, 1.0, 1.0]
PPO_MASK = torch.tensor([[True, True, True, True, False]])


def _ppo_inputs():
    logprobs = torch.log(_t([PPO_RATIOS + [3.0]])) - 1.0
    logprobs = torch.cat([logprobs[:, :4], _t([[40.0]])], dim=1).requires_grad_(True)
    old = torch.cat([torch.full((1, 4), -1.0, dtype=torch.float64), _t([[-60.0]])], dim=1)
    adv = _t([PPO_ADV + [7.0]])
    return logprobs, old, adv


def test_ppo_clip_closed_form_values_stats_and_grads():
    logprobs, old, adv = _ppo_inputs()
    loss, stats = algos.ppo_clip_loss(logprobs, old, adv, PPO_MASK)
    # tok0 min(1.5, 1.2) -> -1.2 clipped; tok1 min(-0.5, -0.8) -> 0.8 clipped; tok2 -1.1; tok3 -0.7
    torch.testing.assert_close(loss, _t([[-1.2, 0.8, -1.1, -0.7, 0.0]]), rtol=0, atol=1e-12)
    assert stats["clip_fraction"].item() == pytest.approx(0.5)
    assert stats["ratio_mean"].item() == pytest.approx(0.95)
    assert stats["dual_clip_fraction"].item() == 0.0
    loss.sum().backward()
    # d(-r A)/d logp = -r A for unclipped tokens; clipped tokens and the padded token get exactly 0
    torch.testing.assert_close(logprobs.grad, _t([[0.0, 0.0, -1.1, -0.7, 0.0]]), rtol=0, atol=1e-12)


def test_ppo_clip_higher_is_asymmetric():
    logprobs, old, adv = _ppo_inputs()
    loss, _ = algos.ppo_clip_loss(logprobs, old, adv, PPO_MASK, clip_low=0.2, clip_high=0.28)
    torch.testing.assert_close(loss, _t([[-1.28, 0.8, -1.1, -0.7, 0.0]]), rtol=0, atol=1e-12)


def test_ppo_dual_clip_caps_negative_advantage_loss():
    ratios = _t([[5.0, 5.0, 2.0]])
    logprobs = torch.log(ratios).requires_grad_(True)
    adv = _t([[-1.0, 1.0, -1.0]])
    mask = torch.ones(1, 3)
    old = torch.zeros(1, 3, dtype=torch.float64)
    loss, stats = algos.ppo_clip_loss(logprobs, old, adv, mask, dual_clip=3.0)
    # tok0: plain loss max(5, 1.2) = 5, capped at 3 * 1 = 3; tok1: A > 0, min(5, 1.2) -> -1.2;
    # tok2: plain loss 2 < cap 3, unchanged
    torch.testing.assert_close(loss, _t([[3.0, -1.2, 2.0]]), rtol=0, atol=1e-12)
    assert stats["dual_clip_fraction"].item() == pytest.approx(1 / 3)
    assert stats["clip_fraction"].item() == pytest.approx(2 / 3)
    loss.sum().backward()
    torch.testing.assert_close(logprobs.grad, _t([[0.0, 0.0, 2.0]]), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="dual_clip"):
        algos.ppo_clip_loss(logprobs, logprobs, adv, mask, dual_clip=1.0)


def test_gspo_closed_form_values_and_stats():
    logprobs = _t([[0.1, 0.3, 9.0], [-0.1, 0.1, 0.0]])
    old = torch.zeros(2, 3, dtype=torch.float64)
    adv = _t([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.float32)
    loss, stats = algos.gspo_loss(logprobs, old, adv, mask)
    # seq0: s = exp(0.2) = 1.221 > 1.2, A = 1 -> -1.2 per valid token; seq1: s = exp(0) = 1, A = -1 -> 1
    torch.testing.assert_close(loss, _t([[-1.2, -1.2, 0.0], [1.0, 1.0, 1.0]]), rtol=0, atol=1e-12)
    assert stats["clip_fraction"].item() == pytest.approx(2 / 5)
    assert stats["ratio_mean"].item() == pytest.approx((2 * math.exp(0.2) + 3.0) / 5)


@pytest.mark.parametrize("clip, clipped_rows", [(10.0, [False, False, False]), (0.01, [True, False, True])])
@pytest.mark.parametrize("mode", ALL_MODES)
def test_gspo_gradient_equals_sequence_level_objective(clip, clipped_rows, mode):
    gen = torch.Generator().manual_seed(1)
    logprobs = (torch.randn(3, 4, generator=gen, dtype=torch.float64) * 0.1 - 1.0).requires_grad_(True)
    old = logprobs.detach() + torch.randn(3, 4, generator=gen, dtype=torch.float64) * 0.1
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    seq_adv = _t([1.0, -0.5, -2.0])  # s = [1.012, 1.048, 0.699]
    adv = seq_adv[:, None].expand(3, 4)
    loss, _ = algos.gspo_loss(logprobs, old, adv, mask, clip_low=clip, clip_high=clip)
    algos.aggregate_loss(loss, mask, mode, max_len=4).backward()
    got = logprobs.grad.clone()

    # Reference: the sequence-level loss L_i broadcast to every valid token with s_i differentiable.
    logprobs.grad = None
    m = mask.double()
    s = torch.exp(((logprobs - old) * m).sum(-1) / m.sum(-1))
    seq_loss = -torch.minimum(s * seq_adv, s.clamp(1 - clip, 1 + clip) * seq_adv)
    ref = algos.aggregate_loss(seq_loss[:, None].expand(3, 4), mask, mode, max_len=4)
    ref.backward()
    torch.testing.assert_close(got, logprobs.grad, rtol=1e-12, atol=1e-12)
    assert torch.equal(got[~mask], torch.zeros(int((~mask).sum()), dtype=torch.float64))
    # clipped sequences get no gradient, the others get it on every valid token
    assert (got != 0).any(-1).tolist() == [not c for c in clipped_rows]
    assert ((got != 0) == (mask & ~torch.tensor(clipped_rows)[:, None])).all()


def test_gspo_clipped_sequence_gets_zero_grad():
    logprobs = _t([[0.3, 0.3], [0.0, 0.0]]).requires_grad_(True)
    old = torch.zeros(2, 2, dtype=torch.float64)
    loss, _ = algos.gspo_loss(logprobs, old, torch.ones(2, 2), torch.ones(2, 2))
    loss.sum().backward()
    # seq0: s = exp(0.3) > 1.2 with A > 0 -> clipped, no gradient; seq1: s = 1, d/dlogp = -s A = -1
    torch.testing.assert_close(logprobs.grad, _t([[0.0, 0.0], [-1.0, -1.0]]), rtol=0, atol=1e-12)


def test_cispo_closed_form_and_detached_weight():
    logprobs, old, adv = _ppo_inputs()
    loss, stats = algos.cispo_loss(logprobs, old, adv, PPO_MASK)
    weights = _t([1.2, 0.8, 1.1, 0.8])  # clip(r, 0.8, 1.2)
    lp = logprobs.detach()[0, :4]
    expected = -weights * _t(PPO_ADV) * lp
    torch.testing.assert_close(loss[0, :4], expected, rtol=0, atol=1e-12)
    assert loss[0, 4].item() == 0.0
    assert stats["clip_fraction"].item() == pytest.approx(0.75)  # 1.5, 0.5 and 0.7 are outside [0.8, 1.2]
    loss.sum().backward()
    # The weight is detached: d/dlogp = -w A, nonzero even for clipped tokens (unlike PPO).
    expected_grad = torch.cat([-weights * _t(PPO_ADV), _t([0.0])])
    torch.testing.assert_close(logprobs.grad[0], expected_grad, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="dual_clip"):
        algos.cispo_loss(logprobs, old, adv, PPO_MASK, dual_clip=3.0)


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_masked_tokens_zero_loss_zero_grad_and_detached_stats(name):
    gen = torch.Generator().manual_seed(2)
    logprobs = (torch.randn(2, 5, generator=gen) - 2.0).requires_grad_(True)
    old = logprobs.detach() + 0.05 * torch.randn(2, 5, generator=gen)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    with torch.no_grad():  # garbage at padded positions must not leak (exp(90) would overflow float32)
        logprobs[~mask] = 50.0
        old[~mask] = -40.0
    adv = torch.randn(2, 5, generator=gen)
    loss, stats = algos.policy_loss(name, logprobs, old, adv, mask)
    assert torch.equal(loss[~mask], torch.zeros(2))
    assert torch.isfinite(loss).all()
    loss.sum().backward()
    assert torch.equal(logprobs.grad[~mask], torch.zeros(2))
    assert (logprobs.grad[mask] != 0).all()
    for key in ("clip_fraction", "ratio_mean"):
        assert stats[key].dim() == 0 and not stats[key].requires_grad
    assert 0.9 < stats["ratio_mean"].item() < 1.1


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_float_mask_equals_bool_mask_and_wrapper_equals_direct(name):
    logprobs, old, adv = _ppo_inputs()
    direct, direct_stats = algos.get_policy_loss(name)(logprobs, old, adv, PPO_MASK, clip_high=0.3)
    wrapped, wrapped_stats = algos.policy_loss(name, logprobs, old, adv, PPO_MASK.double(), clip_high=0.3)
    assert torch.equal(direct, wrapped)
    assert torch.equal(direct_stats["clip_fraction"], wrapped_stats["clip_fraction"])


# ----------------------------------------------------------------------------------------------------
# KL estimators
# ----------------------------------------------------------------------------------------------------


def test_kl_closed_form_and_grad():
    lp = _t([[math.log(0.5), math.log(0.2)]]).requires_grad_(True)
    ref = _t([[math.log(0.25), math.log(0.2)]])
    d = math.log(2.0)
    torch.testing.assert_close(algos.kl_penalty("k1", lp, ref), _t([[d, 0.0]]), rtol=0, atol=1e-12)
    torch.testing.assert_close(algos.kl_penalty("k2", lp, ref), _t([[0.5 * d * d, 0.0]]), rtol=0, atol=1e-12)
    k3 = algos.kl_penalty("k3", lp, ref)
    torch.testing.assert_close(k3, _t([[0.5 - 1.0 + d, 0.0]]), rtol=0, atol=1e-12)
    k3.sum().backward()
    # d k3 / d logp = 1 - exp(-d)
    torch.testing.assert_close(lp.grad, _t([[0.5, 0.0]]), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["k1", "k3"])
def test_unbiased_kl_estimators_have_exact_expectation(name):
    p = _t([0.1, 0.2, 0.3, 0.4])
    q = _t([0.25, 0.25, 0.4, 0.1])
    exact = (p * (p / q).log()).sum()
    estimate = (p * algos.get_kl(name)(p.log()[None], q.log()[None])[0]).sum()
    torch.testing.assert_close(estimate, exact, rtol=1e-12, atol=1e-12)


def test_k2_and_k3_nonnegative_k2_expectation_closed_form():
    p = _t([0.1, 0.2, 0.3, 0.4])
    q = _t([0.25, 0.25, 0.4, 0.1])
    d = p.log() - q.log()
    assert (algos.kl_k3(p.log(), q.log()) >= 0).all() and (algos.kl_k2(p.log(), q.log()) >= 0).all()
    expectation = (p * algos.kl_k2(p.log(), q.log())).sum()
    torch.testing.assert_close(expectation, 0.5 * (p * d * d).sum(), rtol=0, atol=1e-15)


# ----------------------------------------------------------------------------------------------------
# Aggregation
# ----------------------------------------------------------------------------------------------------

AGG_LOSS = _t([[1.0, 2.0, 3.0], [4.0, 99.0, 99.0], [99.0, 99.0, 99.0]])
AGG_MASK = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]], dtype=torch.bool)


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("token-mean", 10.0 / 4),
        ("seq-mean-token-mean", (2.0 + 4.0) / 2),  # the all-padding row is not a sequence
        ("seq-mean-token-sum-norm", 10.0 / (2 * 3)),
    ],
)
def test_aggregate_closed_form(mode, expected):
    got = algos.aggregate_loss(AGG_LOSS, AGG_MASK, mode, max_len=3)
    assert got.item() == pytest.approx(expected, abs=1e-12)
    float_mask = algos.aggregate_loss(AGG_LOSS, AGG_MASK.double(), mode, max_len=3)
    assert got.item() == float_mask.item()


def test_aggregate_explicit_globals_and_errors():
    got = algos.aggregate_loss(AGG_LOSS, AGG_MASK, "token-mean", global_tokens=5.0)
    assert got.item() == pytest.approx(2.0)
    got = algos.aggregate_loss(AGG_LOSS, AGG_MASK, "seq-mean-token-mean", global_seqs=4.0)
    assert got.item() == pytest.approx(1.5)
    got = algos.aggregate_loss(AGG_LOSS, AGG_MASK, "seq-mean-token-sum-norm", global_seqs=5.0, max_len=4)
    assert got.item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="max_len"):
        algos.aggregate_loss(AGG_LOSS, AGG_MASK, "seq-mean-token-sum-norm")
    with pytest.raises(ValueError, match="global_tokens"):
        algos.aggregate_loss(AGG_LOSS, AGG_MASK, "token-mean", global_tokens=0)
    empty = algos.aggregate_loss(AGG_LOSS, torch.zeros_like(AGG_MASK), "token-mean")
    assert empty.item() == 0.0


@pytest.mark.parametrize("loss_name", ALL_LOSSES)
@pytest.mark.parametrize("mode", ALL_MODES)
def test_micro_batches_sum_to_full_batch_value_and_grads(mode, loss_name):
    gen = torch.Generator().manual_seed(3)
    batch, length = 5, 6
    lengths = torch.tensor([6, 2, 0, 4, 1])  # includes an all-padding row
    mask = torch.arange(length)[None, :] < lengths[:, None]
    logprobs = (torch.randn(batch, length, generator=gen, dtype=torch.float64) - 1.0).requires_grad_(True)
    old = logprobs.detach() + 0.3 * torch.randn(batch, length, generator=gen, dtype=torch.float64)
    adv = torch.randn(batch, 1, generator=gen, dtype=torch.float64).expand(batch, length)
    tokens, seqs = float(mask.sum()), float((mask.sum(-1) > 0).sum())

    def objective(rows):
        loss, _ = algos.policy_loss(loss_name, logprobs[rows], old[rows], adv[rows], mask[rows])
        return algos.aggregate_loss(
            loss, mask[rows], mode, global_tokens=tokens, global_seqs=seqs, max_len=length
        )

    full = objective(slice(0, batch))
    full.backward()
    full_grad = logprobs.grad.clone()
    logprobs.grad = None

    total = torch.zeros((), dtype=torch.float64)
    for rows in (slice(0, 2), slice(2, 3), slice(3, 5)):
        part = objective(rows)
        part.backward()  # accumulate like gradient accumulation does
        total = total + part.detach()
    torch.testing.assert_close(total, full.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(logprobs.grad, full_grad, rtol=1e-12, atol=1e-12)
    # the full-batch default denominators equal the explicit globals
    loss, _ = algos.policy_loss(loss_name, logprobs, old, adv, mask)
    default = algos.aggregate_loss(loss, mask, mode, max_len=length)
    torch.testing.assert_close(default, full.detach(), rtol=1e-12, atol=1e-12)
    assert torch.equal(full_grad[~mask], torch.zeros(int((~mask).sum()), dtype=torch.float64))


# ----------------------------------------------------------------------------------------------------
# Stats helpers
# ----------------------------------------------------------------------------------------------------


def test_masked_mean_closed_form():
    x = _t([[1.0, 2.0, 100.0], [4.0, 100.0, 100.0], [100.0, 100.0, 100.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]])
    assert algos.masked_mean(x, mask).item() == pytest.approx(7.0 / 3)
    torch.testing.assert_close(algos.masked_mean(x, mask, dim=1), _t([1.5, 4.0, 0.0]), rtol=0, atol=0)
    torch.testing.assert_close(algos.masked_mean(x, mask.bool(), dim=0), _t([2.5, 2.0, 0.0]), rtol=0, atol=0)


def test_logprobs_from_logits_matches_log_softmax_and_is_stable():
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 3, 7, generator=gen)
    tokens = torch.randint(0, 7, (2, 3), generator=gen)
    expected = torch.log_softmax(logits, -1).gather(-1, tokens[..., None])[..., 0]
    torch.testing.assert_close(algos.logprobs_from_logits(logits, tokens), expected, rtol=1e-6, atol=1e-6)
    shifted = algos.logprobs_from_logits(logits + 1e4, tokens)  # large offset must cancel
    torch.testing.assert_close(shifted, expected, rtol=0, atol=2e-3)
    bf16 = algos.logprobs_from_logits(logits.bfloat16(), tokens)
    assert bf16.dtype == torch.float32 and bf16.shape == (2, 3)
    uniform = algos.logprobs_from_logits(torch.zeros(1, 2, 4), torch.tensor([[0, 3]]))
    torch.testing.assert_close(uniform, torch.full((1, 2), -math.log(4)), rtol=0, atol=1e-6)


def test_entropy_from_logits_closed_form_and_stable():
    logits = torch.zeros(1, 2, 5)
    logits[0, 1] = torch.tensor([1000.0, 0.0, 0.0, 0.0, 0.0])  # fully peaked
    ent = algos.entropy_from_logits(logits)
    torch.testing.assert_close(ent, torch.tensor([[math.log(5), 0.0]]), rtol=0, atol=1e-6)
    gen = torch.Generator().manual_seed(5)
    rand = torch.randn(3, 4, 6, generator=gen, dtype=torch.float64)
    p = torch.softmax(rand, -1)
    expected = -(p * p.log()).sum(-1).float()
    torch.testing.assert_close(algos.entropy_from_logits(rand), expected, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------------------------------
# MoE balance losses
# ----------------------------------------------------------------------------------------------------


def _loop_balance(router_logits, top_k, mask):
    """Plain-python reference: (f [E], P [E], loss)."""
    n_experts = router_logits.shape[1]
    counts, prob_sums, n_valid = [0.0] * n_experts, [0.0] * n_experts, 0
    for n, row in enumerate(router_logits.tolist()):
        if mask is not None and not mask[n]:
            continue
        n_valid += 1
        z = [math.exp(v - max(row)) for v in row]
        probs = [v / sum(z) for v in z]
        for e in sorted(range(n_experts), key=lambda e: -probs[e])[:top_k]:
            counts[e] += 1
        for e in range(n_experts):
            prob_sums[e] += probs[e]
    f = [c / (n_valid * top_k) for c in counts]
    P = [s / n_valid for s in prob_sums]
    return f, P, n_experts * sum(a * b for a, b in zip(f, P))


@pytest.mark.parametrize("top_k", [1, 2])
def test_balanced_routing_gives_aux_loss_one(top_k):
    n_experts = 4
    # token i strongly prefers experts i and i+1 (mod E): every expert gets the same number of slots
    logits = torch.full((n_experts, n_experts), -5.0)
    for i in range(n_experts):
        logits[i, i] = 5.0
        logits[i, (i + 1) % n_experts] = 4.0
    torch.testing.assert_close(algos.expert_load(logits, top_k), torch.full((4,), 0.25), rtol=0, atol=0)
    assert algos.load_balancing_loss(logits, top_k).item() == pytest.approx(1.0, abs=1e-6)
    uniform = algos.load_balancing_loss(torch.zeros(6, n_experts), top_k)  # uniform probs: 1 whatever f is
    assert uniform.item() == pytest.approx(1.0, abs=1e-6)


def test_load_balancing_closed_form_with_mask():
    # two valid tokens with probs [0.75, 0.25] -> f = [1, 0], P = [0.75, 0.25]; loss = 2 * 0.75
    logits = torch.tensor([[math.log(3.0), 0.0], [math.log(3.0), 0.0], [0.0, 9.0]])
    mask = torch.tensor([True, True, False])
    assert algos.load_balancing_loss(logits, 1, mask).item() == pytest.approx(1.5, abs=1e-6)
    torch.testing.assert_close(algos.expert_load(logits, 1, mask), torch.tensor([1.0, 0.0]))
    # without the mask the third token routes to expert 1: f = [2/3, 1/3], P = [(0.75*2 + p0)/3, ...]
    p0 = 1.0 / (1.0 + math.exp(9.0))
    expected = 2 * ((2 / 3) * (1.5 + p0) / 3 + (1 / 3) * (0.5 + 1 - p0) / 3)
    assert algos.load_balancing_loss(logits, 1).item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("top_k", [1, 3])
def test_load_balancing_matches_loop_reference(top_k):
    gen = torch.Generator().manual_seed(6)
    logits = torch.randn(9, 6, generator=gen, dtype=torch.float64)
    mask = torch.tensor([1, 1, 0, 1, 1, 1, 0, 1, 1], dtype=torch.bool)
    f, P, loss = _loop_balance(logits, top_k, mask)
    torch.testing.assert_close(algos.expert_load(logits, top_k, mask), torch.tensor(f, dtype=torch.float32))
    assert algos.load_balancing_loss(logits, top_k, mask).item() == pytest.approx(loss, rel=1e-5)
    # EP groups of 2: f_g, P_g are sums over each pair of experts
    f_g = [f[0] + f[1], f[2] + f[3], f[4] + f[5]]
    P_g = [P[0] + P[1], P[2] + P[3], P[4] + P[5]]
    grouped = 3 * sum(a * b for a, b in zip(f_g, P_g))
    assert algos.group_load_balancing_loss(logits, top_k, 2, mask).item() == pytest.approx(grouped, rel=1e-5)


def test_group_loss_at_group_size_one_equals_plain_and_at_E_is_one():
    gen = torch.Generator().manual_seed(7)
    logits = torch.randn(11, 8, generator=gen).requires_grad_(True)
    mask = torch.rand(11, generator=gen) > 0.3
    plain = algos.load_balancing_loss(logits, 2, mask)
    grouped = algos.group_load_balancing_loss(logits, 2, 1, mask)
    assert torch.equal(plain, grouped)
    (g_plain,) = torch.autograd.grad(plain, logits)
    (g_grouped,) = torch.autograd.grad(grouped, logits)
    assert torch.equal(g_plain, g_grouped)
    assert algos.group_load_balancing_loss(logits, 2, 8, mask).item() == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="group_size"):
        algos.group_load_balancing_loss(logits, 2, 3)
    with pytest.raises(ValueError, match="top_k"):
        algos.load_balancing_loss(logits, 9)


def test_balance_loss_gradient_skips_masked_tokens():
    gen = torch.Generator().manual_seed(8)
    logits = torch.randn(5, 4, generator=gen).requires_grad_(True)
    mask = torch.tensor([1, 0, 1, 1, 0], dtype=torch.bool)
    algos.load_balancing_loss(logits, 2, mask).backward()
    assert torch.equal(logits.grad[~mask], torch.zeros(2, 4))
    assert (logits.grad[mask].abs().sum(-1) > 0).all()


def test_router_entropy_closed_form():
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [50.0, 0.0, 0.0, 0.0]])
    assert algos.router_entropy(logits).item() == pytest.approx(math.log(4) / 2, abs=1e-6)
    masked = algos.router_entropy(logits, torch.tensor([True, False]))
    assert masked.item() == pytest.approx(math.log(4), abs=1e-6)
