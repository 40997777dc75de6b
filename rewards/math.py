"""Math answer checking for the arithmetic task family."""

from __future__ import annotations

import re

_FIRST_INT = re.compile(r"\s*(-?\d+)")


def extract_integer(text: str) -> int | None:
    """The integer the completion starts with, or None."""
    match = _FIRST_INT.match(text)
    return int(match.group(1)) if match else None


def arithmetic_correct(completion: str, answer: str) -> bool:
    """True when the completion's leading integer equals the reference answer."""
    value = extract_integer(completion)
    return value is not None and value == int(answer)
