"""Group filters applied between scoring and the update; each verdict carries its reason.

A GRPO group whose completions all scored the same has zero advantage everywhere: it adds no
gradient, only tokens to the loss normaliser (diluting the informative groups) and trainer time.
Dropping such groups is DAPO's dynamic sampling (Yu et al. 2025, arXiv:2503.14476).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from rl.types import Sample


@dataclass(frozen=True)
class FilterVerdict:
    keep: bool
    reason: str


def zero_variance_filter(group: list[Sample]) -> FilterVerdict:
    rewards = {s.reward for s in group}
    if len(rewards) > 1:
        return FilterVerdict(True, "learnable")
    return FilterVerdict(False, "all_passed" if all(s.passed for s in group) else "all_same_reward")


def filter_groups(samples: list[Sample]) -> tuple[list[Sample], dict[str, float]]:
    """Keep the samples of groups the filter keeps; count verdict reasons as metrics."""
    groups: dict[str, list[Sample]] = {}
    for s in samples:
        groups.setdefault(s.prompt_id, []).append(s)
    reasons: Counter[str] = Counter()
    kept: list[Sample] = []
    for group in groups.values():
        verdict = zero_variance_filter(group)
        reasons[verdict.reason] += 1
        if verdict.keep:
            kept.extend(group)
    stats = {f"filter/groups/{reason}": float(n) for reason, n in reasons.items()}
    stats["filter/zero_variance_fraction"] = 1.0 - reasons["learnable"] / max(1, len(groups))
    return kept, stats
