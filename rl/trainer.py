"""The policy-update actor: owns the MoE policy, its optimiser and (optionally) a frozen reference.

One `train_step` takes the scored Samples of an RL step and:
1. computes group-relative advantages over the completions of each prompt (`rl.algos`);
2. recomputes the log-probs of the sampled tokens under the current weights (the "old" policy of
   the PPO ratio) and measures their gap to the log-probs vLLM reported for the same tokens: with
   the same weights in both, the gap is numerical noise, and anything larger means the weight sync
   or the engine is wrong;
3. runs `updates_per_step` optimiser steps over slices of the batch, each accumulated over
   micro-batches, with the loss normalised by the slice's global token (or sequence) count so the
   result does not depend on the micro-batch size.

Data parallel (several processes, e.g. gloo on CPU, started with RANK/WORLD_SIZE/MASTER_ADDR/
MASTER_PORT set, the same seed in each): every process gets the whole batch, computes the same
advantages, slices and normalisers from it, and runs forward/backward on its own share of each slice
only; the metrics are merged across processes. A share's loss
sum_{its tokens} L_t / N_slice, times the number of processes W, averaged over the processes by DDP,
gives sum_{all tokens} L_t / N_slice: the one-process gradient of the same batch.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from rl import algos
from rl.config import TrainConfig
from rl.policy import CompletionBatch, completion_logprobs, hf_state_dict, load_policy
from rl.routing import RoutingReplay, routing_tensor
from rl.types import Sample


def group_indices(samples: list[Sample]) -> torch.Tensor:
    """Integer id of each sample's prompt group. [N]"""
    ids: dict[str, int] = {}
    return torch.tensor([ids.setdefault(s.prompt_id, len(ids)) for s in samples], dtype=torch.long)


def assign_advantages(samples: list[Sample], estimator: str, per_domain: bool = False) -> None:
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


TRAINER_STATE = "trainer_state.pt"  # beside the weights in every checkpoint the trainer saves


def _chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


