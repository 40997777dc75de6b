"""One reader for JSON-lines files (metrics logs, prompt datasets), and the strict writer of the
metrics log; imports nothing of the project."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# JSON (RFC 8259) has no NaN or infinities; `dumps` writes them as these strings, which `float()`
# and `non_finite_floats` read back.
NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """`(line number, value)` for each non-blank line of `path`, numbered from 1.

    `value` is the parsed JSON value, or the `json.JSONDecodeError` for a line that does not parse
    (a line that is not UTF-8 gives one too, with the offending byte's position), so each caller
    decides whether a bad line is skipped, counted or fatal.
    """
    with Path(path).open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield lineno, json.JSONDecodeError(f"not UTF-8 ({exc.reason}: byte {raw[exc.start]:#04x})",
                                                   raw.decode("utf-8", "replace"), exc.start)
                continue
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as exc:
                yield lineno, exc


def dumps(value: Any, indent: int | None = None) -> str:
    """`value` as strict JSON: a NaN or infinite float, at any depth, becomes "nan", "inf" or "-inf"
    (Python's json would write the bare tokens NaN and Infinity, which other JSON readers reject)."""
    return json.dumps(_strict(value), allow_nan=False, indent=indent)


def non_finite_floats(value: Any) -> Any:
    """The inverse of `dumps`'s substitution: the strings "nan", "inf" and "-inf", at any depth, as floats."""
    if isinstance(value, str):
        return NON_FINITE.get(value, value)
    if isinstance(value, dict):
        return {k: non_finite_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [non_finite_floats(v) for v in value]
    return value


def _strict(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else "inf" if value > 0 else "-inf"
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value
