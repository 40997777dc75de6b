"""RL post-training algorithms for (MoE) language models: the GRPO family, as pure tensor functions.

Every variant is a small function registered under a name, so a config string picks the algorithm:

* advantage estimators  ``fn(rewards[N], group_index[N], eps) -> advantages[N]``
  (``grpo``, ``dr_grpo``, ``rloo``, ``reinforce_pp_baseline``)
* policy losses         ``fn(logprobs, old_logprobs, advantages, mask, *, clip_low, clip_high, dual_clip)
  -> (per-token loss [B, T], stats)``  (``ppo_clip``, ``gspo``, ``cispo``)
* KL estimators         ``fn(logprobs, ref_logprobs) -> [B, T]``  (``k1``, ``k2``, ``k3``)
* loss aggregations     ``aggregate_loss(loss, mask, mode, ...)``  (``token-mean``,
  ``seq-mean-token-mean``, ``seq-mean-token-sum-norm``)

plus masked statistics, log-prob / entropy helpers and MoE router balance losses.

Shape legend: N samples (or router tokens), B sequences, T completion tokens, V vocabulary, E experts.
Masks may be bool or 0/1 float; positions where the mask is 0 never contribute a value or a gradient,
whatever (finite) garbage the caller left there.
"""

from __future__ import annotations

import math
from typing import Callable, Generic, TypeVar

import torch
from torch import Tensor

F = TypeVar("F", bound=Callable)


# ----------------------------------------------------------------------------------------------------
# Registries
# ----------------------------------------------------------------------------------------------------


class UnknownNameError(KeyError, ValueError):
    """Raised for an unregistered variant name; catchable as KeyError or ValueError."""

    def __str__(self) -> str:
        """The plain message."""
        # KeyError would repr() the message, quoting it; plain text reads better in a config error.
        return str(self.args[0])


class Registry(Generic[F]):
    """A name -> function table for one kind of algorithm component."""

    def __init__(self, kind: str) -> None:
        """``kind`` names the component in error messages, e.g. "policy loss"."""
        self.kind = kind
        self._fns: dict[str, F] = {}

    def register(self, name: str) -> Callable[[F], F]:
        """Decorator adding ``fn`` under ``name``; a duplicate name is a ValueError."""

        def deco(fn: F) -> F:
            """Store ``fn`` and return it unchanged."""
            if name in self._fns:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._fns[name] = fn
            return fn

        return deco

    def get(self, name: str) -> F:
        """The function registered as ``name``; UnknownNameError listing the known names otherwise."""
        try:
            return self._fns[name]
        except KeyError:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._fns)


ADVANTAGES: Registry = Registry("advantage estimator")
POLICY_LOSSES: Registry = Registry("policy loss")
KL_ESTIMATORS: Registry = Registry("KL estimator")
AGGREGATIONS: Registry = Registry("loss aggregation mode")

register_advantage = ADVANTAGES.register
register_policy_loss = POLICY_LOSSES.register
register_kl = KL_ESTIMATORS.register
register_aggregation = AGGREGATIONS.register


def get_advantage(name: str) -> Callable[..., Tensor]:
    """Advantage estimator registered as ``name`` (see ``ADVANTAGES.names()``)."""
    return ADVANTAGES.get(name)


def get_policy_loss(name: str) -> Callable[..., tuple[Tensor, dict[str, Tensor]]]:
    """Policy loss registered as ``name`` (see ``POLICY_LOSSES.names()``)."""
    return POLICY_LOSSES.get(name)


def get_kl(name: str) -> Callable[[Tensor, Tensor], Tensor]:
    """KL estimator registered as ``name`` (see ``KL_ESTIMATORS.names()``)."""
    return KL_ESTIMATORS.get(name)


def get_aggregation(name: str) -> Callable[..., Tensor]:
    """Loss aggregation registered as ``name`` (see ``AGGREGATIONS.names()``)."""
    return AGGREGATIONS.get(name)


# ----------------------------------------------------------------------------------------------------
# Masked statistics and log-prob helpers
# ----------------------------------------------------------------------------------------------------


