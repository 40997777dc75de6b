"""The trainer's objective and its bookkeeping, as pure functions of tensors and Samples.

`micro_batch_loss` is the whole per-micro-batch objective the trainer actor back-propagates:

    L = agg( TIS_t * policy_loss_t + kl_coef * KL_t ) + aux_coef * balance

with every normaliser taken over the optimiser step (all micro-batches and processes), so neither
accumulation nor data parallelism changes it. The other functions compute what the actor logs
about a step (advantages, the learning-rate schedule, the rollout/trainer log-prob gap, the experts'
load) and `StepStats` gathers those numbers for one `train_step`, returned instead of kept on the
actor. Nothing here touches a model, an optimiser or Ray: the tests call it on tiny tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from rl import algos
from rl.config import ConfigError, TrainConfig
from rl.types import Sample


def check_names(train: TrainConfig) -> None:
    """ConfigError unless `train.advantage` and `train.policy_loss` name registered algorithms."""
    for key, names in (("advantage", algos.ADVANTAGES.names()), ("policy_loss", algos.POLICY_LOSSES.names())):
        value = getattr(train, key)
        if value not in names:
            raise ConfigError(f"config key 'train.{key}' must be one of {sorted(names)}, got {value!r}")


def group_indices(samples: list[Sample]) -> Tensor:
    """Integer id of each sample's prompt group. [N]"""
    ids: dict[str, int] = {}
    return torch.tensor([ids.setdefault(s.prompt_id, len(ids)) for s in samples], dtype=torch.long)


def assign_advantages(samples: list[Sample], estimator: str, per_domain: bool = False) -> None:
    """Set each sample's `advantage` from the group-relative estimator `estimator` (`rl.algos`)."""
    rewards = torch.tensor([s.reward for s in samples], dtype=torch.float32)  # [N]
    advantages = algos.compute_advantages(estimator, rewards, group_indices(samples))  # [N]
    if per_domain:  # each domain's advantages on one scale, so easy rewards don't drown the rest
        ids: dict[str, int] = {}
        domain_index = torch.tensor([ids.setdefault(s.domain, len(ids)) for s in samples])  # [N]
        advantages = algos.normalize_advantages_per_domain(advantages, domain_index)
    for s, a in zip(samples, advantages.tolist()):
        s.advantage = a


