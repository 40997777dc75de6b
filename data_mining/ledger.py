"""Per-prompt pass-rate ledger: the evidence that drives hard-example mining.

Each prompt's pass rate p gets a Beta posterior. Its prior is the pass rate of a fresh prompt of
its domain (and difficulty level, once that level has `min_evidence` attempts), pooled over the
first group of every prompt (later groups are drawn for their own record, which would bias the
pool toward 0.5), with `prior_strength` pseudo-attempts:

    m = (S_first + 1) / (N_first + 2)                     prior mean (Laplace-smoothed pool)
    a = k m + s_e,   b = k (1 - m) + f_e                  posterior Beta(a, b), k = prior_strength

where s_e and f_e are the prompt's successes and failures, each discounted by the policy versions
passed since it was gathered and by the prompt's groups with reward variance recorded since (the
groups the update trains on; a uniform group has zero advantage and leaves the policy where it
was on that prompt): evidence `dv` versions and `k` such groups old weighs
0.5 ** (dv / half_life) * decay ** k, so what an older policy did fades as the policy moves,
fastest on the prompts it trains on, while a prompt that keeps coming back uniform piles up the
evidence that parks it. A success is a completion that `passed` (the
reward's own pass threshold), so a group of G completions is a Binomial(G, p) draw and the Beta is
its conjugate prior; a partial score without a pass counts as a failure.

Bands: `unseen` (never tried), `too_hard` (posterior mean <= too_hard_max), `solved` (mean >=
solved_min), `learnable` (in between). Parking a prompt (a move into too_hard or solved) needs at
least `min_evidence` discounted attempts: one uniform group of 8 is not enough to set aside a
prompt the policy solves 25% of the time (it draws 8 failures one time in ten). A move back to
learnable needs no such evidence (trying again is cheap, and a group with variance is proof).

The sampler's weight is the chance that a group of G completions has reward variance under the
posterior (`useful_probability`, closed form for a Beta):

    P(useful) = 1 - E[p^G] - E[(1 - p)^G],   E[p^G] = B(a + G, b) / B(a, b) = prod_{i<G} (a + i) / (a + b + i)

The same first-group pools give the pass rate per difficulty level that steers the task
generators (`level_rates`); the pool of every group gives the domain's pass rate, whose drift
since a prompt's last evidence is one of the reasons to re-mine it (`domain_rate`). All pools are
discounted by policy versions like the prompts' evidence.

The ledger is stored as Parquet (`ledger.parquet`: one row per prompt, float64 columns, so it
restores bit for bit), with the pooled prior statistics and the data side's sampler state as JSON
in the file's metadata. Ledgers written before the posterior (a decayed recent pass rate per
prompt) load as evidence: their recent successes and failures become s_e and f_e.

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

import numpy as np

BANDS = ("unseen", "learnable", "too_hard", "solved")
PARKED = ("too_hard", "solved")
FILENAME = "ledger.parquet"
STATE_KEY = b"data_mining.state"
CONFIG_KEY = b"data_mining.config"
PRIORS_KEY = b"data_mining.priors"
FORMAT = 2  # 1: decayed recent pass rate per prompt; 2: discounted Beta evidence


def useful_probability(a: Any, b: Any, group: int) -> Any:
    """P(a group of `group` Bernoulli(p) draws is not uniform) for p ~ Beta(a, b):
    1 - E[p^G] - E[(1-p)^G], with E[p^G] = prod_{i<G} (a + i) / (a + b + i).
    Floats give a float; arrays of a and b (shape [N]) give an array [N]."""
    all_pass = all_fail = 1.0
    for i in range(group):
        all_pass *= (a + i) / (a + b + i)
        all_fail *= (b + i) / (a + b + i)
    out = 1.0 - all_pass - all_fail
    return np.maximum(out, 0.0) if isinstance(out, np.ndarray) else max(0.0, out)


def thompson_pick(a: np.ndarray, b: np.ndarray, factor: np.ndarray, group: int, k: int, seed: int) -> list[int]:
    """Indices of the k prompts to draw by Thompson sampling on usefulness: each prompt's pass rate
    is sampled from its Beta(a, b), scored by the chance 1 - p^G - (1 - p)^G that a group at that
    rate has reward variance, times its `factor`; the k best scores win (ties: the earlier index).
    A prompt known to sit near 0.5 scores near 1 every time; an uncertain one now and then (it is
    explored in proportion to the chance that it is useful); one known to sit near 0 or 1 rarely."""
    if k <= 0 or len(a) == 0:
        return []
    p = np.random.default_rng(seed).beta(a, b)
    score = (1.0 - p**group - (1.0 - p) ** group) * factor
    return np.argsort(-score, kind="stable")[:k].tolist()


@dataclass
class LedgerEntry:
    prompt_id: str
    domain: str
    difficulty: int = -1  # the task family's difficulty level; -1: unknown
    attempts: int = 0  # lifetime
    successes: int = 0
    evidence_successes: float = 0.0  # discounted to `policy_version`
    evidence_failures: float = 0.0
    last_step: int = -1  # -1: never seen
    policy_version: int = -1  # newest policy version in the evidence
    band: str = "unseen"
    domain_rate: float = 0.5  # its domain's pooled pass rate at its last evidence (re-mining drift)

    @property
    def evidence(self) -> float:
        return self.evidence_successes + self.evidence_failures


class Ledger:
    def __init__(self, too_hard_max: float = 0.1, solved_min: float = 0.9, half_life: float = 50.0,
                 prior_strength: float = 2.0, min_evidence: float = 16.0, decay: float = 1.0) -> None:
        self.too_hard_max, self.solved_min, self.decay = too_hard_max, solved_min, decay
        self.half_life, self.prior_strength, self.min_evidence = half_life, prior_strength, min_evidence
        self.entries: dict[str, LedgerEntry] = {}
        self.pools: dict[str, list[float]] = {}  # "domain", "first:domain[/level]" -> [successes, attempts, version]
        self._priors: dict[tuple[str, int], float] = {}  # `prior` until the pools change

    def config(self) -> dict[str, float]:
        return {"too_hard_max": self.too_hard_max, "solved_min": self.solved_min, "half_life": self.half_life,
                "prior_strength": self.prior_strength, "min_evidence": self.min_evidence, "decay": self.decay}

    def add(self, prompt_id: str, domain: str, difficulty: int = -1) -> None:
        if prompt_id not in self.entries:
            self.entries[prompt_id] = LedgerEntry(prompt_id, domain, difficulty)

    def discount(self, versions: int) -> float:
        """Weight of evidence `versions` policy versions old (1 when half_life is 0: nothing fades)."""
        return 0.5 ** (max(0, versions) / self.half_life) if self.half_life > 0 else 1.0

    def band_of(self, rate: float | None) -> str:
        if rate is None:
            return "unseen"
        if rate <= self.too_hard_max:
            return "too_hard"
        return "solved" if rate >= self.solved_min else "learnable"

    # --- the posterior -------------------------------------------------------------------------

    def _rate(self, key: str, least: float) -> float | None:
        s, n, _ = self.pools.get(key, (0.0, 0.0, 0))
        return (s + 1.0) / (n + 2.0) if n >= least and n > 0 else None

    def prior(self, domain: str, difficulty: int = -1) -> float:
        """The pass rate of a fresh prompt of the domain's difficulty level (of the domain while the
        level has fewer than min_evidence attempts): first groups only, since later ones are drawn
        for their own record; Laplace-smoothed; 0.5 for a domain never seen."""
        key = (domain, difficulty)
        if key not in self._priors:
            self._priors[key] = self._prior(domain, difficulty)
        return self._priors[key]

    def _prior(self, domain: str, difficulty: int) -> float:
        for rate in (self._rate(f"first:{domain}/{difficulty}", self.min_evidence), self._rate(f"first:{domain}", 0),
                     self._rate(domain, 0)):
            if rate is not None:
                return rate
        return 0.5

    def domain_rate(self, domain: str) -> float:
        """The domain's pass rate over every group recorded (discounted by versions)."""
        return self._rate(domain, 0) or 0.5

    def level_rates(self, domain: str) -> dict[int, float]:
        """{difficulty level: pass rate of fresh prompts}, levels with min_evidence first-group attempts."""
        prefix = f"first:{domain}/"
        return {int(k[len(prefix):]): rate for k in self.pools
                if k.startswith(prefix) and (rate := self._rate(k, self.min_evidence)) is not None}

    def posterior(self, e: LedgerEntry, version: int | None = None) -> tuple[float, float]:
        """(a, b) of the prompt's Beta posterior, its evidence discounted to policy `version` (default:
        the version it was gathered at)."""
        f = self.discount(version - e.policy_version) if version is not None and e.policy_version >= 0 else 1.0
        m = self.prior(e.domain, e.difficulty)
        return self.prior_strength * m + f * e.evidence_successes, self.prior_strength * (1 - m) + f * e.evidence_failures

    def mean(self, e: LedgerEntry, version: int | None = None) -> float | None:
        """Posterior mean pass rate; None for a prompt never tried."""
        if e.attempts == 0 and e.evidence == 0:
            return None
        a, b = self.posterior(e, version)
        return a / (a + b)

    def useful(self, e: LedgerEntry, group: int, version: int | None = None) -> float:
        """P(a group of `group` completions has reward variance) under the prompt's posterior."""
        return useful_probability(*self.posterior(e, version), group)

    def posteriors(self, entries: list[LedgerEntry], version: int | None) -> tuple[np.ndarray, np.ndarray]:
        """`posterior` of many prompts at once: a [N], b [N]."""
        n = len(entries)
        succ = np.fromiter((e.evidence_successes for e in entries), float, n)
        fail = np.fromiter((e.evidence_failures for e in entries), float, n)
        seen = np.fromiter((e.policy_version for e in entries), float, n)
        m = np.fromiter((self.prior(e.domain, e.difficulty) for e in entries), float, n)
        f = np.where(seen >= 0, 0.5 ** (np.maximum(0.0, version - seen) / self.half_life), 1.0) \
            if self.half_life > 0 and version is not None else 1.0
        return self.prior_strength * m + f * succ, self.prior_strength * (1 - m) + f * fail

    # --- recording -----------------------------------------------------------------------------

    def _pool(self, key: str, attempts: int, successes: int, version: int) -> None:
        s, n, v = self.pools.get(key, (0.0, 0.0, version))
        f = self.discount(version - v)
        self._priors.clear()
        self.pools[key] = [f * s + successes, f * n + attempts, max(v, version)]

    def _band(self, e: LedgerEntry) -> str:
        new = self.band_of(self.mean(e))
        if new in PARKED and new != e.band and e.evidence < self.min_evidence:
            return "learnable"  # not enough evidence to set it aside
        return new

    def record(self, prompt_id: str, domain: str, attempts: int, successes: int, step: int, version: int) -> tuple[str, str]:
        """Add one observation of a prompt; returns its (old band, new band)."""
        self.add(prompt_id, domain)
        e = self.entries[prompt_id]
        old, first = e.band, e.attempts == 0
        f = self.discount(version - e.policy_version) if e.policy_version >= 0 else 1.0
        if 0 < successes < attempts:  # a group with reward variance: the update trains on this prompt
            f *= self.decay
        e.attempts += attempts
        e.successes += successes
        e.evidence_successes = f * e.evidence_successes + successes
        e.evidence_failures = f * e.evidence_failures + (attempts - successes)
        e.last_step, e.policy_version = step, max(version, e.policy_version)
        self._pool(domain, attempts, successes, version)
        if first:
            self._pool(f"first:{domain}", attempts, successes, version)
            self._pool(f"first:{domain}/{e.difficulty}", attempts, successes, version)
        e.domain_rate = self.domain_rate(domain)
        e.band = self._band(e)
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
        cols["pass_rate"] = [self.mean(e) for e in self.entries.values()]
        kinds = {"int": pa.int64(), "float": pa.float64(), "str": pa.string()}
        schema = pa.schema([(f.name, kinds[f.type]) for f in fields(LedgerEntry)] + [("pass_rate", pa.float64())])
        meta = {CONFIG_KEY: json.dumps({**self.config(), "format": FORMAT}).encode(),
                PRIORS_KEY: json.dumps(self.pools).encode()}
        if state is not None:
            meta[STATE_KEY] = json.dumps(state).encode()
        return pa.table({n: cols[n] for n in schema.names}, schema=schema.with_metadata(meta))

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
        """The ledger and the state saved with it (None if none was); a format-1 ledger is migrated."""
        import pyarrow.parquet as pq

        table = pq.read_table(ledger_path(path))
        meta = table.schema.metadata or {}
        config = json.loads(meta[CONFIG_KEY])
        if config.pop("format", 1) == 1:
            ledger = migrate(table.to_pylist(), config)
        else:
            ledger = cls(**config)
            names = [f.name for f in fields(LedgerEntry)]
            for row in table.select(names).to_pylist():
                ledger.entries[row["prompt_id"]] = LedgerEntry(**row)
            ledger.pools = json.loads(meta[PRIORS_KEY])
        state = json.loads(meta[STATE_KEY]) if STATE_KEY in meta else None
        return ledger, state

    def rows(self) -> list[dict[str, Any]]:
        return [{**asdict(e), "pass_rate": self.mean(e)} for e in self.entries.values()]


def migrate(rows: list[dict[str, Any]], config: dict[str, float]) -> Ledger:
    """A ledger from format-1 rows (recent_attempts/recent_successes, decayed per observation): the
    recent counts become the evidence, the bands stay, the pools are rebuilt from the evidence."""
    ledger = Ledger(config["too_hard_max"], config["solved_min"], decay=config["decay"])
    for row in rows:
        e = LedgerEntry(row["prompt_id"], row["domain"], -1, row["attempts"], row["successes"],
                        row["recent_successes"], row["recent_attempts"] - row["recent_successes"],
                        row["last_step"], row["policy_version"], row["band"])
        ledger.entries[e.prompt_id] = e
        if e.evidence > 0:
            pool = ledger.pools.setdefault(e.domain, [0.0, 0.0, e.policy_version])
            pool[0], pool[1], pool[2] = pool[0] + e.evidence_successes, pool[1] + e.evidence, max(pool[2], e.policy_version)
    for e in ledger.entries.values():
        e.domain_rate = ledger.domain_rate(e.domain)
    return ledger


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
