"""One reader for JSON-lines files (metrics logs, prompt datasets); imports nothing of the project."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any


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
