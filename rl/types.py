"""The one record that carries a completion through every stage of the pipeline.

A `Sample` is created by the rollout actor, scored by a reward actor, given an advantage by the
algorithm and consumed by the trainer. Each stage fills in its own fields and never re-derives what
an earlier stage already knew.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Sample:
    # --- set by the data side (data_mining) ---
    prompt_id: str
    domain: str
    prompt: str
    prompt_ids: list[int]
    reference: dict[str, Any] = field(default_factory=dict)  # the row's reference fields, e.g. {"answer": "42"}
    group_index: int = 0  # which of the `samples_per_prompt` completions of this prompt this is

    # --- set by the rollout actor ---
    completion: str = ""
    completion_ids: list[int] = field(default_factory=list)
    rollout_logprobs: list[float] = field(default_factory=list)  # one per completion token
    finish_reason: str = ""  # "stop" (EOS) or "length" (truncated)
    policy_version: int = 0  # version of the weights that generated its oldest token
    # The policy version that sampled each completion token (asynchronous training: an update can
    # land mid-completion); empty = `policy_version` throughout.
    token_versions: list[int] = field(default_factory=list)
    # [positions, layers, top_k] int16 experts each prompt/completion token was routed to in the
    # engine (the last completion token is never run); None when routing is not recorded.
    routed_experts: Any = None

    # --- set by the reward actor ---
    reward: float = 0.0
    reward_components: dict[str, float] = field(default_factory=dict)
    passed: bool = False  # task solved (used for pass rates; reward may also carry shaping terms)

    # --- set by the algorithm ---
    advantage: float = 0.0

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"
