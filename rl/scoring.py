"""Scoring completions under the policy: log-probs on the rollout's experts (routing replay), the
routing agreement with the engine, and the rollout/trainer diagnostics. Used by the trainer actor."""

from __future__ import annotations

import torch

from rl import objective
from rl.objective import StepStats
from rl.policy import CompletionBatch, completion_logprobs
from rl.routing import RoutingReplay, routing_tensor
from rl.types import Sample


def chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


class PolicyScorer:
    """Forwards of `model` (the trainer's, possibly wrapped for data parallelism) over Samples, in
    micro-batches of `micro_batch`, with its routers observed by `replay` and, when `replay_on`,
    forced to the experts the rollout recorded."""

    def __init__(self, model: torch.nn.Module, replay: RoutingReplay, pad_id: int, micro_batch: int,
                 replay_on: bool) -> None:
        self.model, self.replay, self.pad_id = model, replay, pad_id
        self.micro_batch, self.replay_on = micro_batch, replay_on

    def recorded(self, samples: list[Sample], batch: CompletionBatch) -> torch.Tensor | None:
        """The rollout's expert choices for `batch` as [layers, B * S, k], or None when a sample has none."""
        if not self.replay or any(s.routed_experts is None for s in samples):
            return None
        return routing_tensor(
            [s.routed_experts for s in samples], batch.input_ids.shape[1], self.replay.num_layers, self.replay.top_k
        )

    def forward(
        self, samples: list[Sample], batch: CompletionBatch, with_entropy: bool, stats: StepStats | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Completion log-probs under the policy, on the rollout's experts when routing replay is on.

        With `stats`, counts there how often the policy's own expert choices agree with the rollout's.
        """
        recorded = self.recorded(samples, batch)
        with self.replay.apply(recorded if self.replay_on else None):
            out = completion_logprobs(self.model, batch, with_entropy=with_entropy)
        if stats is not None and recorded is not None:
            stats.add_agreement(*self.replay.agreement(recorded, batch.attention_mask.flatten().bool()))
        return out

    @torch.no_grad()
    def logprobs(self, model: torch.nn.Module, samples: list[Sample], idx: list[int],
                  stats: StepStats | None = None) -> dict[int, torch.Tensor]:
        """Completion log-probs of the samples at `idx` under `model`, keyed by index."""
        model.eval()
        out = {}
        for chunk_idx in chunks(idx, self.micro_batch):
            chunk = [samples[i] for i in chunk_idx]
            batch = CompletionBatch.from_samples(chunk, self.pad_id)
            if model is self.model:
                logprobs, _ = self.forward(chunk, batch, with_entropy=False, stats=stats)  # [b, T]
            else:
                logprobs, _ = completion_logprobs(model, batch)  # [b, T]
            out.update((i, logprobs[row, : len(s.completion_ids)]) for row, (i, s) in enumerate(zip(chunk_idx, chunk)))
        return out

    @torch.no_grad()
    def routing_report(self, samples: list[Sample]) -> dict[str, float]:
        """Diagnose rollout/trainer agreement on `samples` without updating anything.

        Returns the log-prob gap to the rollout (max, mean), the fraction of token-layer expert
        choices where the policy's own routing matches the rollout's, and the fraction where the
        experts the forward actually ran match it (1.0 with routing replay on).
        """
        self.model.eval()
        gaps, own, used = [], StepStats(), StepStats()
        for chunk in chunks(samples, self.micro_batch):
            batch = CompletionBatch.from_samples(chunk, self.pad_id)
            logprobs, _ = self.forward(chunk, batch, with_entropy=False, stats=None)  # [b, T]
            gaps += objective.token_gaps(logprobs, objective.rollout_logprobs(chunk, logprobs.shape[1]),
                                         [len(s.completion_ids) for s in chunk])
            recorded = self.recorded(chunk, batch)
            if recorded is not None:
                valid = batch.attention_mask.flatten().bool()
                own.add_agreement(*self.replay.agreement(recorded, valid, used=False))
                used.add_agreement(*self.replay.agreement(recorded, valid, used=True))
        gap = torch.cat(gaps)
        return {
            "logprob_abs_diff_max": gap.max().item(),
            "logprob_abs_diff_mean": gap.mean().item(),
            "routing_agreement": own.agreement[0] / own.agreement[1] if own.agreement[1] else float("nan"),
            "routing_used_agreement": used.agreement[0] / used.agreement[1] if used.agreement[1] else float("nan"),
            "token_layer_pairs": used.agreement[1],
        }