def _bool_mask(mask: Tensor, shape: torch.Size) -> Tensor:
    """Mask as bool, broadcast to ``shape`` (0/1 float masks become False/True)."""
    return torch.broadcast_to(mask != 0, shape)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over positions where ``mask`` is set.

    mean = sum(x * m, dim) / max(sum(m, dim), 1)

    Shapes: x [...], mask broadcastable to x (bool or 0/1). Returns a scalar for ``dim=None``, else x's
    shape without ``dim``. An all-masked slice gives 0 rather than NaN, so empty micro-batches are
    harmless. Masked positions get zero gradient even if they hold garbage.
    """
    m = _bool_mask(mask, x.shape)
    masked = torch.where(m, x, torch.zeros_like(x))
    total, count = (masked.sum(), m.sum()) if dim is None else (masked.sum(dim), m.sum(dim))
    return total / count.clamp(min=1).to(total.dtype)


def logprobs_from_logits(logits: Tensor, tokens: Tensor) -> Tensor:
    """Log-probability of each chosen token.

    log p(y_t) = z_t[y_t] - logsumexp_v z_t[v]

    Shapes: logits [B, T, V] (any float dtype), tokens [B, T] long -> [B, T] float32. Only the
    [B, T] logsumexp and the gathered logit are kept, instead of a full [B, T, V] log_softmax copy.
    """
    logits = logits.float()  # bf16 logsumexp over a large vocabulary loses precision
    lse = torch.logsumexp(logits, dim=-1)  # [B, T]
    picked = torch.gather(logits, -1, tokens.unsqueeze(-1)).squeeze(-1)  # [B, T]
    return picked - lse


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of the softmax distribution at every position.

    H = -sum_v p_v log p_v = logsumexp(z) - sum_v p_v z_v,   p = softmax(z)

    Shapes: logits [..., V] (e.g. [B, T, V] or router [N, E]) -> [...] float32. The logsumexp form
    stays finite for very peaked logits (no log of an underflowed probability). Logits must be finite.
    """
    logits = logits.float()
    probs = torch.softmax(logits, dim=-1)  # [..., V]
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(-1)  # [...]


# ----------------------------------------------------------------------------------------------------
# Advantage estimators (outcome rewards, one scalar per sample)
# ----------------------------------------------------------------------------------------------------


