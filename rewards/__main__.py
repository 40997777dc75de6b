"""Score a JSONL file of completions offline.

    python -m rewards score --input rows.jsonl --output scored.jsonl [--custom SPEC ...]
        [--route DOMAIN=REWARD[:WEIGHT][,REWARD[:WEIGHT]...] ...] [--reward-model PATH]
        [--timeout S] [--threads N]
    python -m rewards score --check labelled.jsonl [--route ...]

Each input line is an object with `id`, `domain`, `prompt`, `completion` and the domain's reference
fields (math: `answer`; code: `tests`; instruction: `constraints` in IFEval's format); every other
field is passed to the rewards in `Sample.reference`. Each output line, in input order, is the input
row plus `score` (1.0 = fully correct) and `components`. A line that is not a JSON object, lacks a
required field, or whose reward fails or runs past `--timeout` seconds gets `score: 0.0` and an
`error` naming the problem, and the run goes on. Blank lines are skipped. `--custom` loads user
rewards (see `rewards.custom`); `--route` says which rewards score a domain, replacing the built-in
routing for that domain. Rows are scored by the same `RewardPool` as in training. Token ids are not
available here, so rewards that need them (`overlong`) do not apply.

`--check` scores a labelled file instead: rows as above plus `expected` (true when the completion
should pass: fully correct, every instruction followed), optional `category` (default: the domain)
and `reason`. It prints the agreement per category and each disagreement with its reason, and exits
1 when any row disagrees. The repository's own labelled cases are in `rewards/labelled/`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rewards.custom import RewardLoadError
from rewards.pool import DEFAULT_THREADS, DEFAULT_TIMEOUT_S, RewardPool, describe, setup_rewards
from rewards.registry import parse_route as parse_route_text
from rl.config import RewardConfig
from rl.types import Sample

ROW_FIELDS = ("id", "domain", "prompt", "completion")
REFERENCE_FIELDS = {"math": ("answer",), "code": ("tests",), "instruction": ("constraints",)}


def parse_route(text: str) -> tuple[str, list[tuple[str, float]]]:
    """`"math=math,format:0.1"` -> `("math", [("math", 1.0), ("format", 0.1)])`."""
    try:
        return parse_route_text(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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


def _failed(row: dict, error: str) -> dict:
    return {**row, "score": 0.0, "components": {}, "error": error}


def _not_json(token: str) -> None:
    """Python's json accepts NaN and Infinity; they are not JSON, and would end up in the output."""
    raise ValueError(f"{token} is not a JSON value")


def read_rows(path: Path) -> list[tuple[int, dict | str]]:
    """(line number, row) for every non-blank line; a row that cannot be used is its error text."""
    rows: list[tuple[int, dict | str]] = []
    with path.open(encoding="utf-8") as src:
        for line_number, line in enumerate(src, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line, parse_constant=_not_json)
            except ValueError as exc:  # json.JSONDecodeError is one
                rows.append((line_number, f"line {line_number}: invalid JSON: {exc}"))
                continue
            if not isinstance(row, dict):
                rows.append((line_number, f"line {line_number}: expected a JSON object, got {type(row).__name__}"))
                continue
            rows.append((line_number, row))
    return rows


def score_rows(rows: list[tuple[int, dict | str]], pool: RewardPool) -> list[dict]:
    """The output row for every input row, in order; never raises for a bad row (it gets an `error`)."""
    out: list[dict | None] = [None] * len(rows)
    samples, where = [], []
    for k, (line_number, row) in enumerate(rows):
        if isinstance(row, str):
            out[k] = _failed({"line": line_number}, row)
            continue
        try:
            samples.append(row_to_sample(row))
            where.append(k)
        except ValueError as exc:
            out[k] = _failed(row, f"line {line_number}: {describe(exc)}")
    outcomes, _ = pool.evaluate(samples)
    for k, outcome in zip(where, outcomes):
        line_number, row = rows[k]
        if isinstance(outcome, str):
            out[k] = _failed(row, f"line {line_number}: {outcome}")
        else:
            out[k] = {**row, "score": float(outcome.score), "components": outcome.components}
    return out  # type: ignore[return-value]


