"""Per-prompt pass-rate ledger: the evidence that drives hard-example mining.

For every prompt the ledger keeps lifetime attempts and successes and a decayed recent pass rate:
at each new observation of `a` attempts with `s` successes,

    recent_attempts  <- decay * recent_attempts  + a
    recent_successes <- decay * recent_successes + s
    pass_rate         = recent_successes / recent_attempts

so evidence k observations old weighs decay**k and a prompt's band follows the current policy.
Bands: `unseen` (never tried), `too_hard` (pass_rate <= too_hard_max), `solved`
(pass_rate >= solved_min), `learnable` (in between: GRPO groups there have reward variance).

The ledger is stored as Parquet (`ledger.parquet`: one row per prompt, float64 columns, so it
restores bit for bit), with the data side's sampler state as JSON in the file's metadata.

    python -m data_mining.ledger export RUN_DIR [--out ledger.csv|.jsonl|.parquet]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from collections import Counter
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

BANDS = ("unseen", "learnable", "too_hard", "solved")
FILENAME = "ledger.parquet"
STATE_KEY = b"data_mining.state"


@dataclass
class LedgerEntry:
    prompt_id: str
    domain: str
    attempts: int = 0
    successes: int = 0
    recent_attempts: float = 0.0
    recent_successes: float = 0.0
    last_step: int = -1  # -1: never seen
    policy_version: int = -1
    band: str = "unseen"

    @property
    def pass_rate(self) -> float | None:
        return self.recent_successes / self.recent_attempts if self.recent_attempts > 0 else None


class Ledger:
    def __init__(self, too_hard_max: float = 0.1, solved_min: float = 0.9, decay: float = 0.5) -> None:
        self.too_hard_max, self.solved_min, self.decay = too_hard_max, solved_min, decay
        self.entries: dict[str, LedgerEntry] = {}

    def add(self, prompt_id: str, domain: str) -> None:
        if prompt_id not in self.entries:
            self.entries[prompt_id] = LedgerEntry(prompt_id, domain)

    def band_of(self, rate: float | None) -> str:
        if rate is None:
            return "unseen"
        if rate <= self.too_hard_max:
            return "too_hard"
        return "solved" if rate >= self.solved_min else "learnable"

    def record(self, prompt_id: str, domain: str, attempts: int, successes: int, step: int, version: int) -> tuple[str, str]:
        """Add one observation of a prompt; returns its (old band, new band)."""
        self.add(prompt_id, domain)
        e = self.entries[prompt_id]
        old = e.band
        e.attempts += attempts
        e.successes += successes
        e.recent_attempts = self.decay * e.recent_attempts + attempts
        e.recent_successes = self.decay * e.recent_successes + successes
        e.last_step, e.policy_version = step, version
        e.band = self.band_of(e.pass_rate)
        return old, e.band

    def record_samples(self, samples: list, step: int) -> list[tuple[str, str, str]]:
        """Record scored Samples, one observation per prompt; returns (prompt_id, old, new) per prompt."""
        groups: dict[str, list] = {}
        for s in samples:
            groups.setdefault(s.prompt_id, []).append(s)
        moves = []
        for pid, group in groups.items():
            # A pass needs a finite reward: the reward pool already turns NaN/inf into errors, and a
            # sample scored elsewhere must not count an infinite reward as solved either.
            passes = sum(bool(s.passed) and math.isfinite(s.reward) for s in group)
            old, new = self.record(pid, group[0].domain, len(group), passes, step,
                                   max(s.policy_version for s in group))
            moves.append((pid, old, new))
        return moves

    def band_counts(self) -> Counter:
        """{(band, domain): number of prompts}, every band of every domain present (zeros included)."""
        counts: Counter = Counter({(b, d): 0 for d in {e.domain for e in self.entries.values()} for b in BANDS})
        counts.update((e.band, e.domain) for e in self.entries.values())
        return counts

    # --- persistence ---------------------------------------------------------------------------

    def to_table(self, state: dict[str, Any] | None = None) -> Any:
        import pyarrow as pa

        cols = {f.name: [getattr(e, f.name) for e in self.entries.values()] for f in fields(LedgerEntry)}
        cols["pass_rate"] = [e.pass_rate for e in self.entries.values()]
        schema = pa.schema([
            ("prompt_id", pa.string()), ("domain", pa.string()), ("attempts", pa.int64()),
            ("successes", pa.int64()), ("recent_attempts", pa.float64()), ("recent_successes", pa.float64()),
            ("last_step", pa.int64()), ("policy_version", pa.int64()), ("band", pa.string()),
            ("pass_rate", pa.float64()),
        ])
        meta = {b"data_mining.config": json.dumps(
            {"too_hard_max": self.too_hard_max, "solved_min": self.solved_min, "decay": self.decay}).encode()}
        if state is not None:
            meta[STATE_KEY] = json.dumps(state).encode()
        return pa.table(cols, schema=schema.with_metadata(meta))

    def save(self, path: str | Path, state: dict[str, Any] | None = None) -> Path:
        """Write the ledger (and `state`, JSON) to `path`, or `path/ledger.parquet` for a directory."""
        import pyarrow.parquet as pq

        path = ledger_path(path, must_exist=False)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        pq.write_table(self.to_table(state), tmp)
        os.replace(tmp, path)  # a crash mid-write leaves the previous ledger intact
        return path

    @classmethod
    def load(cls, path: str | Path) -> tuple["Ledger", dict[str, Any] | None]:
        """The ledger and the state saved with it (None if none was)."""
        import pyarrow.parquet as pq

        table = pq.read_table(ledger_path(path))
        meta = table.schema.metadata or {}
        ledger = cls(**json.loads(meta[b"data_mining.config"]))
        names = [f.name for f in fields(LedgerEntry)]
        for row in table.select(names).to_pylist():
            ledger.entries[row["prompt_id"]] = LedgerEntry(**row)
        state = json.loads(meta[STATE_KEY]) if STATE_KEY in meta else None
        return ledger, state

    def rows(self) -> list[dict[str, Any]]:
        return [{**asdict(e), "pass_rate": e.pass_rate} for e in self.entries.values()]


def ledger_path(path: str | Path, must_exist: bool = True) -> Path:
    path = Path(path)
    if path.suffix != ".parquet":
        path = path / FILENAME
    if must_exist and not path.exists():
        raise FileNotFoundError(f"no pass-rate ledger at {str(path)!r}")
    return path


def export(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the ledger of `run_dir` (a run, checkpoint, or ledger file) as CSV, JSONL or Parquet."""
    ledger, _ = Ledger.load(run_dir)
    out = Path(out) if out else ledger_path(run_dir).with_suffix(".csv")
    rows = ledger.rows()
    if out.suffix == ".parquet":
        import pyarrow.parquet as pq

        pq.write_table(ledger.to_table(), out)
    elif out.suffix == ".jsonl":
        out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif out.suffix == ".csv":
        with out.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=[*(fl.name for fl in fields(LedgerEntry)), "pass_rate"])
            writer.writeheader()
            writer.writerows(rows)
    else:
        raise ValueError(f"unknown export format {out.suffix!r} (use .csv, .jsonl or .parquet)")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_mining.ledger", description="The per-prompt pass-rate ledger.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("export", help="write a run's ledger out for offline curation")
    p.add_argument("run_dir", help="run or checkpoint directory (or a ledger.parquet file)")
    p.add_argument("--out", help="output file: .csv (default RUN_DIR/ledger.csv), .jsonl or .parquet")
    args = parser.parse_args(argv)
    try:
        out = export(args.run_dir, args.out)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    ledger, _ = Ledger.load(args.run_dir)
    counts = Counter(e.band for e in ledger.entries.values())
    print(f"{len(ledger.entries)} prompts ({', '.join(f'{b} {counts[b]}' for b in BANDS)}) -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