def lr_factor(step: int, cfg: TrainConfig, total: int) -> float:
    """Multiplier of `cfg.lr` at optimiser step `step` (0-based): linear warmup, then the schedule.

    cosine: min_lr_ratio + (1 - min_lr_ratio) * (1 + cos(pi * progress)) / 2, progress 0 -> 1 over
    the steps after warmup, reaching min_lr_ratio at the last step.
    """
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return 1.0
    span = max(1, total - 1 - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def non_finite(loss: float, grad_norm: float) -> str | None:
    """Why an optimiser step must be skipped (its loss or gradient norm is NaN or inf), or None.

    Stepping on a non-finite gradient writes NaN into every weight it reaches and into the Adam
    moments, from which no later step recovers.
    """
    bad = [f"{name} {value}" for name, value in (("loss", loss), ("gradient norm", grad_norm))
           if not math.isfinite(value)]
    return ", ".join(bad) or None


def process_share(samples: list[Sample], slice_idx: list[int], rank: int, world: int) -> list[int]:
    """Process `rank`'s samples (of `world`) of an optimiser step's slice; all of them with one process.

    Sorted by length, so micro-batches of similar lengths pad less (short arithmetic answers apart
    from long code prompts), then dealt round-robin, so processes get similar token counts. The loss
    sums are normalised by the slice totals, so neither choice changes the result.
    """
    by_length = sorted(slice_idx, key=lambda i: len(samples[i].prompt_ids) + len(samples[i].completion_ids))
    return by_length[rank::world]


@dataclass(frozen=True)
class Normalisers:
    """Totals over one optimiser step's samples (every micro-batch, every process)."""

    tokens: float  # completion tokens
    seqs: float  # samples with at least one completion token
    valid: float  # prompt + completion tokens (what the routers see)

    @classmethod
    def of(cls, samples: list[Sample]) -> "Normalisers":
        return cls(
            tokens=float(sum(len(s.completion_ids) for s in samples)),
            seqs=float(sum(1 for s in samples if s.completion_ids)),
            valid=float(sum(len(s.prompt_ids) + len(s.completion_ids) for s in samples)),
        )


@dataclass
class MicroBatch:
    """The tensors of one micro-batch's objective. Token tensors are [b, T] over completion tokens."""

    logprobs: Tensor  # log pi_theta(y_t), with its graph
    old_logprobs: Tensor  # log pi_old(y_t): the ratio's denominator
    rollout_logprobs: Tensor  # log pi_rollout(y_t), as the engine reported them
    advantages: Tensor
    mask: Tensor  # 1 on real completion tokens
    entropy: Tensor  # policy entropy per token (no graph)
    ref_logprobs: Tensor | None = None  # frozen reference, when the KL term is on
    router_logits: list[Tensor] = field(default_factory=list)  # per MoE layer [B * S, E], with graph
    router_mask: Tensor | None = None  # [B * S] real (prompt + completion) tokens
    router_assignments: list[Tensor] = field(default_factory=list)  # per MoE layer, the experts run [B * S, k]


def micro_batch_loss(
    mb: MicroBatch, cfg: TrainConfig, norm: Normalisers, *, max_len: int, top_k: int
) -> tuple[Tensor, dict[str, float]]:
    """This micro-batch's part of the optimiser step's loss, and its metrics.

        per_token_t = policy_loss_t(logprobs, old_logprobs, A)          (cfg.policy_loss)
                      * min(pi_old / pi_rollout, tis_cap)                (cfg.tis_cap > 0)
                   or * pi_old / pi_rollout (capped at tis_cap when > 0)  (cfg.decoupled on: decoupled PPO,
                        pi_old the proximal policy, pi_rollout the behaviour policy that sampled y_t)
                      + kl_coef * KL_t(logprobs, ref_logprobs)           (a reference given)
        loss = agg(per_token, mask; norm.tokens, norm.seqs, max_len)     (cfg.loss_agg)
               + aux_coef * mean_layers EPLB(router_logits) * valid_b / norm.valid
                                                                         (cfg.aux_loss_coef > 0)

    The balance term is the EP-group load-balancing loss (group size 1 = the plain auxiliary loss)
    on this micro-batch's real tokens, weighted by their share of the step's tokens, so accumulation
    leaves it unchanged. Returns (scalar loss with graph, metrics of this micro-batch).
    """
    mask = mb.mask  # [b, T]
    per_token, loss_stats = algos.policy_loss(
        cfg.policy_loss, mb.logprobs, mb.old_logprobs, mb.advantages, mask, clip_low=cfg.clip_low,
        clip_high=cfg.clip_high, dual_clip=cfg.dual_clip or None,
    )  # [b, T]
    metrics: dict[str, float] = {}
    if cfg.decoupled == "on":
        w = algos.behaviour_weights(mb.old_logprobs, mb.rollout_logprobs, cfg.tis_cap or None)  # [b, T]
        per_token = per_token * w
        metrics["train/behaviour_weight_mean"] = algos.masked_mean(w, mask).item()
    elif cfg.tis_cap > 0:
        tis = algos.truncated_is_weights(mb.old_logprobs, mb.rollout_logprobs, cfg.tis_cap)  # [b, T]
        per_token = per_token * tis
        metrics["train/tis_weight_mean"] = algos.masked_mean(tis, mask).item()
        metrics["train/tis_capped_fraction"] = algos.masked_mean((tis >= cfg.tis_cap).float(), mask).item()
    if mb.ref_logprobs is not None:
        kl = algos.kl_penalty(cfg.kl_estimator, mb.logprobs, mb.ref_logprobs)  # [b, T]
        per_token = per_token + cfg.kl_coef * kl
        metrics["train/kl"] = algos.masked_mean(kl.detach(), mask).item()
    loss = algos.aggregate_loss(
        per_token, mask, cfg.loss_agg, global_tokens=norm.tokens, global_seqs=norm.seqs, max_len=max_len
    )
    if cfg.aux_loss_coef > 0 and mb.router_logits:
        valid = mb.router_mask
        assignments = mb.router_assignments or [None] * len(mb.router_logits)
        aux = sum(
            algos.group_load_balancing_loss(z, top_k, cfg.aux_loss_group_size, valid, assignments=a)
            for z, a in zip(mb.router_logits, assignments)
        ) / len(mb.router_logits)
        aux = aux * (float(valid.sum()) / norm.valid)
        loss = loss + cfg.aux_loss_coef * aux
        metrics["moe/aux_loss"] = aux.item()
    metrics["train/entropy"] = algos.masked_mean(mb.entropy, mask).item()
    metrics["train/clip_fraction"] = loss_stats["clip_fraction"].item()
    return loss, metrics


def pad_rows(rows: list[Tensor], t: int) -> Tensor:
    """Right-pad 1-D rows with zeros into one [len(rows), t] tensor."""
    out = torch.zeros(len(rows), t)
    for i, r in enumerate(rows):
        out[i, : r.numel()] = r
    return out


def token_gaps(logprobs: Tensor, rollout_logprobs: Tensor, lengths: list[int]) -> list[Tensor]:
    """|log pi_trainer - log pi_rollout| on each row's first `lengths[i]` (its completion) tokens.

    logprobs, rollout_logprobs: [b, T] right-padded rows -> one [lengths[i]] tensor per row. With
    the same weights in trainer and engine the gap is numerical noise; anything larger means the
    weight sync or the engine is wrong.
    """
    diff = (logprobs.detach() - rollout_logprobs).abs()  # [b, T]
    return [diff[row, :n] for row, n in enumerate(lengths)]


def split_by_version(gaps: list[Tensor], samples: list[Sample], version: int) -> tuple[list[Tensor], Tensor]:
    """The log-prob gaps of the samples sampled entirely by policy `version` (the trainer's weights
    before this update: there the gap measures the engine/trainer mismatch), and those of every
    other token concatenated (there it also measures how far the policy moved since they were
    sampled).

    A sample continued across a weight load (`rollout.partial=continue`) counts wholly as other:
    even its tokens sampled by `version` attend over keys and values that its prompt and earlier
    tokens got from the older weights, which the trainer's recomputation does not reproduce.
    A sample without per-token versions counts as sampled by its `policy_version` throughout.
    """
    current, stale = [], []
    for gap, s in zip(gaps, samples):
        versions = torch.tensor(s.token_versions if s.token_versions else [s.policy_version] * gap.numel())
        whole = bool((versions[: gap.numel()] == version).all())
        current.append(gap if whole else gap[:0])
        stale.append(gap[:0] if whole else gap)
    return current, torch.cat(stale) if stale else torch.zeros(0)


def rollout_logprobs(samples: list[Sample], t: int) -> Tensor:
    """The engine's log-probs of the samples' completion tokens, right-padded. [b, t]"""
    return pad_rows([torch.tensor(s.rollout_logprobs) for s in samples], t)


def gap_metrics(by_domain: dict[str, Tensor]) -> dict[str, float]:
    """The log-prob gap's max and mean over every token, and its max per domain."""
    out = {f"rollout/logprob_abs_diff_max/{d}": v.max().item() for d, v in by_domain.items() if v.numel()}
    gap = torch.cat(list(by_domain.values())) if by_domain else torch.zeros(0)
    if gap.numel():  # none when every token was sampled by older weights (asynchronous training)
        out["rollout/logprob_abs_diff_max"] = gap.max().item()
        out["rollout/logprob_abs_diff_mean"] = gap.mean().item()
    return out


def expert_metrics(moe: dict[str, list]) -> dict[str, Any]:
    """Expert load (fraction of assignments per layer and expert), its violation and the router
    entropy, overall and per domain, from `StepStats.moe`'s [counts [L, E], entropy sum, count]."""
    out: dict[str, Any] = {}
    if not moe:
        return out
    total = [sum(acc[i] for acc in moe.values()) for i in range(3)]
    for domain, (counts, ent_sum, n) in [("", total), *sorted(moe.items())]:
        suffix = f"/{domain}" if domain else ""
        load = counts / counts.sum(-1, keepdim=True).clamp(min=1)  # [L, E]
        vmax, vmean = algos.load_violation(load)  # [L]
        out[f"moe/load_violation_max{suffix}"] = vmax.max().item()
        out[f"moe/load_violation_mean{suffix}"] = vmean.mean().item()
        out[f"moe/router_entropy{suffix}"] = ent_sum / max(n, 1.0)
        out[f"moe/expert_load{suffix}"] = [[round(x, 5) for x in row] for row in load.tolist()]
    return out


@dataclass
class StepStats:
    """What one `train_step` measures, gathered as it goes and merged across processes."""

    values: dict[str, list[float]] = field(default_factory=dict)  # per-micro-batch / per-update metrics
    gaps: list[dict[str, Tensor]] = field(default_factory=list)  # |old - rollout| per token, by domain
    agreement: list[float] = field(default_factory=lambda: [0.0, 0.0])  # matching, total routing choices
    moe: dict[str, list] = field(default_factory=dict)  # per domain: [expert counts [L, E], entropy sum, n]

    def add(self, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.values.setdefault(key, []).append(value)

    def add_gaps(self, samples: list[Sample], gaps: list[Tensor]) -> None:
        by_domain: dict[str, list[Tensor]] = {}
        for s, g in zip(samples, gaps):
            by_domain.setdefault(s.domain, []).append(g)
        self.gaps.append({domain: torch.cat(parts) for domain, parts in by_domain.items()})

    def add_agreement(self, match: float, total: float) -> None:
        self.agreement = [self.agreement[0] + match, self.agreement[1] + total]

    @torch.no_grad()
    def count_experts(
        self, row_domains: list[str], valid: Tensor, used: dict[int, Tensor], logits: dict[int, Tensor],
        num_experts: int, num_layers: int,
    ) -> None:
        """Add each domain's expert assignments and router entropies, over its rows' real tokens.

        row_domains: the domain of each of the B rows; valid: [B * S] real tokens; used: per layer
        the experts the forward ran [B * S, k]; logits: per layer the router logits [B * S, E].
        """
        seq_len = valid.numel() // len(row_domains)
        token_domain = [d for d in row_domains for _ in range(seq_len)]
        for domain in set(row_domains):
            select = valid & torch.tensor([d == domain for d in token_domain])  # [B * S]
            acc = self.moe.setdefault(domain, [torch.zeros(num_layers, num_experts), 0.0, 0.0])
            for layer, experts in used.items():
                acc[0][layer] += torch.bincount(experts[select].flatten(), minlength=num_experts).float()
                acc[1] += float(algos.entropy_from_logits(logits[layer][select]).sum())
            acc[2] += float(select.sum()) * len(used)

    @classmethod
    def merged(cls, parts: list["StepStats"]) -> "StepStats":
        """One process's stats per entry of `parts`, combined in process order."""
        out = cls()
        for part in parts:
            for key, values in part.values.items():
                out.values.setdefault(key, []).extend(values)
            out.gaps.extend(part.gaps)
            out.add_agreement(*part.agreement)
            for domain, acc in part.moe.items():
                total = out.moe.setdefault(domain, [torch.zeros_like(acc[0]), 0.0, 0.0])
                for i in range(3):
                    total[i] = total[i] + acc[i]
        return out

    def summary(self) -> dict[str, Any]:
        """Means of the gathered metrics, the log-prob gap, routing agreement and expert metrics."""
        result: dict[str, Any] = {k: sum(v) / len(v) for k, v in self.values.items()}
        parts: dict[str, list[Tensor]] = {}
        for part in self.gaps:
            for domain, values in part.items():
                parts.setdefault(domain, []).append(values)
        result.update(gap_metrics({domain: torch.cat(values) for domain, values in parts.items()}))
        if self.agreement[1]:
            result["rollout/routing_agreement"] = self.agreement[0] / self.agreement[1]
        result.update(expert_metrics(self.moe))
        return result
