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
from typing import Any

import torch

from rl import objective
from rl.checkpoint import load_trainer_state, save_trainer_state
from rl.config import TrainConfig
from rl.objective import MicroBatch, Normalisers, StepStats, pad_rows
from rl.policy import CompletionBatch, hf_state_dict, load_policy
from rl.routing import RoutingReplay
from rl.scoring import PolicyScorer, chunks
from rl.types import Sample
from rl.weight_sync import to_shared


def _pick(by_index: dict[int, torch.Tensor] | None, idx: list[int]) -> list[torch.Tensor] | None:
    return None if by_index is None else [by_index[i] for i in idx]


class TrainerWorker:
    """Ray actor body (wrapped with ray.remote by the driver). The objective is `rl.objective`'s;
    this class owns the model, optimiser and reference, and moves data to and from them."""

    def __init__(
        self, model_path: str, cfg: TrainConfig, *, dtype: str = "float32", seed: int = 0, max_new_tokens: int = 16,
        total_steps: int = 1, ref_path: str | None = None, dist_env: dict[str, str] | None = None,
    ) -> None:
        """`ref_path`: the frozen reference's weights (default `model_path`); a resumed run builds the
        policy from its checkpoint and keeps the run's starting model as the reference. `dist_env`:
        this process's place in a data-parallel group (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, ...),
        read by accelerate when it starts the process group; None = the environment as it is."""
        from accelerate import Accelerator, DistributedDataParallelKwargs

        os.environ.update(dist_env or {})
        self.cfg = cfg
        os.environ["OMP_NUM_THREADS"] = str(cfg.threads)
        torch.set_num_threads(cfg.threads)
        torch.manual_seed(seed)
        self.rng = random.Random(seed)
        self.max_new_tokens = max_new_tokens
        # Data parallel: experts that get no token in a process have no gradient there (find unused);
        # buffers are never trained, and not broadcasting them keeps forwards free of collectives,
        # so processes may run different numbers of them. One scheduler step per optimiser step:
        # the batch is split, not multiplied, across processes.
        ddp = DistributedDataParallelKwargs(find_unused_parameters=True, broadcast_buffers=False)
        self.accelerator = Accelerator(
            cpu=cfg.gpus == 0, mixed_precision="no", kwargs_handlers=[ddp], step_scheduler_with_optimizer=False
        )  # the model's own dtype
        model = load_policy(model_path, dtype)
        model.config.use_cache = False
        self.pad_id = model.config.pad_token_id if model.config.pad_token_id is not None else 0
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda i: objective.lr_factor(i, cfg, total_steps * cfg.updates_per_step)
        )
        self.model, self.optimizer, self.scheduler = self.accelerator.prepare(model, optimizer, scheduler)
        self.replay = RoutingReplay(
            self.accelerator.unwrap_model(self.model), required=cfg.routing_replay or cfg.aux_loss_coef > 0
        )
        self.scorer = PolicyScorer(self.model, self.replay, self.pad_id, cfg.micro_batch_samples, cfg.routing_replay)
        self.ref_model = None
        if cfg.kl_coef > 0:  # a frozen copy only when the KL term is on
            self.ref_model = load_policy(ref_path or model_path, dtype).eval().requires_grad_(False)
        self.version = 0

    # ---- log-probs -------------------------------------------------------------------------------

    def routing_report(self, samples: list[Sample]) -> dict[str, float]:
        """Rollout/trainer agreement on `samples`, nothing updated (`PolicyScorer.routing_report`)."""
        return self.scorer.routing_report(samples)

    def sequence_logprobs(self, sequences: list[list[int]]) -> list[list[float]]:
        """Log-prob of every token after the first, the trainer-side twin of the rollout method."""
        samples = [Sample("", "", "", seq[:1], completion_ids=seq[1:]) for seq in sequences]
        logprobs = self.scorer.logprobs(self.model, samples, list(range(len(samples))))
        return [logprobs[i].tolist() for i in range(len(samples))]

    # ---- update ----------------------------------------------------------------------------------

    def train_step(self, samples: list[Sample]) -> dict[str, float]:
        """Advantages, then `updates_per_step` optimiser steps over slices of the batch; the metrics."""
        cfg = self.cfg
        t0 = time.perf_counter()
        objective.assign_advantages(samples, cfg.advantage, cfg.advantage_norm_per_domain)
        stats = StepStats()
        staleness = [self.version - s.policy_version for s in samples]  # policy versions behind
        order = list(range(len(samples)))
        self.rng.shuffle(order)  # the same seed, so the same order, in every process
        slices = chunks(order, math.ceil(len(order) / cfg.updates_per_step))
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        shares = [objective.process_share(samples, slice_idx, rank, world) for slice_idx in slices]
        mine = sorted(i for share in shares for i in share)  # this process's samples, in batch order
        # With one optimiser step per batch the training forward runs on the pre-update weights, so
        # its detached log-probs are the "old" ones; more steps need them computed up front.
        old = self.scorer.logprobs(self.model, samples, mine, stats) if cfg.updates_per_step > 1 else None
        ref = self.scorer.logprobs(self.ref_model, samples, mine) if self.ref_model is not None else None
        self.model.train()
        skipped = sum(self._update(samples, old, ref, slice_idx, share, stats)
                      for slice_idx, share in zip(slices, shares))
        self.version += 1
        if self.accelerator.num_processes > 1:  # every process's measurements, merged in every process
            parts: list[Any] = [None] * self.accelerator.num_processes
            torch.distributed.all_gather_object(parts, stats)
            stats = StepStats.merged(parts)
        return {
            **stats.summary(),
            "train/lr": self.scheduler.get_last_lr()[0],
            "train/advantage_abs_mean": sum(abs(s.advantage) for s in samples) / len(samples),
            "rollout/staleness_max": float(max(staleness)),
            "rollout/staleness_mean": sum(staleness) / len(staleness),
            "time/train_compute": time.perf_counter() - t0,
            "policy_version": float(self.version),
            "train/skipped_steps": float(skipped),
            # A family without a router adapter: replay, balance loss and expert metrics are off.
            **({} if self.replay else {"moe/routing_adapter": 0.0}),
        }

    def _update(self, samples: list[Sample], old: dict | None, ref: dict | None, slice_idx: list[int],
                share: list[int], stats: StepStats) -> bool:
        """One optimiser step over `slice_idx`, this process running forward/backward on `share`;
        True when it was skipped for a non-finite loss or gradient norm (weights and optimiser untouched)."""
        # Normalisers over the whole optimiser step (all micro-batches and processes), so neither
        # accumulation nor data parallelism changes the loss.
        norm = Normalisers.of([samples[i] for i in slice_idx])
        self.optimizer.zero_grad(set_to_none=True)
        # DDP averages the gradients over the processes; each share's loss is a part of the slice's
        # sum, so scaling by the number of processes makes the average that sum's gradient.
        scale = float(self.accelerator.num_processes)
        micros = chunks(share, self.cfg.micro_batch_samples)
        if not micros:  # every process must join the synchronising backward: one sample, weight 0
            micros, scale, stats, old, ref = [slice_idx[:1]], 0.0, StepStats(), None, None
        loss = 0.0
        for n, micro in enumerate(micros):
            # Gradients are averaged once, in the last backward, over everything accumulated.
            sync = contextlib.nullcontext() if n == len(micros) - 1 else self.accelerator.no_sync(self.model)
            with sync:
                loss += self._micro_step([samples[i] for i in micro], _pick(old, micro), _pick(ref, micro),
                                         scale, norm, stats)
        # The optimiser step's loss: its micro-batches' parts summed (the average over processes of
        # W x a share's part is the whole sum), whatever the micro-batch size.
        stats.add({"train/loss": loss})
        if self.cfg.grad_clip > 0:
            grad_norm = float(self.accelerator.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip))
            stats.add({"train/grad_norm": grad_norm})
        else:
            grad_norm = float(torch.nn.utils.get_total_norm(
                [p.grad for p in self.model.parameters() if p.grad is not None]))
        if self._any_process(objective.non_finite(loss, grad_norm)):
            self.optimizer.zero_grad(set_to_none=True)
            return True
        self.optimizer.step()
        self.scheduler.step()
        return False

    def _any_process(self, reason: str | None) -> bool:
        """True when `reason` is set in any process (each process's loss is its own share's), printed
        here; every process then takes the same decision and the replicas stay identical."""
        if reason:
            print(f"[trainer] optimiser step skipped at policy version {self.version}: non-finite {reason}",
                  flush=True)
        if self.accelerator.num_processes == 1:
            return reason is not None
        flag = torch.tensor([1.0 if reason else 0.0])
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    def _micro_step(self, chosen: list[Sample], old: list | None, ref: list | None, scale: float,
                    norm: Normalisers, stats: StepStats) -> float:
        """Forward and backward of one micro-batch, gradients accumulated; returns its part of the
        optimiser step's loss, times `scale`.

        `scale` 0 is the stand-in backward of a process with no share: its `stats` are thrown away.
        """
        batch = CompletionBatch.from_samples(chosen, self.pad_id)
        t = batch.completion_mask.shape[1]
        logprobs, entropy = self.scorer.forward(
            chosen, batch, with_entropy=True, stats=stats if old is None and scale > 0 else None
        )  # [b, T]
        old_lp = logprobs.detach() if old is None else pad_rows(old, t)  # [b, T]
        rollout_lp = objective.rollout_logprobs(chosen, t)  # [b, T]
        gaps = objective.token_gaps(old_lp, rollout_lp, [len(s.completion_ids) for s in chosen])
        current, stale = objective.split_by_version(gaps, chosen, self.version)
        stats.add_gaps(chosen, current)
        if stale.numel() and scale > 0:  # tokens sampled by older weights (asynchronous training)
            stats.add({"rollout/offpolicy_logprob_abs_diff_mean": stale.mean().item()})
        valid = batch.attention_mask.flatten().bool()  # [B * S]
        if scale > 0 and self.replay and self.replay.logits:  # expert load and router entropy per domain
            stats.count_experts([s.domain for s in chosen], valid, self.replay.used, self.replay.logits,
                                self.replay.num_experts, self.replay.num_layers)
        mb = MicroBatch(
            logprobs=logprobs, old_logprobs=old_lp, rollout_logprobs=rollout_lp, entropy=entropy,
            advantages=torch.tensor([s.advantage for s in chosen])[:, None].expand(-1, t),  # [b, T]
            mask=batch.completion_mask, ref_logprobs=None if ref is None else pad_rows(ref, t),
            router_logits=list(self.replay.logits.values()) if self.replay else [], router_mask=valid,
            router_assignments=list(self.replay.used.values()) if self.replay else [],
        )
        loss, metrics = objective.micro_batch_loss(mb, self.cfg, norm, max_len=self.max_new_tokens,
                                                   top_k=self.replay.top_k)
        self.accelerator.backward(loss * scale)
        stats.add(metrics)
        return loss.item() * scale

    # ---- weights ---------------------------------------------------------------------------------

    def weights(self) -> dict[str, torch.Tensor]:
        return hf_state_dict(self.accelerator.unwrap_model(self.model))

    def shared_weights(self) -> dict[str, tuple[str, Any]]:
        """`weights` in the form engines read from the object store without a copy (`rl.weight_sync.to_shared`)."""
        return to_shared(self.weights())

    def save(self, path: str) -> str:
        """Save a normal Hugging Face checkpoint (weights + config) and, beside it, the trainer state a
        resumed run continues from (`rl.checkpoint.save_trainer_state`)."""
        self.accelerator.unwrap_model(self.model).save_pretrained(path, safe_serialization=True)
        save_trainer_state(path, self.optimizer, self.scheduler, self.version, self.rng)
        return path

    def load_state(self, path: str) -> int:
        """Restore the trainer state saved beside checkpoint `path`'s weights (this worker was built
        from `path`); returns the restored policy version."""
        self.version = load_trainer_state(path, self.optimizer, self.scheduler, self.rng)
        return self.version

    def state(self) -> dict[str, Any]:
        return {"version": self.version, "config": asdict(self.cfg)}
