"""Pass-rate ledger: decayed pass rate, bands, Parquet persistence, export, and exact resume."""

from __future__ import annotations

import csv
import json
import math
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_mining.ledger import Ledger, export, useful_probability
from data_mining.miner import Miner
from data_mining.sampler import EpochSampler
from rl.config import MiningConfig
from tests.data_mining.scripted import GROUP, PER_STEP, ScriptedPolicy, pool, run

ROOT = Path(__file__).resolve().parents[2]


def test_posterior_update_discount_and_bands():
    ledger = Ledger(too_hard_max=0.1, solved_min=0.9, half_life=10, prior_strength=2, min_evidence=12)
    ledger.add("a", "math")
    assert ledger.entries["a"].band == "unseen" and ledger.mean(ledger.entries["a"]) is None
    assert ledger.posterior(ledger.entries["a"]) == (1.0, 1.0)  # a domain never seen: Beta(1, 1)
    # One uniform group of 8 is not enough evidence to park a prompt.
    assert ledger.record("a", "math", 8, 0, step=0, version=0) == ("unseen", "learnable")
    e = ledger.entries["a"]
    m = ledger.prior("math")
    assert m == pytest.approx(1 / 10)  # the domain's pool: 0 of 8, Laplace-smoothed
    assert ledger.posterior(e) == pytest.approx((2 * m, 2 * (1 - m) + 8))
    # Ten versions later the first group weighs half: 4 + 8 = 12 failures of evidence, enough to park.
    assert ledger.record("a", "math", 8, 0, step=5, version=10) == ("learnable", "too_hard")
    assert (e.attempts, e.successes, e.evidence_successes, e.evidence_failures) == (16, 0, 0.0, 12.0)
    assert (e.last_step, e.policy_version) == (5, 10)
    # Read at a later version the evidence fades: the posterior widens toward the prior.
    assert ledger.posterior(e, version=20)[1] == pytest.approx(2 * (1 - ledger.prior("math")) + 6.0)
    # A group with variance brings it back at once (no evidence needed to un-park).
    assert ledger.record("a", "math", 8, 4, step=6, version=10)[1] == "learnable"
    # Thirty versions on, the old failures weigh 1/8: passes now park it as solved.
    for step in range(7, 12):
        ledger.record("a", "math", 8, 8, step=step, version=40)
    assert ledger.entries["a"].band == "solved" and ledger.entries["a"].evidence_failures < 4
    assert ledger.band_counts()[("solved", "math")] == 1 and ledger.band_counts()[("unseen", "math")] == 0


def test_decay_discounts_evidence_at_the_groups_the_update_trains_on_only():
    ledger = Ledger(too_hard_max=0.1, solved_min=0.9, half_life=0, prior_strength=2, min_evidence=12, decay=0.5)
    ledger.record("a", "math", 8, 4, step=0, version=0)
    e = ledger.entries["a"]
    # A second group with variance: the policy trained on the first, whose evidence now weighs half.
    ledger.record("a", "math", 8, 6, step=1, version=1)
    assert (e.evidence_successes, e.evidence_failures) == (2 + 6, 2 + 2)
    # Uniform groups leave the policy where it was on this prompt: they keep everything and add up,
    # so a prompt that has become solved is parked once there is enough evidence.
    assert ledger.record("a", "math", 8, 8, step=2, version=2) == ("learnable", "learnable")
    assert (e.evidence_successes, e.evidence_failures) == (16, 4)
    for step in range(3, 7):  # the 4 failures left never fade (half_life 0): 48 passes outweigh them
        ledger.record("a", "math", 8, 8, step=step, version=step)
    assert (e.evidence_successes, e.evidence_failures) == (48, 4) and e.band == "solved"


def test_prior_comes_from_the_domain_and_its_difficulty_level():
    ledger = Ledger(min_evidence=8)
    for i in range(4):
        ledger.add(f"easy{i}", "math", 1)
        ledger.add(f"hard{i}", "math", 3)
        ledger.record(f"easy{i}", "math", 8, 7, 0, 0)
        ledger.record(f"hard{i}", "math", 8, 1, 0, 0)
    ledger.add("new_easy", "math", 1)
    ledger.add("new_mid", "math", 2)  # a level without evidence: the domain's rate
    ledger.add("code", "code")
    assert ledger.prior("math", 1) == pytest.approx(29 / 34) and ledger.prior("math", 3) == pytest.approx(5 / 34)
    assert ledger.prior("math", 2) == pytest.approx(33 / 66) and ledger.prior("code") == 0.5
    a, b = ledger.posterior(ledger.entries["new_easy"])
    assert a / (a + b) == pytest.approx(29 / 34) and a + b == pytest.approx(2.0)