class TrainerWorker:
    """Ray actor body (wrapped with ray.remote by the driver)."""

    def __init__(
        self,
        model_path: str,
        cfg: dict[str, Any],
        *,
        dtype: str = "float32",
        seed: int = 0,
        max_new_tokens: int = 16,
        total_steps: int = 1,
        ref_path: str | None = None,
    ) -> None:
        """`ref_path`: the frozen reference's weights (default `model_path`); a resumed run builds the
        policy from its checkpoint and keeps the run's starting model as the reference."""
        from accelerate import Accelerator, DistributedDataParallelKwargs

        self.cfg = TrainConfig(**cfg)
        os.environ["OMP_NUM_THREADS"] = str(self.cfg.threads)
        torch.set_num_threads(self.cfg.threads)
        torch.manual_seed(seed)
        self.rng = random.Random(seed)
        self.max_new_tokens = max_new_tokens
        # Data parallel: experts that get no token in a process have no gradient there (find unused);
        # buffers are never trained, and not broadcasting them keeps forwards free of collectives,
        # so processes may run different numbers of them. One scheduler step per optimiser step:
        # the batch is split, not multiplied, across processes.
        ddp = DistributedDataParallelKwargs(find_unused_parameters=True, broadcast_buffers=False)
        self.accelerator = Accelerator(
            cpu=True, mixed_precision="no", kwargs_handlers=[ddp], step_scheduler_with_optimizer=False
        )  # the model's own dtype
        model = load_policy(model_path, dtype)
        model.config.use_cache = False
        self.pad_id = model.config.pad_token_id if model.config.pad_token_id is not None else 0
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay, betas=(0.9, 0.99)
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda i: lr_factor(i, self.cfg, total_steps * self.cfg.updates_per_step)
        )
        self.model, self.optimizer, self.scheduler = self.accelerator.prepare(model, optimizer, scheduler)
        self.replay = RoutingReplay(
            self.accelerator.unwrap_model(self.model), required=self.cfg.routing_replay or self.cfg.aux_loss_coef > 0
        )
        self._agreement = [0.0, 0.0]  # matching and total token-layer routing choices this step
        self._moe: dict[str, list[torch.Tensor]] = {}  # per domain: [expert counts [L, E], entropy sum, tokens]
        self.ref_model = None
        if self.cfg.kl_coef > 0:  # a frozen copy only when the KL term is on
            self.ref_model = load_policy(ref_path or model_path, dtype).eval().requires_grad_(False)
        self.version = 0

    # ---- log-probs -------------------------------------------------------------------------------

    def _policy_logprobs(
        self, samples: list[Sample], batch: CompletionBatch, with_entropy: bool, measure: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Completion log-probs under the policy, on the rollout's experts when routing replay is on.

        With `measure`, counts how often the policy's own expert choices agree with the rollout's.
        """
        recorded = self._recorded_routing(samples, batch)
        forced = recorded if self.cfg.routing_replay else None
        with self.replay.apply(forced):
            out = completion_logprobs(self.model, batch, with_entropy=with_entropy)
        if measure and recorded is not None:
            match, total = self.replay.agreement(recorded, batch.attention_mask.flatten().bool())
            self._agreement[0] += match
            self._agreement[1] += total
        return out

    def _recorded_routing(self, samples: list[Sample], batch: CompletionBatch) -> torch.Tensor | None:
        """The rollout's expert choices for `batch` as [layers, B * S, k], or None when a sample has none."""
        if not self.replay or any(s.routed_experts is None for s in samples):
            return None
        return routing_tensor(
            [s.routed_experts for s in samples], batch.input_ids.shape[1], self.replay.num_layers, self.replay.top_k
        )

    @torch.no_grad()
    def _logprobs(self, model: torch.nn.Module, samples: list[Sample]) -> list[torch.Tensor]:
        model.eval()
        out = []
        for chunk in _chunks(samples, self.cfg.micro_batch_samples):
            batch = CompletionBatch.from_samples(chunk, self.pad_id)
            if model is self.model:
                logprobs, _ = self._policy_logprobs(chunk, batch, with_entropy=False, measure=True)  # [b, T]
            else:
                logprobs, _ = completion_logprobs(model, batch)  # [b, T]
            out.extend(logprobs[i, : len(s.completion_ids)] for i, s in enumerate(chunk))
        return out

    def _logprobs_of(self, model: torch.nn.Module, samples: list[Sample], idx: list[int]) -> dict[int, torch.Tensor]:
        """`_logprobs` of the samples at `idx`, keyed by index."""
        return dict(zip(idx, self._logprobs(model, [samples[i] for i in idx])))

    @torch.no_grad()
    def routing_report(self, samples: list[Sample]) -> dict[str, float]:
        """Diagnose rollout/trainer agreement on `samples` without updating anything.

        Returns the log-prob gap to the rollout (max, mean), the fraction of token-layer expert
        choices where the policy's own routing matches the rollout's, and the fraction where the
        experts the forward actually ran match it (1.0 with routing replay on).
        """
        self.model.eval()
        gaps, own, used = [], [0.0, 0.0], [0.0, 0.0]
        for chunk in _chunks(samples, self.cfg.micro_batch_samples):
            batch = CompletionBatch.from_samples(chunk, self.pad_id)
            logprobs, _ = self._policy_logprobs(chunk, batch, with_entropy=False, measure=False)  # [b, T]
            gaps += [(logprobs[i, : len(s.completion_ids)] - torch.tensor(s.rollout_logprobs)).abs() for i, s in enumerate(chunk)]
            recorded = self._recorded_routing(chunk, batch)
            if recorded is not None:
                valid = batch.attention_mask.flatten().bool()
                for acc, flag in ((own, False), (used, True)):
                    m, t = self.replay.agreement(recorded, valid, used=flag)
                    acc[0] += m
                    acc[1] += t
        gap = torch.cat(gaps)
        return {
            "logprob_abs_diff_max": gap.max().item(),
            "logprob_abs_diff_mean": gap.mean().item(),
            "routing_agreement": own[0] / own[1] if own[1] else float("nan"),
            "routing_used_agreement": used[0] / used[1] if used[1] else float("nan"),
            "token_layer_pairs": used[1],
        }

    def sequence_logprobs(self, sequences: list[list[int]]) -> list[list[float]]:
        """Log-prob of every token after the first, the trainer-side twin of the rollout method."""
        samples = [Sample("", "", "", seq[:1], completion_ids=seq[1:]) for seq in sequences]
        return [lp.tolist() for lp in self._logprobs(self.model, samples)]

    # ---- update ----------------------------------------------------------------------------------

    def train_step(self, samples: list[Sample]) -> dict[str, float]:
        cfg = self.cfg
        t0 = time.perf_counter()
        assign_advantages(samples, cfg.advantage, cfg.advantage_norm_per_domain)
        self._agreement = [0.0, 0.0]
        self._moe = {}
        staleness = [self.version - s.policy_version for s in samples]  # policy versions behind
        order = list(range(len(samples)))
        self.rng.shuffle(order)  # the same seed, so the same order, in every process
        slices = _chunks(order, math.ceil(len(order) / cfg.updates_per_step))
        shares = [self._share(samples, slice_idx) for slice_idx in slices]
        mine = sorted(i for share in shares for i in share)  # this process's samples, in batch order
        # With one optimiser step per batch the training forward runs on the pre-update weights, so
        # its detached log-probs are the "old" ones; more steps need them computed up front.
        old = self._logprobs_of(self.model, samples, mine) if cfg.updates_per_step > 1 else None
        ref = self._logprobs_of(self.ref_model, samples, mine) if self.ref_model is not None else None
        stats: dict[str, list[float]] = {}
        gaps: list[dict[str, torch.Tensor]] = []  # |old - rollout| per valid token by domain; each sample in one slice
        self.model.train()
        for slice_idx, share in zip(slices, shares):
            self._update(samples, old, ref, slice_idx, share, stats, gaps)
        self.version += 1
        stats, gaps = self._gather(stats, gaps)
        parts: dict[str, list[torch.Tensor]] = {}
        for part in gaps:
            for domain, values in part.items():
                parts.setdefault(domain, []).append(values)
        by_domain = {domain: torch.cat(values) for domain, values in parts.items()}
        gap = torch.cat(list(by_domain.values())) if by_domain else torch.zeros(0)
        result = {k: sum(v) / len(v) for k, v in stats.items()}
        for domain, values in by_domain.items():  # which domain the largest gaps come from
            if values.numel():
                result[f"rollout/logprob_abs_diff_max/{domain}"] = values.max().item()
        result.update(
            {
                "rollout/logprob_abs_diff_max": gap.max().item() if gap.numel() else 0.0,
                "rollout/logprob_abs_diff_mean": gap.mean().item() if gap.numel() else 0.0,
                "train/lr": self.scheduler.get_last_lr()[0],
                "train/advantage_abs_mean": sum(abs(s.advantage) for s in samples) / len(samples),
                **(
                    {"rollout/routing_agreement": self._agreement[0] / self._agreement[1]}
                    if self._agreement[1]
                    else {}
                ),
                "rollout/staleness_max": float(max(staleness)),
                "rollout/staleness_mean": sum(staleness) / len(staleness),
                **self._moe_metrics(),
                "time/train_compute": time.perf_counter() - t0,
                "policy_version": float(self.version),
            }
        )
        return result

    def _gather(
        self, stats: dict[str, list[float]], gaps: list[dict[str, torch.Tensor]]
    ) -> tuple[dict[str, list[float]], list[dict[str, torch.Tensor]]]:
        """Every process's per-micro-batch statistics, log-prob gaps, routing agreement and expert-load
        counts, merged in every process (nothing to do with one process)."""
        world = self.accelerator.num_processes
        if world == 1:
            return stats, gaps
        parts: list[Any] = [None] * world
        torch.distributed.all_gather_object(parts, (stats, gaps, self._agreement, self._moe))
        stats, gaps, self._agreement, self._moe = {}, [], [0.0, 0.0], {}
        for part_stats, part_gaps, agreement, moe in parts:
            for key, values in part_stats.items():
                stats.setdefault(key, []).extend(values)
            gaps.extend(part_gaps)
            self._agreement = [a + b for a, b in zip(self._agreement, agreement)]
            for domain, acc in moe.items():
                total = self._moe.setdefault(domain, [torch.zeros_like(acc[0]), 0.0, 0.0])
                for i in range(3):
                    total[i] = total[i] + acc[i]
        return stats, gaps

    def _share(self, samples: list[Sample], slice_idx: list[int]) -> list[int]:
        """This process's samples of an optimiser step's slice (all of them with one process).

        Sorted by length, so micro-batches of similar lengths pad less (short arithmetic answers
        apart from long code prompts), then dealt round-robin, so processes get similar token counts.
        The loss sums are normalised by the slice totals, so neither choice changes the result.
        """
        by_length = sorted(slice_idx, key=lambda i: len(samples[i].prompt_ids) + len(samples[i].completion_ids))
        return by_length[self.accelerator.process_index :: self.accelerator.num_processes]

    def _update(
        self, samples, old, ref, slice_idx: list[int], share: list[int], stats: dict[str, list[float]],
        gaps: list[dict[str, torch.Tensor]],
    ) -> None:
        cfg = self.cfg
        chosen = [samples[i] for i in slice_idx]
        # Normalisers over the whole optimiser step (all micro-batches and processes), so neither
        # accumulation nor data parallelism changes the loss.
        global_tokens = float(sum(len(s.completion_ids) for s in chosen))
        global_seqs = float(sum(1 for s in chosen if s.completion_ids))
        global_valid = float(sum(len(s.prompt_ids) + len(s.completion_ids) for s in chosen))
        self.optimizer.zero_grad(set_to_none=True)
        # DDP averages the gradients over the processes; each share's loss is a part of the slice's
        # sum, so scaling by the number of processes makes the average that sum's gradient.
        scale = float(self.accelerator.num_processes)
        micros = _chunks(share, cfg.micro_batch_samples)
        if not micros:  # every process must join the synchronising backward: one sample, weight 0
            micros, scale, stats, gaps, old, ref = [slice_idx[:1]], 0.0, {}, [], None, None
        loss = 0.0
        for n, micro in enumerate(micros):
            # Gradients are averaged once, in the last backward, over everything accumulated.
            sync = contextlib.nullcontext() if n == len(micros) - 1 else self.accelerator.no_sync(self.model)
            with sync:
                loss += self._micro_step(
                    samples, old, ref, micro, scale, global_tokens, global_seqs, global_valid, stats, gaps)
        # The optimiser step's loss: its micro-batches' parts summed (the average over processes of
        # W x a share's part is the whole sum), whatever the micro-batch size.
        stats.setdefault("train/loss", []).append(loss)
        if cfg.grad_clip > 0:
            norm = self.accelerator.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            stats.setdefault("train/grad_norm", []).append(float(norm))
        self.optimizer.step()
        self.scheduler.step()

    def _micro_step(
        self, samples, old, ref, micro: list[int], scale: float, global_tokens: float, global_seqs: float,
        global_valid: float, stats: dict[str, list[float]], gaps: list[dict[str, torch.Tensor]],
    ) -> float:
        """Forward and backward of one micro-batch, gradients accumulated; returns its part of the
        optimiser step's loss, times `scale`.

        `scale` 0 is the stand-in backward of a process with no share: it counts no routing agreement
        or expert load (its `stats` and `gaps` are thrown away by the caller).
        """
        cfg = self.cfg
        batch_samples = [samples[i] for i in micro]
        batch = CompletionBatch.from_samples(batch_samples, self.pad_id)
        mask = batch.completion_mask  # [b, T]
        t = mask.shape[1]
        adv = torch.tensor([samples[i].advantage for i in micro])[:, None].expand(-1, t)  # [b, T]
        logprobs, entropy = self._policy_logprobs(
            batch_samples, batch, with_entropy=True, measure=old is None and scale > 0
        )  # [b, T]
        old_lp = logprobs.detach() if old is None else self._pad([old[i] for i in micro], t)  # [b, T]
        rollout_lp = self._pad([torch.tensor(samples[i].rollout_logprobs) for i in micro], t)  # [b, T]
        diff = (old_lp - rollout_lp).abs()  # [b, T]
        by_domain: dict[str, list[torch.Tensor]] = {}
        for row, i in enumerate(micro):  # right-padded: a completion's tokens come first in its row
            by_domain.setdefault(samples[i].domain, []).append(diff[row, : len(samples[i].completion_ids)])
        gaps.append({domain: torch.cat(parts) for domain, parts in by_domain.items()})
        per_token, loss_stats = algos.policy_loss(
            cfg.policy_loss, logprobs, old_lp, adv, mask, clip_low=cfg.clip_low, clip_high=cfg.clip_high,
            dual_clip=cfg.dual_clip or None,
        )
        if cfg.tis_cap > 0:
            tis = algos.truncated_is_weights(old_lp, rollout_lp, cfg.tis_cap)  # [b, T]
            per_token = per_token * tis
            stats.setdefault("train/tis_weight_mean", []).append(algos.masked_mean(tis, mask).item())
            stats.setdefault("train/tis_capped_fraction", []).append(
                algos.masked_mean((tis >= cfg.tis_cap).float(), mask).item()
            )
        if ref is not None:
            kl = algos.kl_penalty(cfg.kl_estimator, logprobs, self._pad([ref[i] for i in micro], t))  # [b, T]
            per_token = per_token + cfg.kl_coef * kl
            stats.setdefault("train/kl", []).append(algos.masked_mean(kl.detach(), mask).item())
        loss = algos.aggregate_loss(
            per_token, mask, cfg.loss_agg,
            global_tokens=global_tokens, global_seqs=global_seqs, max_len=self.max_new_tokens,
        )
        aux = self._moe_step(batch_samples, batch, global_valid, record=scale > 0)
        if aux is not None:
            loss = loss + cfg.aux_loss_coef * aux
            stats.setdefault("moe/aux_loss", []).append(aux.item())
        self.accelerator.backward(loss * scale)
        stats.setdefault("train/entropy", []).append(algos.masked_mean(entropy, mask).item())
        stats.setdefault("train/clip_fraction", []).append(loss_stats["clip_fraction"].item())
        return loss.item() * scale

    def _moe_step(
        self, samples: list[Sample], batch: CompletionBatch, global_valid: float, record: bool = True
    ) -> torch.Tensor | None:
        """After a training forward: count expert load per domain (with `record`); return the balance loss, if on.

        The loss is the EP-group load-balancing loss (group size 1 = the plain auxiliary loss),
        averaged over layers, on this micro-batch's real tokens and weighted by their share of the
        optimiser step's tokens, so accumulation leaves it unchanged.
        """
        if not self.replay or not self.replay.logits:
            return None
        seq_len = batch.input_ids.shape[1]
        valid = batch.attention_mask.flatten().bool()  # [B * S]
        token_domain = [s.domain for s in samples for _ in range(seq_len)]
        num_experts = self.replay.num_experts
        with torch.no_grad():
            for domain in {s.domain for s in samples} if record else ():
                sel = valid & torch.tensor([d == domain for d in token_domain])  # [B * S]
                acc = self._moe.setdefault(domain, [torch.zeros(self.replay.num_layers, num_experts), 0.0, 0.0])
                for layer, used in self.replay.used.items():
                    acc[0][layer] += torch.bincount(used[sel].flatten(), minlength=num_experts).float()
                    acc[1] += float(algos.entropy_from_logits(self.replay.logits[layer][sel]).sum())
                acc[2] += float(sel.sum()) * len(self.replay.used)
        if self.cfg.aux_loss_coef <= 0:
            return None
        aux = sum(
            algos.group_load_balancing_loss(z, self.replay.top_k, self.cfg.aux_loss_group_size, valid,
                                            assignments=self.replay.used[layer])
            for layer, z in self.replay.logits.items()
        ) / len(self.replay.logits)
        return aux * (float(valid.sum()) / global_valid)

    def _moe_metrics(self) -> dict[str, Any]:
        """Expert load (fraction of assignments per layer and expert), its violation, router entropy."""
        out: dict[str, Any] = {}
        if not self.replay:  # a family without a router adapter: replay, balance loss and these are off
            return {"moe/routing_adapter": 0.0}
        if not self._moe:
            return out
        total = [sum(acc[i] for acc in self._moe.values()) for i in range(3)]
        for domain, (counts, ent_sum, n) in [("", total), *sorted(self._moe.items())]:
            suffix = f"/{domain}" if domain else ""
            load = counts / counts.sum(-1, keepdim=True).clamp(min=1)  # [L, E]
            vmax, vmean = algos.load_violation(load)  # [L]
            out[f"moe/load_violation_max{suffix}"] = vmax.max().item()
            out[f"moe/load_violation_mean{suffix}"] = vmean.mean().item()
            out[f"moe/router_entropy{suffix}"] = ent_sum / max(n, 1.0)
            out[f"moe/expert_load{suffix}"] = [[round(x, 5) for x in row] for row in load.tolist()]
        return out

    @staticmethod
    def _pad(rows: list[torch.Tensor], t: int) -> torch.Tensor:
        out = torch.zeros(len(rows), t)
        for i, r in enumerate(rows):
            out[i, : r.numel()] = r
        return out

    # ---- weights ---------------------------------------------------------------------------------

    def weights(self) -> dict[str, torch.Tensor]:
        return hf_state_dict(self.accelerator.unwrap_model(self.model))

    def save(self, path: str) -> str:
        """Save a normal Hugging Face checkpoint (weights + config) and, beside it, `trainer_state.pt`:
        what else a resumed run needs to continue exactly (`load_state`). The tokenizer is copied by
        the driver; transformers and vLLM load the directory as any other checkpoint."""
        model = self.accelerator.unwrap_model(self.model)
        Path(path).mkdir(parents=True, exist_ok=True)
        model.save_pretrained(path, safe_serialization=True)
        state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "version": self.version,
            "python_rng": self.rng.getstate(),
            "torch_rng": torch.get_rng_state(),
        }
        torch.save(state, Path(path) / TRAINER_STATE)
        return path

    def load_state(self, path: str) -> int:
        """Restore optimiser moments, LR-schedule position, policy version and RNG streams from the
        `trainer_state.pt` of checkpoint `path`; the weights must already be that checkpoint's (this
        worker built from `path`). Returns the restored policy version."""
        state = torch.load(Path(path) / TRAINER_STATE, weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.version = state["version"]
        self.rng.setstate(state["python_rng"])
        torch.set_rng_state(state["torch_rng"])
        return self.version

    def state(self) -> dict[str, Any]:
        return {"version": self.version, "config": asdict(self.cfg)}