def _group_centered(rewards: Tensor, group_index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample group statistics for arbitrary (uneven, non-contiguous) group ids.

    Returns (centered = r - mean_g [N], group size n_g per sample [N], group population variance per
    sample [N]), computed in float64. Groups whose rewards are all equal get centered exactly 0: such
    a group carries no learning signal, and sum/count rounding must not turn it into a tiny nonzero
    value that a later 1/(std + eps) blows up.
    """
    if rewards.dim() != 1 or group_index.shape != rewards.shape:
        raise ValueError(
            f"rewards and group_index must both be [N]; got {tuple(rewards.shape)} and "
            f"{tuple(group_index.shape)}"
        )
    r = rewards.double()
    _, inv = torch.unique(group_index, return_inverse=True)  # [N] ids remapped to 0..G-1
    num_groups = int(inv.max()) + 1 if inv.numel() else 0
    counts = torch.bincount(inv, minlength=num_groups).double()  # [G]
    mean = torch.zeros(num_groups, dtype=r.dtype, device=r.device).index_add_(0, inv, r) / counts  # [G]
    g_max = torch.full_like(mean, -math.inf).scatter_reduce(0, inv, r, reduce="amax")  # [G]
    g_min = torch.full_like(mean, math.inf).scatter_reduce(0, inv, r, reduce="amin")  # [G]
    constant = (g_max == g_min)[inv]  # [N]
    centered = torch.where(constant, torch.zeros_like(r), r - mean[inv])  # [N]
    # Two-pass variance (mean first) for accuracy when rewards share a large offset.
    var = torch.zeros_like(mean).index_add_(0, inv, centered.square()) / counts  # [G]
    return centered, counts[inv], var[inv]


@register_advantage("grpo")
def grpo_advantage(rewards: Tensor, group_index: Tensor, eps: float = 1e-6) -> Tensor:
    """GRPO group-normalised advantage (Shao et al. 2024, DeepSeekMath, arXiv:2402.03300).

    A_i = (r_i - mean_g) / (std_g + eps),  std_g = sqrt(mean_g((r - mean_g)^2))

    std_g is the *population* std (unbiased=False): each group's advantages then have unit RMS
    whatever the group size, and a singleton group is defined (0). Groups with equal rewards give 0.
    Shapes: rewards [N] float, group_index [N] long -> [N] in rewards' dtype.
    """
    centered, _, var = _group_centered(rewards, group_index)
    std = var.sqrt()  # [N]
    # Explicit zero for constant groups so eps = 0 gives 0, not 0/0.
    return torch.where(std > 0, centered / (std + eps), torch.zeros_like(centered)).to(rewards.dtype)


@register_advantage("dr_grpo")
def dr_grpo_advantage(rewards: Tensor, group_index: Tensor, eps: float = 1e-6) -> Tensor:
    """Dr. GRPO advantage (Liu et al. 2025, "Understanding R1-Zero-Like Training", arXiv:2503.20783).

    A_i = r_i - mean_g

    No std division: it up-weights near-uniform (too easy / too hard) groups, a difficulty bias.
    ``eps`` is unused and kept for the shared signature. Shapes: [N], [N] -> [N].
    """
    centered, _, _ = _group_centered(rewards, group_index)
    return centered.to(rewards.dtype)


@register_advantage("rloo")
def rloo_advantage(rewards: Tensor, group_index: Tensor, eps: float = 1e-6) -> Tensor:
    """REINFORCE leave-one-out advantage (Ahmadian et al. 2024, "Back to Basics", arXiv:2402.14740).

    A_i = r_i - (sum_{j in g, j != i} r_j) / (n_g - 1) = n_g / (n_g - 1) * (r_i - mean_g)

    The baseline excludes the sample itself, so it is independent of the action (unbiased). Singleton
    groups have no other sample and give 0. ``eps`` is unused. Shapes: [N], [N] -> [N].
    """
    centered, n, _ = _group_centered(rewards, group_index)
    scale = torch.where(n > 1, n / (n - 1).clamp(min=1), torch.zeros_like(n))  # [N]
    return (centered * scale).to(rewards.dtype)


@register_advantage("reinforce_pp_baseline")
def reinforce_pp_baseline_advantage(rewards: Tensor, group_index: Tensor, eps: float = 1e-6) -> Tensor:
    """REINFORCE++-baseline advantage (Hu et al. 2025, "REINFORCE++", arXiv:2501.03262).

    c_i = r_i - mean_g;   A_i = c_i / (std_batch(c) + eps)

    Group mean as baseline, then one normalisation over the whole batch (population std; the batch
    mean of c is already 0), which is less noisy than per-group std for small groups.
    Shapes: [N], [N] -> [N].
    """
    centered, _, _ = _group_centered(rewards, group_index)
    if not bool(centered.any()):  # also covers N = 0; avoids 0/0 when eps = 0
        return torch.zeros_like(rewards)
    batch_std = centered.square().mean().sqrt()
    return (centered / (batch_std + eps)).to(rewards.dtype)


def compute_advantages(name: str, rewards: Tensor, group_index: Tensor, eps: float = 1e-6) -> Tensor:
    """Run the advantage estimator registered as ``name``. Shapes: [N], [N] -> [N]."""
    return get_advantage(name)(rewards, group_index, eps=eps)


def normalize_advantages_per_domain(advantages: Tensor, domain_index: Tensor, eps: float = 1e-6) -> Tensor:
    """Whiten advantages within each capability domain (multi-task balancing, as in Pangu Ultra MoE's
    multi-capability RL, arXiv:2505.04519).

    A'_i = (A_i - mean_d) / (std_d + eps),  d = domain of sample i, std_d the population std

    Each domain then contributes advantages of unit RMS, so a domain whose rewards spread widely
    (or whose groups are mostly informative) does not drown out the others in the loss. A domain
    whose advantages are all equal (all-uniform groups, or a single sample) gets exactly 0.
    Shapes: advantages [N] float, domain_index [N] long -> [N] in advantages' dtype.
    """
    # Domains are "groups" here: the same centring and population variance as GRPO's groups.
    centered, _, var = _group_centered(advantages, domain_index)
    std = var.sqrt()  # [N]
    return torch.where(std > 0, centered / (std + eps), torch.zeros_like(centered)).to(advantages.dtype)


# ----------------------------------------------------------------------------------------------------
# Policy losses (per token, aggregate with ``aggregate_loss``)
# ----------------------------------------------------------------------------------------------------


def _masked_log_ratio(logprobs: Tensor, old_logprobs: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """(bool mask [B, T], log(pi / pi_old) [B, T] set to 0 at masked positions).

    Zeroing *before* exp keeps padded garbage from producing inf, whose 0 * inf backward is NaN.
    """
    m = _bool_mask(mask, logprobs.shape)
    return m, torch.where(m, logprobs - old_logprobs, torch.zeros_like(logprobs))


def _clipped_surrogate(
    ratio: Tensor, advantages: Tensor, clip_low: float, clip_high: float, dual_clip: float | None
) -> tuple[Tensor, Tensor, Tensor]:
    """PPO clipped surrogate loss with optional dual clip.

    L = max(-r A, -clip(r, 1 - clip_low, 1 + clip_high) A);  if A < 0 and dual_clip = c:  L = min(L, -c A)

    Returns (loss [B, T], clip-branch-active [B, T] bool, dual-cap-active [B, T] bool).
    """
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
    unclipped = -ratio * advantages
    clipped = -ratio.clamp(1.0 - clip_low, 1.0 + clip_high) * advantages
    loss = torch.maximum(unclipped, clipped)
    clip_active = clipped > unclipped  # the clamped (zero-gradient) branch wins
    if dual_clip is None:
        return loss, clip_active, torch.zeros_like(clip_active)
    cap = -dual_clip * advantages
    # For A < 0 a huge ratio makes -rA unbounded; the cap bounds it (and stops its gradient).
    dual_active = (advantages < 0) & (cap < loss)
    return torch.where(dual_active, cap, loss), clip_active, dual_active


def _loss_stats(
    m: Tensor, ratio: Tensor, log_ratio: Tensor, clip_active: Tensor, **extra: Tensor
) -> dict[str, Tensor]:
    """Detached scalar stats over valid tokens: clip fraction, ratio mean and k3 KL(old || new)."""
    with torch.no_grad():
        stats = {
            "clip_fraction": masked_mean(clip_active.float(), m),
            "ratio_mean": masked_mean(ratio.float(), m),
            # k3 estimate of KL(pi_old || pi) from samples of pi_old: (r - 1) - log r.
            "approx_kl": masked_mean((ratio - 1.0 - log_ratio).float(), m),
        }
        stats.update({k: masked_mean(v.float(), m) for k, v in extra.items()})
    return stats


@register_policy_loss("ppo_clip")
def ppo_clip_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Token-level PPO clipped surrogate (Schulman et al. 2017, arXiv:1707.06347).

    r_t = exp(logp_t - old_logp_t)
    L_t = -min(r_t A_t, clip(r_t, 1 - clip_low, 1 + clip_high) A_t)
    clip_high > clip_low is DAPO's clip-higher (Yu et al. 2025, arXiv:2503.14476), which keeps
    low-probability tokens explorable. With ``dual_clip = c > 1`` (Ye et al. 2020, "Mastering Complex
    Control in MOBA Games", arXiv:1912.09729), for A_t < 0: L_t = min(L_t, -c A_t).

    Shapes: logprobs, old_logprobs, advantages, mask [B, T] -> (loss [B, T], 0 where mask is 0;
    stats: clip_fraction, dual_clip_fraction, ratio_mean, approx_kl as detached scalars).
    """
    m, log_ratio = _masked_log_ratio(logprobs, old_logprobs, mask)
    ratio = torch.exp(log_ratio)  # [B, T]
    loss, clip_active, dual_active = _clipped_surrogate(ratio, advantages, clip_low, clip_high, dual_clip)
    loss = torch.where(m, loss, torch.zeros_like(loss))
    stats = _loss_stats(m, ratio, log_ratio, clip_active | dual_active, dual_clip_fraction=dual_active)
    return loss, stats


@register_policy_loss("gspo")
def gspo_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Group Sequence Policy Optimization (Zheng et al. 2025, arXiv:2507.18071).

    s_i = exp( (1/|y_i|) sum_t (logp_it - old_logp_it) )           (sequence-level, length-normalised)
    L_i = -min(s_i A_i, clip(s_i, 1 - clip_low, 1 + clip_high) A_i), broadcast to valid tokens of i.

    Implemented in the GSPO-token form  s_it = sg(s_i) * exp(logp_it - sg(logp_it)):  its value is s_i
    and d s_it / d logp_it = s_i, so with A_it = A_i any aggregation that weights the tokens of one
    sequence equally (all registered modes) yields exactly the sequence-level GSPO gradient
    s_i A_i (1/|y_i|) sum_t grad logp_it, up to that aggregation's per-sequence weight. It also
    accepts per-token advantages. The paper's clip ranges are much smaller than PPO's (about 3e-4 /
    4e-4); pass them explicitly. ``dual_clip`` works as in ``ppo_clip``.

    Shapes: [B, T] inputs -> (loss [B, T], 0 where mask is 0; stats as ``ppo_clip``, clip_fraction
    counting the valid tokens of clipped sequences).
    """
    m, log_ratio = _masked_log_ratio(logprobs, old_logprobs, mask)
    seq_log_ratio = masked_mean(log_ratio, m, dim=-1)  # [B]
    seq_ratio = torch.exp(seq_log_ratio).detach().unsqueeze(-1)  # [B, 1]
    token_ratio = seq_ratio * torch.exp(logprobs - logprobs.detach())  # [B, T], value = s_i
    loss, clip_active, dual_active = _clipped_surrogate(
        token_ratio, advantages, clip_low, clip_high, dual_clip
    )
    loss = torch.where(m, loss, torch.zeros_like(loss))
    seq_stats_ratio = seq_ratio.expand_as(log_ratio)  # [B, T], each token reports its sequence's s_i
    seq_stats_log_ratio = seq_log_ratio.detach().unsqueeze(-1).expand_as(log_ratio)  # [B, T]
    stats = _loss_stats(
        m, seq_stats_ratio, seq_stats_log_ratio, clip_active | dual_active, dual_clip_fraction=dual_active
    )
    return loss, stats


@register_policy_loss("cispo")
def cispo_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped IS-weight Policy Optimization (MiniMax-M1, MiniMax 2025, arXiv:2506.13585).

    w_t = sg(clip(r_t, 1 - clip_low, 1 + clip_high)),  r_t = exp(logp_t - old_logp_t)
    L_t = -w_t A_t logp_t

    Unlike PPO no token is dropped from the gradient: clipping only bounds the (detached) importance
    weight, so rare "fork" tokens with large ratios keep contributing. MiniMax-M1 effectively clips
    only the upper side; use a large clip_low for that. ``dual_clip`` does not apply (the weight is
    already bounded both ways) and raises ValueError if given.

    Shapes: [B, T] inputs -> (loss [B, T], 0 where mask is 0; stats: clip_fraction = fraction of valid
    tokens whose weight was clipped, ratio_mean, approx_kl).
    """
    if dual_clip is not None:
        raise ValueError("cispo does not support dual_clip: its IS weight is already clipped")
    m, log_ratio = _masked_log_ratio(logprobs, old_logprobs, mask)
    ratio = torch.exp(log_ratio)  # [B, T]
    weight = ratio.clamp(1.0 - clip_low, 1.0 + clip_high).detach()  # [B, T]
    loss = -weight * advantages * logprobs
    loss = torch.where(m, loss, torch.zeros_like(loss))
    return loss, _loss_stats(m, ratio, log_ratio, weight != ratio)


def policy_loss(
    name: str,
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Run the policy loss registered as ``name``. Shapes: [B, T] inputs -> ([B, T], stats)."""
    return get_policy_loss(name)(
        logprobs, old_logprobs, advantages, mask, clip_low=clip_low, clip_high=clip_high, dual_clip=dual_clip
    )


# ----------------------------------------------------------------------------------------------------
# KL estimators to the reference policy (Schulman 2020, "Approximating KL divergence",
# http://joschu.net/blog/kl-approx.html); samples come from the current policy, so all estimate
# KL(pi || pi_ref).
# ----------------------------------------------------------------------------------------------------


@register_kl("k1")
def kl_k1(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k1 = log(pi / pi_ref): unbiased, high variance, can be negative. Shapes: [B, T], [B, T] -> [B, T]."""
    return logprobs - ref_logprobs


@register_kl("k2")
def kl_k2(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k2 = 0.5 * log(pi / pi_ref)^2: biased, low variance, >= 0. Shapes: [B, T], [B, T] -> [B, T]."""
    return 0.5 * (logprobs - ref_logprobs).square()


@register_kl("k3")
def kl_k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k3 = pi_ref/pi - 1 - log(pi_ref/pi) = exp(-d) - 1 + d,  d = logp - ref_logp.

    Unbiased and always >= 0 (the GRPO KL term). Shapes: [B, T], [B, T] -> [B, T].
    """
    log_ratio = logprobs - ref_logprobs
    return torch.exp(-log_ratio) - 1.0 + log_ratio


def kl_penalty(name: str, logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """Run the KL estimator registered as ``name``. Shapes: [B, T], [B, T] -> [B, T]."""
    return get_kl(name)(logprobs, ref_logprobs)


# ----------------------------------------------------------------------------------------------------
# Loss aggregation. Denominators are passed in for the *global* batch, so per-micro-batch values (and
# gradients) sum to exactly the full-batch ones under gradient accumulation / data parallelism.
# ----------------------------------------------------------------------------------------------------


def _positive(value: float, what: str) -> float:
    """``value`` itself, or ValueError if it is not > 0 (a zero denominator would give inf/NaN)."""
    if value <= 0:
        raise ValueError(f"{what} must be > 0, got {value}")
    return value


def _num_seqs(mask: Tensor, global_seqs: float | None) -> float | Tensor:
    """global_seqs if given, else this batch's sequences with >= 1 valid token (at least 1)."""
    if global_seqs is not None:
        return _positive(global_seqs, "global_seqs")
    return (mask.sum(-1) > 0).sum().clamp(min=1)


@register_aggregation("token-mean")
def _agg_token_mean(
    loss: Tensor, mask: Tensor, global_tokens: float | None, global_seqs: float | None, max_len: int | None
) -> Tensor:
    """sum_{i,t} m_it L_it / global_tokens (DAPO token-level loss). loss, mask [B, T] -> scalar."""
    if global_tokens is not None:
        return loss.sum() / _positive(global_tokens, "global_tokens")
    return loss.sum() / mask.sum().clamp(min=1)


@register_aggregation("seq-mean-token-mean")
def _agg_seq_mean_token_mean(
    loss: Tensor, mask: Tensor, global_tokens: float | None, global_seqs: float | None, max_len: int | None
) -> Tensor:
    """sum_i (sum_t m_it L_it / |y_i|) / global_seqs (original GRPO). loss, mask [B, T] -> scalar."""
    per_seq = loss.sum(-1) / mask.sum(-1).clamp(min=1)  # [B]
    return per_seq.sum() / _num_seqs(mask, global_seqs)


@register_aggregation("seq-mean-token-sum-norm")
def _agg_seq_mean_token_sum_norm(
    loss: Tensor, mask: Tensor, global_tokens: float | None, global_seqs: float | None, max_len: int | None
) -> Tensor:
    """sum_{i,t} m_it L_it / (global_seqs * max_len) (Dr. GRPO constant normaliser, no length bias).

    loss, mask [B, T] -> scalar.
    """
    if max_len is None:
        raise ValueError("seq-mean-token-sum-norm needs max_len (e.g. the max new tokens)")
    return loss.sum() / (_num_seqs(mask, global_seqs) * _positive(max_len, "max_len"))


def aggregate_loss(
    loss: Tensor,
    mask: Tensor,
    mode: str,
    *,
    global_tokens: float | None = None,
    global_seqs: float | None = None,
    max_len: int | None = None,
) -> Tensor:
    """Reduce a per-token loss to a scalar with the aggregation registered as ``mode``.

    token-mean:               sum(L * m) / global_tokens            (default: mask.sum() of this batch)
    seq-mean-token-mean:      sum_i mean_t(L_i * m_i) / global_seqs (default: sequences with >= 1 token)
    seq-mean-token-sum-norm:  sum(L * m) / (global_seqs * max_len)  (Dr. GRPO, Liu et al. 2025)

    Give ``global_tokens`` / ``global_seqs`` the counts of the whole optimiser-step batch (all
    micro-batches and ranks): summing the micro-batch results then equals the full-batch value, and
    the accumulated gradients equal the full-batch gradients. Defaults clamp empty counts to 1 so an
    all-padding micro-batch contributes 0.

    Shapes: loss [B, T], mask [B, T] (bool or 0/1) -> scalar. Masked positions get zero gradient.
    """
    agg = get_aggregation(mode)
    m = _bool_mask(mask, loss.shape)
    masked = torch.where(m, loss, torch.zeros_like(loss))  # [B, T]
    return agg(masked, m.to(loss.dtype), global_tokens, global_seqs, max_len)


# ----------------------------------------------------------------------------------------------------
# MoE router balance losses and statistics (router logits of the training forward pass)
# ----------------------------------------------------------------------------------------------------


def _router_fractions(
    router_logits: Tensor, top_k: int, mask: Tensor | None, assignments: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """(f [E], P [E]): fraction of top-k assignments and mean router probability per expert.

    f_e = #{(valid token, slot) routed to e} / (N_valid * top_k)   (no gradient: it is a count)
    P_e = mean over valid tokens of softmax(router_logits)_e       (carries the gradient)

    The routed experts are `assignments` [N, k] when given (the experts the forward ran, e.g. chosen
    with a correction bias or group limit), else the top-k of softmax(router_logits).
    """
    num_tokens, num_experts = router_logits.shape
    if not 1 <= top_k <= num_experts:
        raise ValueError(f"top_k must be in [1, {num_experts}], got {top_k}")
    if mask is None:
        valid = torch.ones(num_tokens, dtype=torch.bool, device=router_logits.device)  # [N]
    else:
        valid = mask != 0  # [N]
    probs = torch.softmax(router_logits.float(), dim=-1)  # [N, E]
    chosen = torch.topk(probs.detach(), top_k, dim=-1).indices if assignments is None else assignments  # [N, k]
    slots = torch.zeros_like(probs).scatter_(1, chosen, 1.0)  # [N, E] 1 where expert e is in the top-k
    n_valid = valid.sum().clamp(min=1)
    f = torch.where(valid.unsqueeze(-1), slots, 0).sum(0) / (n_valid * top_k)  # [E]
    p = torch.where(valid.unsqueeze(-1), probs, 0).sum(0) / n_valid  # [E]
    return f, p


def expert_load(router_logits: Tensor, top_k: int, mask: Tensor | None = None) -> Tensor:
    """Fraction of (valid token, top-k slot) assignments per expert; sums to 1.

    load_e = #{(n, j): topk_j(softmax(z_n)) = e, m_n = 1} / (N_valid * top_k)

    Shapes: router_logits [N, E], mask [N] or None -> [E] float32 (no gradient).
    """
    f, _ = _router_fractions(router_logits, top_k, mask)
    return f


def load_balancing_loss(
    router_logits: Tensor, top_k: int, mask: Tensor | None = None, assignments: Tensor | None = None
) -> Tensor:
    """Switch/GShard auxiliary load-balancing loss (Fedus et al. 2021, arXiv:2101.03961;
    Lepikhin et al. 2020, arXiv:2006.16668).

    L = E * sum_e f_e * P_e   (f_e: assignment fraction, P_e: mean router probability, valid tokens)

    Minimised (= 1.0) by a uniform assignment f_e = 1/E; the gradient flows through P only.
    Shapes: router_logits [N, E], mask [N] or None, assignments [N, k] or None (see
    ``_router_fractions``) -> scalar float32.
    """
    f, p = _router_fractions(router_logits, top_k, mask, assignments)
    return router_logits.shape[-1] * (f * p).sum()


def group_load_balancing_loss(
    router_logits: Tensor, top_k: int, group_size: int, mask: Tensor | None = None,
    assignments: Tensor | None = None,
) -> Tensor:
    """EP-group load-balancing loss (Pangu Ultra MoE, Huawei 2025, arXiv:2505.04519).

    Experts are split into G = E / group_size contiguous groups (one per expert-parallel device);
    f_g = sum_{e in g} f_e,  P_g = sum_{e in g} P_e,  L = G * sum_g f_g * P_g.
    Balancing only across devices leaves experts inside a device free to specialise. group_size = 1
    is exactly ``load_balancing_loss``; group_size = E gives the constant 1.

    Shapes: router_logits [N, E], mask [N] or None, assignments [N, k] or None (see
    ``_router_fractions``) -> scalar float32. ValueError if E % group_size.
    """
    num_experts = router_logits.shape[-1]
    if group_size < 1 or num_experts % group_size != 0:
        raise ValueError(f"group_size {group_size} must be >= 1 and divide the expert count {num_experts}")
    num_groups = num_experts // group_size
    f, p = _router_fractions(router_logits, top_k, mask, assignments)
    f_g = f.view(num_groups, group_size).sum(-1)  # [G]
    p_g = p.view(num_groups, group_size).sum(-1)  # [G]
    return num_groups * (f_g * p_g).sum()


def load_violation(load: Tensor) -> tuple[Tensor, Tensor]:
    """How far an expert load is from balanced: (max violation, mean absolute violation).

    v_e = E * load_e - 1 (0 when every expert gets 1/E of the assignments);
    max violation = max_e v_e, mean violation = mean_e |v_e|.
    Shapes: load [..., E] (fractions summing to 1 over E) -> two tensors of shape [...].
    """
    v = load.shape[-1] * load - 1.0  # [..., E]
    return v.max(dim=-1).values, v.abs().mean(dim=-1)


def truncated_is_weights(old_logprobs: Tensor, rollout_logprobs: Tensor, cap: float) -> Tensor:
    """Truncated importance-sampling weights for the rollout/trainer mismatch (TIS; Yao et al. 2025,
    "Your Efficient RL Framework Secretly Brings You Off-Policy RL Training").

    The rollout engine samples y_t from pi_rollout, which differs numerically from the trainer's
    pi_old; weighting each token's loss by w_t = min(pi_old(y_t) / pi_rollout(y_t), C) corrects the
    gradient towards pi_old's, and the cap C bounds the variance.

        w_t = min(exp(log pi_old(y_t) - log pi_rollout(y_t)), C)      (no gradient)

    Shapes: old_logprobs [B, T], rollout_logprobs [B, T] -> [B, T].
    """
    _positive(cap, "TIS cap")
    return torch.exp(old_logprobs.detach() - rollout_logprobs.detach()).clamp(max=cap)


def behaviour_weights(proximal_logprobs: Tensor, behaviour_logprobs: Tensor, cap: float | None = None) -> Tensor:
    """Per-token weights of decoupled PPO (Hilton et al. 2022, "Batch size-invariance for policy
    optimization"; used for asynchronous RL by AReaL, Fu et al. 2025, arXiv:2505.24298).

    A token sampled by an older (behaviour) policy pi_behav is trained with the PPO ratio taken
    against the proximal policy pi_prox (the trainer's weights before this update), and corrected
    for having been sampled by pi_behav:

        J = E_{y ~ pi_behav}[ w_t * min(r_t A_t, clip(r_t, 1 - e_lo, 1 + e_hi) A_t) ]
        r_t = pi_theta(y_t) / pi_prox(y_t)
        w_t = pi_prox(y_t) / pi_behav(y_t)     (no gradient; min(w_t, cap) when a cap is given)

    With pi_behav = pi_prox (an on-policy token) w_t = 1 and the loss is plain PPO.
    Shapes: proximal_logprobs [B, T], behaviour_logprobs [B, T] -> [B, T].
    """
    w = torch.exp(proximal_logprobs.detach() - behaviour_logprobs.detach())
    if cap is not None:
        _positive(cap, "behaviour weight cap")
        w = w.clamp(max=cap)
    return w


def router_entropy(router_logits: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean entropy of the router distribution over valid tokens: mean_n H(softmax(z_n)).

    log E means uniform routing, 0 fully confident. Shapes: router_logits [N, E], mask [N] or None
    -> scalar float32.
    """
    ent = entropy_from_logits(router_logits)  # [N]
    return ent.mean() if mask is None else masked_mean(ent, mask)
