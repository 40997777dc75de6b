"""One reward signature, registered by name.

    @reward("math")
    def math_reward(sample: Sample) -> RewardResult | None: ...

A reward returns a score with named components, or `None` when it does not apply to the sample.
Each domain routes to one or more rewards (with weights); `score_sample` combines them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from rl.types import Sample


@dataclass
class RewardResult:
    score: float
    components: dict[str, float] = field(default_factory=dict)
    passed: bool | None = None  # task solved; None = decide from score (>= 1.0)


RewardFn = Callable[[Sample], "RewardResult | None"]
REWARDS: dict[str, RewardFn] = {}

# Which rewards score each domain, with their weights.
DEFAULT_DOMAIN_REWARDS: dict[str, list[tuple[str, float]]] = {
    "math": [("math", 1.0)],
    "instruction": [("instruction", 1.0)],
}


def reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Register `fn` as the reward called `name`."""

    def deco(fn: RewardFn) -> RewardFn:
        if name in REWARDS and REWARDS[name] is not fn:
            raise ValueError(f"reward {name!r} is already registered ({REWARDS[name].__module__})")
        REWARDS[name] = fn
        return fn

    return deco


def get_reward(name: str) -> RewardFn:
    if name not in REWARDS:
        raise KeyError(f"unknown reward {name!r}; registered: {sorted(REWARDS)}")
    return REWARDS[name]


def score_sample(sample: Sample, domain_rewards: dict[str, list[tuple[str, float]]] | None = None) -> RewardResult:
    """Weighted sum of the domain's applicable rewards; components are prefixed by reward name."""
    routes = (domain_rewards or DEFAULT_DOMAIN_REWARDS).get(sample.domain)
    if not routes:
        raise KeyError(f"no reward configured for domain {sample.domain!r} (prompt {sample.prompt_id})")
    total, weight_sum, passed = 0.0, 0.0, True
    components: dict[str, float] = {}
    for name, weight in routes:
        result = get_reward(name)(sample)
        if result is None:
            continue
        total += weight * result.score
        weight_sum += weight
        components[name] = result.score
        components.update({f"{name}/{k}": v for k, v in result.components.items()})
        passed = passed and (result.passed if result.passed is not None else result.score >= 1.0)
    if weight_sum == 0:
        raise ValueError(f"no reward applies to prompt {sample.prompt_id} in domain {sample.domain!r}")
    return RewardResult(total, components, passed)
