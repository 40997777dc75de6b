"""Shaping rewards: output format and overlong-length penalty.

These score how a completion is written, not whether it is right, so they are meant to be routed
next to a correctness reward (e.g. `[("math", 1.0), ("overlong", 1.0)]`).
"""

from __future__ import annotations

import re

from rewards.registry import RewardFn, RewardResult, reward
from rl.types import Sample

_TAG_NAME = re.compile(r"[A-Za-z][\w-]*")

# DAPO's setting is L_max = 20480 with a 4096-token buffer: the buffer defaults to the same fifth.
DEFAULT_BUFFER_FRACTION = 0.2


def check_format(completion: str, tags: dict[str, bool]) -> bool:
    """True when the completion is the required tag blocks, then a non-empty answer.

    `tags` maps a tag name to whether it is required (True) or forbidden (False). Required tags
    must open the completion in the given order, each exactly once as `<tag>non-empty</tag>`
    (whitespace between blocks is fine), and be followed by a non-empty answer; forbidden tags
    must not appear at all. `{"think": True}` is the reasoning format `<think>...</think> answer`.
    """
    for tag, needed in tags.items():
        if not isinstance(tag, str) or not _TAG_NAME.fullmatch(tag) or not isinstance(needed, bool):
            raise ValueError(f"format tags must map tag names to true/false, got {tag!r}: {needed!r}")
    required = [t for t, needed in tags.items() if needed]
    forbidden = [t for t, needed in tags.items() if not needed]
    if any(f"<{t}>" in completion or f"</{t}>" in completion for t in forbidden):
        return False
    if any(completion.count(f"<{t}>") != 1 or completion.count(f"</{t}>") != 1 for t in required):
        return False
    blocks = "".join(rf"<{t}>\s*\S.*?</{t}>\s*" for t in required)
    match = re.fullmatch(rf"\s*{blocks}(.*)", completion, re.DOTALL)
    return match is not None and bool(match.group(1).strip())


@reward("format")
def format_reward(sample: Sample) -> RewardResult | None:
    """1.0 when the completion follows the row's `format` reference field (see `check_format`),
    else 0.0; passed follows the score. Not applicable when the row has no `format`."""
    tags = sample.reference.get("format")
    if tags is None:
        return None
    if not isinstance(tags, dict):
        raise ValueError(f"'format' must be an object of tag -> required, got {tags!r}")
    ok = check_format(sample.completion, tags)
    return RewardResult(float(ok), {"formatted": float(ok)}, passed=ok)


def overlong_penalty(length: int, max_tokens: int, buffer_tokens: int) -> float:
    """DAPO's soft overlong punishment (Yu et al. 2025, arXiv:2503.14476, §3.4).

    0 up to `max_tokens - buffer_tokens`, then linear down to -1 at `max_tokens`, -1 beyond.
    """
    if not (isinstance(max_tokens, int) and max_tokens >= 1):
        raise ValueError(f"max_tokens must be a positive integer, got {max_tokens!r}")
    if not (isinstance(buffer_tokens, int) and 0 <= buffer_tokens <= max_tokens):
        raise ValueError(f"buffer_tokens must be an integer in [0, {max_tokens}], got {buffer_tokens!r}")
    expected = max_tokens - buffer_tokens
    if length <= expected:
        return 0.0
    if length <= max_tokens:
        return (expected - length) / buffer_tokens
    return -1.0


def _overlong_result(sample: Sample, max_tokens: int, buffer_tokens: int) -> RewardResult | None:
    # Without token ids (e.g. scoring a file of texts) the length is unknown: not applicable.
    if not sample.completion_ids:
        return None
    length = len(sample.completion_ids)
    penalty = overlong_penalty(length, max_tokens, buffer_tokens)
    # Length is shaping, not task success: it never makes a sample count as failed.
    return RewardResult(penalty, {"length": float(length)}, passed=True)


def make_overlong(max_tokens: int, buffer_tokens: int) -> RewardFn:
    """A reward applying `overlong_penalty` with fixed limits to the completion's token count."""
    overlong_penalty(0, max_tokens, buffer_tokens)  # validate the limits now, not at the first sample

    def overlong(sample: Sample) -> RewardResult | None:
        return _overlong_result(sample, max_tokens, buffer_tokens)

    return overlong


@reward("overlong")
def overlong_reward(sample: Sample) -> RewardResult | None:
    """`overlong_penalty` with the row's `max_tokens` and optional `overlong_buffer` (default a fifth
    of `max_tokens`). Not applicable without `max_tokens` or without completion token ids."""
    max_tokens = sample.reference.get("max_tokens")
    if max_tokens is None:
        return None
    buffer_tokens = sample.reference.get("overlong_buffer")
    if buffer_tokens is None and isinstance(max_tokens, int):  # a bad max_tokens is reported below
        buffer_tokens = int(max_tokens * DEFAULT_BUFFER_FRACTION)
    return _overlong_result(sample, max_tokens, buffer_tokens)
