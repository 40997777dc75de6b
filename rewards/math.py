"""Math answer checking for the arithmetic task family."""

from __future__ import annotations

import re

from rewards.registry import RewardResult, reward
from rl.types import Sample

_FIRST_INT = re.compile(r"\s*(-?\d+)")


def extract_integer(text: str) -> int | None:
    """The integer the completion starts with, or None."""
    match = _FIRST_INT.match(text)
    return int(match.group(1)) if match else None


def arithmetic_correct(completion: str, answer: str) -> bool:
    """True when the completion's leading integer equals the reference answer."""
    value = extract_integer(completion)
    return value is not None and value == int(answer)


@reward("math")
def math_reward(sample: Sample) -> RewardResult | None:
    """1.0 when the completion's answer equals the row's `answer` reference field, else 0.0."""
    answer = sample.reference.get("answer")
    if answer is None:
        return None
    correct = arithmetic_correct(sample.completion, str(answer))
    return RewardResult(1.0 if correct else 0.0, {"correct": float(correct)}, passed=correct)
