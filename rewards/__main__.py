"""Score a JSONL file of completions offline.

    python -m rewards score --input rows.jsonl --output scored.jsonl [--custom SPEC ...]
        [--route DOMAIN=REWARD[:WEIGHT][,REWARD[:WEIGHT]...] ...]

Each input line is an object with `id`, `domain`, `prompt`, `completion` and the domain's reference
fields (math: `answer`; instruction: `constraints`); every other field is passed to the rewards in
`Sample.reference`. Each output line, in input order, is the input row plus `score` (1.0 = fully
correct) and `components`. A line that is not a JSON object, lacks a required field or makes a
reward fail gets `score: 0.0` and an `error` naming the problem, and the run goes on. Blank lines are
skipped. `--custom` loads user rewards (see `rewards.custom`); `--route` says which rewards score a
domain, replacing the default routing for that domain. Token ids are not available here, so
rewards that need them (`overlong`) do not apply.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import rewards.pool  # noqa: F401  (registers the built-in rewards)
from rewards.custom import RewardLoadError, load_custom_rewards
from rewards.registry import DEFAULT_DOMAIN_REWARDS, REWARDS, score_sample
from rl.types import Sample

ROW_FIELDS = ("id", "domain", "prompt", "completion")
REFERENCE_FIELDS = {"math": ("answer",), "instruction": ("constraints",)}

Routes = dict[str, list[tuple[str, float]]]


def parse_route(text: str) -> tuple[str, list[tuple[str, float]]]:
    """`"math=math,format:0.1"` -> `("math", [("math", 1.0), ("format", 0.1)])`."""
    domain, sep, rewards_text = text.partition("=")
    if not sep or not domain or not rewards_text:
        raise argparse.ArgumentTypeError(f"route {text!r}: expected DOMAIN=REWARD[:WEIGHT][,...]")
    routes = []
    for item in rewards_text.split(","):
        name, _, weight = item.partition(":")
        try:
            routes.append((name, float(weight) if weight else 1.0))
        except ValueError:
            raise argparse.ArgumentTypeError(f"route {text!r}: weight {weight!r} is not a number") from None
    return domain, routes


def row_to_sample(row: dict) -> Sample:
    """The Sample for one input row; ValueError names a missing or mistyped field."""
    for name in ROW_FIELDS:
        if name not in row:
            raise ValueError(f"missing field {name!r}")
    for name in ("domain", "prompt", "completion"):
        if not isinstance(row[name], str):
            raise ValueError(f"field {name!r} must be a string, got {type(row[name]).__name__}")
    for name in REFERENCE_FIELDS.get(row["domain"], ()):
        if name not in row:
            raise ValueError(f"missing field {name!r} (required for domain {row['domain']!r})")
    reference = {k: v for k, v in row.items() if k not in ROW_FIELDS}
    return Sample(
        prompt_id=str(row["id"]),
        domain=row["domain"],
        prompt=row["prompt"],
        prompt_ids=[],
        reference=reference,
        completion=row["completion"],
    )


def _describe(exc: Exception) -> str:
    # str(KeyError) quotes its message; the message itself reads better.
    message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
    return f"{type(exc).__name__}: {message}"


def _failed(row: dict, error: str) -> dict:
    return {**row, "score": 0.0, "components": {}, "error": error}


def score_line(line: str, line_number: int, routes: Routes) -> dict:
    """The output row for one input line; never raises for a bad row (it gets an `error`)."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        return _failed({"line": line_number}, f"line {line_number}: invalid JSON: {exc}")
    if not isinstance(row, dict):
        return _failed({"line": line_number}, f"line {line_number}: expected a JSON object, got {type(row).__name__}")
    try:
        result = score_sample(row_to_sample(row), routes)
    except Exception as exc:  # one bad row costs that row, not the file
        return _failed(row, f"line {line_number}: {_describe(exc)}")
    return {**row, "score": float(result.score), "components": result.components}


def score_file(input_path: Path, output_path: Path, routes: Routes) -> tuple[int, float, int]:
    """Score every non-blank line of `input_path` into `output_path`; return (rows, mean, errors)."""
    rows, total, errors = 0, 0.0, 0
    with input_path.open(encoding="utf-8") as src, output_path.open("w", encoding="utf-8") as dst:
        for line_number, line in enumerate(src, start=1):
            if not line.strip():
                continue
            out = score_line(line, line_number, routes)
            dst.write(json.dumps(out, ensure_ascii=False) + "\n")
            rows, total, errors = rows + 1, total + out["score"], errors + ("error" in out)
    return rows, (total / rows if rows else 0.0), errors


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m rewards", description="Offline reward scoring.")
    commands = parser.add_subparsers(dest="command", required=True)
    score = commands.add_parser("score", help="score a JSONL file of completions")
    score.add_argument("--input", type=Path, required=True, help="JSONL rows to score")
    score.add_argument("--output", type=Path, required=True, help="where to write the scored JSONL")
    score.add_argument("--custom", action="append", default=[], metavar="SPEC",
                       help="load a reward: [name=]pkg.module:fn or [name=]path/file.py:fn (repeatable)")
    score.add_argument("--route", action="append", default=[], type=parse_route,
                       metavar="DOMAIN=REWARD[:W],...",
                       help="rewards (and weights) for a domain, replacing its default (repeatable)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    if not args.input.is_file():
        print(f"error: input file not found: {args.input}", file=sys.stderr)
        return 2
    try:
        load_custom_rewards(args.custom)
    except RewardLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    routes = {**DEFAULT_DOMAIN_REWARDS, **dict(args.route)}
    unknown = sorted({name for domain_routes in routes.values() for name, _ in domain_routes} - set(REWARDS))
    if unknown:
        print(f"error: unknown reward(s) in --route: {unknown}; registered: {sorted(REWARDS)}", file=sys.stderr)
        return 2
    rows, mean, errors = score_file(args.input, args.output, routes)
    print(f"scored {rows} rows: mean score {mean:.4f}, {errors} errors", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
