"""The trainable Hugging Face policy: log-probs of completions under the current weights."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from rl.algos import entropy_from_logits, logprobs_from_logits
from rl.types import Sample

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class CompletionBatch:
    """Prompt+completion token ids right-padded into tensors; the completion part is masked in."""

    input_ids: torch.Tensor  # [B, L] prompt + completion, right-padded
    attention_mask: torch.Tensor  # [B, L]
    completion_ids: torch.Tensor  # [B, T] completion tokens, right-padded
    completion_mask: torch.Tensor  # [B, T] 1 on real completion tokens
    prompt_lens: torch.Tensor  # [B]

    @classmethod
    def from_samples(cls, samples: list[Sample], pad_id: int) -> "CompletionBatch":
        lengths = [len(s.prompt_ids) + len(s.completion_ids) for s in samples]
        max_len = max(lengths)
        max_t = max(1, max(len(s.completion_ids) for s in samples))
        b = len(samples)
        input_ids = torch.full((b, max_len), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((b, max_len), dtype=torch.long)
        completion_ids = torch.full((b, max_t), pad_id, dtype=torch.long)
        completion_mask = torch.zeros((b, max_t), dtype=torch.float32)
        for i, s in enumerate(samples):
            ids = list(s.prompt_ids) + list(s.completion_ids)
            input_ids[i, : len(ids)] = torch.tensor(ids)
            attention_mask[i, : len(ids)] = 1
            t = len(s.completion_ids)
            completion_ids[i, :t] = torch.tensor(s.completion_ids, dtype=torch.long)
            completion_mask[i, :t] = 1.0
        prompt_lens = torch.tensor([len(s.prompt_ids) for s in samples])
        return cls(input_ids, attention_mask, completion_ids, completion_mask, prompt_lens)


def completion_logits(model: torch.nn.Module, batch: CompletionBatch) -> torch.Tensor:
    """Logits that predict each completion token. [B, T, V]"""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits  # [B, L, V]
    t = batch.completion_ids.shape[1]
    # Completion token j of row i sits at position prompt_len+j and is predicted by position prompt_len+j-1.
    positions = batch.prompt_lens[:, None] - 1 + torch.arange(t)[None, :]  # [B, T]
    positions = positions.clamp(max=logits.shape[1] - 1)
    return logits.gather(1, positions[..., None].expand(-1, -1, logits.shape[-1]))  # [B, T, V]


def completion_logprobs(
    model: torch.nn.Module, batch: CompletionBatch, with_entropy: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token log-probs of the completion tokens (and optionally the policy entropy). [B, T]"""
    logits = completion_logits(model, batch).float()  # [B, T, V]
    logprobs = logprobs_from_logits(logits, batch.completion_ids)  # [B, T]
    entropy = entropy_from_logits(logits.detach()) if with_entropy else None
    return logprobs, entropy


def load_policy(path: str | Path, dtype: str = "float32") -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=DTYPES[dtype])
    return model


def hf_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Detached CPU copies of the weights, named and shaped as in the model's Hugging Face checkpoint.

    transformers 5 holds some families' weights in another layout than their checkpoints (experts
    fused into `experts.gate_up_proj [E, 2I, H]`; Mixtral's `block_sparse_moe.experts.N.w1/w2/w3`
    renamed `mlp.experts`); its own save-time conversion turns them back, so every consumer (vLLM's
    loader above all) sees the names and shapes it loads from disk.
    """
    from transformers.core_model_loading import revert_weight_conversion

    state = {name: t.detach().to("cpu", copy=True) for name, t in model.state_dict().items()}
    return {name: t.contiguous() for name, t in revert_weight_conversion(model, state).items()}
