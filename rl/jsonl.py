"""One reader for JSON-lines files (metrics logs, prompt datasets); imports nothing of the project."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """`(line number, value)` for each non-blank line of `path`, numbered from 1.

    `value` is the parsed JSON value, or the `json.JSONDecodeError` for a line that does not parse,
    so each caller decides whether a bad line is skipped, counted or fatal.
    """
    with Path(path).open() as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as exc:
                yield lineno, exc