def beta_binomial_uniform(a: float, b: float, g: int) -> float:
    """P(all pass) + P(all fail) by the Beta-Binomial pmf: C(g, k) B(k + a, g - k + b) / B(a, b) at k = 0, g."""
    log_beta = lambda x, y: math.lgamma(x) + math.lgamma(y) - math.lgamma(x + y)  # noqa: E731
    return sum(math.exp(log_beta(k + a, g - k + b) - log_beta(a, b)) for k in (0, g))


@pytest.mark.parametrize("a,b,g", [(1.0, 1.0, 8), (0.3, 5.0, 8), (12.0, 2.5, 4), (2.0, 2.0, 1), (50.0, 49.0, 16)])
def test_useful_probability_closed_form(a, b, g):
    p = useful_probability(a, b, g)
    assert p == pytest.approx(1 - beta_binomial_uniform(a, b, g), rel=1e-9)
    rng = np.random.default_rng(0)
    rates = rng.beta(a, b, 200_000)
    passes = rng.binomial(g, rates)
    monte_carlo = np.mean((passes > 0) & (passes < g))
    assert p == pytest.approx(monte_carlo, abs=4e-3)
    if g == 1:
        assert p == 0.0  # a group of one never has variance
    assert useful_probability(1.0, 1.0, 8) == pytest.approx(1 - 2 / 9)  # E[p^G] = 1 / (G + 1) for Beta(1, 1)


def test_usefulness_favours_the_middle_and_uncertainty_but_never_zero():
    weight = lambda a, b: useful_probability(a, b, 8)  # noqa: E731
    assert weight(16, 16) > weight(4, 28) > weight(1, 40) > 0
    assert weight(1, 40) > weight(0.1, 400) > 0
    assert weight(2, 2) < weight(16, 16)  # both centred; the sure one is likelier to split a group
    assert weight(1, 1) > 4 * weight(1, 40)  # never tried: explored before a prompt surely near 0


def test_save_load_is_exact_and_readable_as_parquet(tmp_path):
    ledger = Ledger(half_life=7.0)
    rng = random.Random(0)
    for i in range(50):
        for step in range(rng.randint(0, 4)):
            ledger.record(f"p{i}", "math" if i % 2 else "code", 7, rng.randint(0, 7), step, step)
        ledger.add(f"p{i}", "math" if i % 2 else "code", i % 3)
    path = ledger.save(tmp_path, state={"x": [1.1, 2]})
    assert path == tmp_path / "ledger.parquet"
    loaded, state = Ledger.load(tmp_path)
    assert loaded.entries == ledger.entries and list(loaded.entries) == list(ledger.entries)
    assert loaded.config() == ledger.config() and loaded.pools == ledger.pools
    assert state == {"x": [1.1, 2]}
    table = pq.read_table(path)  # what rl.report reads: prompt_id, domain, band, pass_rate
    assert {"prompt_id", "domain", "band", "pass_rate"} <= set(table.column_names)


def test_resume_restores_ledger_and_sampler_bit_for_bit(tmp_path):
    rows, truth = pool(20)
    cfg = MiningConfig(enabled=True, remine_after_versions=3)
    miner = Miner(rows, cfg, PER_STEP, GROUP, seed=4)
    run(miner, ScriptedPolicy(truth, 4), 7, moving=True)
    miner.save(tmp_path / "checkpoint-7")

    resumed = Miner(rows, cfg, PER_STEP, GROUP, seed=99)  # a different seed: everything comes from the file
    resumed.load(tmp_path / "checkpoint-7")
    assert resumed.ledger.entries == miner.ledger.entries
    assert resumed.state() == miner.state()
    assert resumed.rng.getstate() == miner.rng.getstate()
    # Both continue identically: same draws, same ledger.
    a = run(miner, ScriptedPolicy(truth, 5), 5, start=7, moving=True)
    b = run(resumed, ScriptedPolicy(truth, 5), 5, start=7, moving=True)
    assert [[s.prompt_id for s in x] for x in a] == [[s.prompt_id for s in x] for x in b]
    assert resumed.ledger.entries == miner.ledger.entries


