"""Pass-rate ledger: decayed pass rate, bands, Parquet persistence, export, and exact resume."""

from __future__ import annotations

import csv
import json
import random
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from data_mining.ledger import Ledger, export
from data_mining.miner import Miner
from data_mining.sampler import EpochSampler
from rl.config import MiningConfig
from tests.data_mining.scripted import GROUP, PER_STEP, ScriptedPolicy, pool, run

ROOT = Path(__file__).resolve().parents[2]


def test_decayed_pass_rate_and_bands():
    ledger = Ledger(too_hard_max=0.1, solved_min=0.9, decay=0.5)
    ledger.add("a", "math")
    assert ledger.entries["a"].band == "unseen" and ledger.entries["a"].pass_rate is None
    assert ledger.record("a", "math", 8, 0, step=0, version=0) == ("unseen", "too_hard")
    # recent = 0.5 * (0 of 8) + (8 of 8): 8 / 12
    assert ledger.record("a", "math", 8, 8, step=3, version=2) == ("too_hard", "learnable")
    e = ledger.entries["a"]
    assert (e.attempts, e.successes, e.recent_attempts, e.recent_successes) == (16, 8, 12.0, 8.0)
    assert e.pass_rate == pytest.approx(8 / 12) and (e.last_step, e.policy_version) == (3, 2)
    ledger.record("a", "math", 8, 8, step=4, version=3)  # (4 + 8) / (6 + 8) = 6/7 < 0.9
    assert ledger.entries["a"].band == "learnable"
    ledger.record("a", "math", 8, 8, step=5, version=4)  # (6 + 8) / (7 + 8) = 14/15 >= 0.9
    assert ledger.entries["a"].band == "solved"
    assert ledger.band_counts()[("solved", "math")] == 1 and ledger.band_counts()[("unseen", "math")] == 0


def test_save_load_is_exact_and_readable_as_parquet(tmp_path):
    ledger = Ledger(decay=0.3)
    rng = random.Random(0)
    for i in range(50):
        for step in range(rng.randint(0, 4)):
            ledger.record(f"p{i}", "math" if i % 2 else "code", 7, rng.randint(0, 7), step, step)
        ledger.add(f"p{i}", "math" if i % 2 else "code")
    path = ledger.save(tmp_path, state={"x": [1.1, 2]})
    assert path == tmp_path / "ledger.parquet"
    loaded, state = Ledger.load(tmp_path)
    assert loaded.entries == ledger.entries and list(loaded.entries) == list(ledger.entries)
    assert (loaded.too_hard_max, loaded.solved_min, loaded.decay) == (0.1, 0.9, 0.3)
    assert state == {"x": [1.1, 2]}
    table = pq.read_table(path)  # what rl.report reads: prompt_id, domain, band, pass_rate
    assert {"prompt_id", "domain", "band", "pass_rate"} <= set(table.column_names)


def test_resume_restores_ledger_and_sampler_bit_for_bit(tmp_path):
    rows, truth = pool(20)
    cfg = MiningConfig(enabled=True, remine_every=3, remine_prompts=5)
    miner = Miner(rows, cfg, PER_STEP, GROUP, seed=4)
    run(miner, ScriptedPolicy(truth, 4), 7)
    miner.save(tmp_path / "checkpoint-7")

    resumed = Miner(rows, cfg, PER_STEP, GROUP, seed=99)  # a different seed: everything comes from the file
    resumed.load(tmp_path / "checkpoint-7")
    assert resumed.ledger.entries == miner.ledger.entries
    assert resumed.state() == miner.state()
    assert resumed.rng.getstate() == miner.rng.getstate()
    # Both continue identically: same draws, same ledger.
    a = run(miner, ScriptedPolicy(truth, 5), 5, start=7)
    b = run(resumed, ScriptedPolicy(truth, 5), 5, start=7)
    assert [[s.prompt_id for s in x] for x in a] == [[s.prompt_id for s in x] for x in b]
    assert resumed.ledger.entries == miner.ledger.entries


def test_epoch_sampler_state_round_trip_through_json():
    rows = [{"id": str(i)} for i in range(13)]
    sampler = EpochSampler(rows, seed=1)
    sampler.next(20)
    state = json.loads(json.dumps(sampler.state()))
    other = EpochSampler(rows, seed=2)
    other.load_state(state)
    assert other.state() == sampler.state()
    assert [r["id"] for r in other.next(30)] == [r["id"] for r in sampler.next(30)]


def test_baseline_sampler_state_is_saved_with_the_ledger(tmp_path):
    rows, truth = pool(5)
    miner = Miner(rows, MiningConfig(enabled=False), 4, GROUP, seed=0)
    run(miner, ScriptedPolicy(truth), 3)
    miner.save(tmp_path)
    resumed = Miner(rows, MiningConfig(enabled=False), 4, GROUP, seed=0)
    resumed.load(tmp_path)
    assert resumed.sampler.state() == miner.sampler.state()
    assert [r["id"] for r in resumed.sampler.next(9)] == [r["id"] for r in miner.sampler.next(9)]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_export_formats(tmp_path, suffix):
    ledger = Ledger()
    ledger.record("a", "math", 4, 2, 1, 1)
    ledger.add("b", "code")
    ledger.save(tmp_path)
    out = export(tmp_path, tmp_path / f"out{suffix}")
    if suffix == ".csv":
        rows = list(csv.DictReader(out.open()))
        assert [(r["prompt_id"], r["band"], r["pass_rate"]) for r in rows] == [("a", "learnable", "0.5"), ("b", "unseen", "")]
    elif suffix == ".jsonl":
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert rows[0]["attempts"] == 4 and rows[1]["pass_rate"] is None
    else:
        assert pq.read_table(out).column("band").to_pylist() == ["learnable", "unseen"]


def test_export_cli(tmp_path):
    ledger = Ledger()
    ledger.record("a", "math", 4, 4, 1, 1)
    ledger.save(tmp_path)
    done = subprocess.run([sys.executable, "-m", "data_mining.ledger", "export", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "1 prompts (unseen 0, learnable 0, too_hard 0, solved 1)" in done.stdout
    assert (tmp_path / "ledger.csv").exists()
    missing = subprocess.run([sys.executable, "-m", "data_mining.ledger", "export", str(tmp_path / "none")],
                             cwd=ROOT, capture_output=True, text=True)
    assert missing.returncode == 1 and "no pass-rate ledger" in missing.stderr


def test_a_sample_with_a_non_finite_reward_never_counts_as_a_pass():
    from rl.types import Sample

    def sample(reward):
        s = Sample("p", "math", "q", [1], completion="x", policy_version=0)
        s.reward, s.passed = reward, True
        return s

    ledger = Ledger()
    ledger.record_samples([sample(float("inf")), sample(float("nan")), sample(1.0), sample(1.0)], step=0)
    assert (ledger.entries["p"].attempts, ledger.entries["p"].successes) == (4, 2)