def agreement(rows: list[dict], scored: list[dict]) -> tuple[dict[str, list[int]], list[str]]:
    """Per category `[agreeing, total]`, and one line per disagreement. A row agrees when its score
    reaches 1.0 (passed) exactly when its `expected` is true; a row that failed to score agrees with
    nothing. ValueError names a row without a boolean `expected`."""
    counts: dict[str, list[int]] = {}
    wrong: list[str] = []
    for row, out in zip(rows, scored):
        expected = row.get("expected")
        if not isinstance(expected, bool):
            raise ValueError(f"row {row.get('id')!r}: 'expected' must be true or false, got {expected!r}")
        category = str(row.get("category", row.get("domain")))
        verdict = "error" not in out and out["score"] >= 1.0
        tally = counts.setdefault(category, [0, 0])
        tally[0] += verdict == expected
        tally[1] += 1
        if verdict != expected:
            why = out.get("error") or f"score {out['score']:.3f}"
            wrong.append(f"{row.get('id')} [{category}] expected {expected}, got {why}: {row.get('reason', '')}")
    return counts, wrong


def check_file(path: Path, pool: RewardPool) -> int:
    """Score a labelled file and print the agreement; 0 when every row agrees, else 1."""
    read = read_rows(path)
    bad = [row for _, row in read if isinstance(row, str)]
    if bad:
        raise ValueError(bad[0])
    rows = [row for _, row in read]
    counts, wrong = agreement(rows, score_rows(read, pool))
    for category, (agree, total) in sorted(counts.items()):
        print(f"{category:24s} {agree:4d}/{total:<4d} {agree / total:7.1%}")
    agree, total = (sum(c[i] for c in counts.values()) for i in (0, 1))
    print(f"{'all':24s} {agree:4d}/{total:<4d} {agree / max(total, 1):7.1%}")
    for line in wrong:
        print(f"disagrees: {line}")
    return 0 if not wrong else 1


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m rewards", description="Offline reward scoring.")
    commands = parser.add_subparsers(dest="command", required=True)
    score = commands.add_parser("score", help="score a JSONL file of completions")
    score.add_argument("--input", type=Path, help="JSONL rows to score")
    score.add_argument("--output", type=Path, help="where to write the scored JSONL")
    score.add_argument("--check", type=Path, metavar="LABELLED",
                       help="score a labelled JSONL (rows with `expected`) and print agreement per category")
    score.add_argument("--custom", action="append", default=[], metavar="SPEC",
                       help="load a reward: [name=]pkg.module:fn or [name=]path/file.py:fn (repeatable)")
    score.add_argument("--route", action="append", default=[], type=parse_route,
                       metavar="DOMAIN=REWARD[:W],...",
                       help="rewards (and weights) for a domain, replacing its default (repeatable)")
    score.add_argument("--reward-model", metavar="PATH",
                       help="sequence-classification checkpoint for the 'general' domain (see reward.reward_model_path)")
    score.add_argument("--reward-model-label", metavar="LABEL", help="output a multi-output reward model scores")
    score.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="S",
                       help="seconds one reward call may take (default: %(default)s)")
    score.add_argument("--threads", type=int, default=DEFAULT_THREADS, metavar="N",
                       help="worker threads for reward calls (default: %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.check is None and (args.input is None or args.output is None):
        parser.error("score needs --input and --output, or --check LABELLED")
    source = args.check or args.input
    if not source.is_file():
        print(f"error: input file not found: {source}", file=sys.stderr)
        return 2
    try:
        route_texts = (f"{domain}=" + ",".join(f"{name}:{weight!r}" for name, weight in route)
                       for domain, route in args.route)
        routes = setup_rewards(RewardConfig(custom=tuple(args.custom), routes=tuple(route_texts),
                                            reward_model_path=args.reward_model,
                                            reward_model_label=args.reward_model_label))
    except RewardLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.check is not None:
        with RewardPool(routes, args.timeout, args.threads) as pool:
            try:
                return check_file(args.check, pool)
            except ValueError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
    with RewardPool(routes, args.timeout, args.threads) as pool:
        out = score_rows(read_rows(args.input), pool)
    with args.output.open("w", encoding="utf-8") as dst:
        for row in out:
            dst.write(json.dumps(row, ensure_ascii=False) + "\n")
    mean = sum(r["score"] for r in out) / len(out) if out else 0.0
    errors = sum("error" in r for r in out)
    print(f"scored {len(out)} rows: mean score {mean:.4f}, {errors} errors", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