def test_a_ledger_written_before_the_posterior_loads(tmp_path):
    """Format 1 (a decayed recent pass rate per prompt, `mining.decay`): the recent counts become the
    evidence, the bands stay, and a miner resumes from it and draws."""
    rows, truth = pool(4)
    old = [{"prompt_id": r["id"], "domain": "math", "attempts": 16, "successes": int(16 * truth[r["id"]]),
            "recent_attempts": 12.0, "recent_successes": 12.0 * truth[r["id"]], "last_step": 3, "policy_version": 3,
            "band": {1.0: "solved", 0.0: "too_hard"}.get(truth[r["id"]], "learnable"), "pass_rate": truth[r["id"]]}
           for r in rows]
    state = {"rng": [3, list(random.Random(1).getstate()[1]), None], "sampler": {"order": [], "epoch": 0,
             "rng": [3, list(random.Random(2).getstate()[1]), None]}, "keep_rate": 0.6, "totals": {"rollouts": 96}}
    meta = {b"data_mining.config": json.dumps({"too_hard_max": 0.1, "solved_min": 0.9, "decay": 0.5}).encode(),
            b"data_mining.state": json.dumps(state).encode()}
    table = pa.Table.from_pylist(old)
    pq.write_table(table.replace_schema_metadata(meta), tmp_path / "ledger.parquet")

    ledger, loaded_state = Ledger.load(tmp_path)
    e = ledger.entries["learnable:0"]
    assert (e.attempts, e.evidence_successes, e.evidence_failures, e.band) == (16, 6.0, 6.0, "learnable")
    assert ledger.entries["solved:1"].band == "solved" and ledger.entries["impossible:2"].band == "too_hard"
    assert ledger.prior("math") == pytest.approx((4 * 12 + 4 * 6 + 1) / (12 * 12 + 2))
    assert ledger.mean(ledger.entries["impossible:0"]) < 0.1 < 0.9 < ledger.mean(ledger.entries["solved:0"])
    assert loaded_state == state
    miner = Miner(rows, MiningConfig(enabled=True), PER_STEP, GROUP)
    miner.load(tmp_path)
    assert miner.keep_rate == 0.6 and miner.totals["rollouts"] == 96 and miner.version == 0
    assert miner.next_batch(4, ScriptedPolicy(truth)).generated
    miner.save(tmp_path / "again")
    assert Ledger.load(tmp_path / "again")[0].entries["learnable:0"].evidence_failures >= 6.0


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
    ledger.record("a", "math", 16, 16, 1, 1)
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


@pytest.mark.parametrize("prior_pass", [0.02, 0.3])
def test_with_the_default_config_a_prompt_always_solved_is_parked_whatever_its_prior(prior_pass):
    """Evidence that keeps coming must be able to outweigh the prior: with the default settings, a
    prompt solved by every completion of group after group ends up solved (and drawn rarely), even
    in a domain whose fresh prompts are nearly never solved."""
    from rl.config import MiningConfig

    cfg = MiningConfig()
    ledger = Ledger(cfg.too_hard_max, cfg.solved_min, cfg.evidence_half_life, cfg.prior_strength,
                    cfg.park_min_evidence, cfg.decay)
    for i in range(200):  # the domain's fresh prompts: a pass rate of `prior_pass`
        ledger.record(f"fresh{i}", "math", 8, round(8 * prior_pass) if i % 2 else 0, step=0, version=0)
    for version in range(1, 40):
        ledger.record("easy", "math", 8, 8, step=version, version=version)
    e = ledger.entries["easy"]
    assert e.band == "solved", (ledger.mean(e), ledger.posterior(e))
    assert ledger.useful(e, 8) < 0.35  # a group of 8 with variance is now unlikely under the posterior


def test_thompson_pick_exploits_the_known_middle_and_explores_the_uncertain():
    from data_mining.ledger import thompson_pick

    # A prompt known to pass half the time, one known to fail, one never tried (a flat prior).
    a, b = np.array([40.0, 0.2, 1.0]), np.array([40.0, 40.0, 1.0])
    firsts = [thompson_pick(a, b, np.ones(3), 8, 1, seed)[0] for seed in range(400)]
    assert firsts.count(0) > 0.8 * len(firsts)  # the known middle nearly always wins
    assert 0 < firsts.count(2) < 0.2 * len(firsts)  # the uncertain one now and then
    assert firsts.count(1) == 0  # the known failure (a group of 8 would hardly vary) in none of 400
    assert thompson_pick(a, b, np.ones(3), 8, 3, 7) == thompson_pick(a, b, np.ones(3), 8, 3, 7)  # seeded
    assert sorted(thompson_pick(a, b, np.ones(3), 8, 5, 0)) == [0, 1, 2]  # k past the pool: all of it
    assert thompson_pick(a, b, np.array([0.0, 1.0, 1.0]), 8, 1, 0) != [0]  # a zero factor never wins
    assert thompson_pick(a, b, np.ones(3), 8, 0, 0) == [] and thompson_pick(a[:0], b[:0], a[:0], 8, 2, 0) == []
