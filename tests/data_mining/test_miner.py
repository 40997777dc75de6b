"""Hard-example mining with a scripted policy: each prompt passes with a fixed probability."""

from __future__ import annotations

import csv
import math
from dataclasses import replace

import pytest

from data_mining.ledger import Ledger, export
from data_mining.miner import Miner, apportion, draw_size, overdue, remine_count
from rl.config import MiningConfig
from rl.types import Sample
from tests.data_mining.scripted import GROUP, PER_STEP, ScriptedPolicy, pool, run

def variance_share(batches: list[list[Sample]]) -> float:
    """Share of the groups used for updates whose rewards are not all equal."""
    groups = [{s.reward for s in batch if s.prompt_id == pid} for batch in batches for pid in {s.prompt_id for s in batch}]
    return sum(len(g) > 1 for g in groups) / len(groups)


def test_mining_trains_on_learnable_groups_and_bands_the_thirds(tmp_path):
    rows, truth = pool()
    on = Miner(rows, MiningConfig(enabled=True), PER_STEP, GROUP, seed=0)
    on_batches = run(on, ScriptedPolicy(truth), 40)
    # Plain epochs without the zero-variance filter: what the update sees without mining.
    off = Miner(rows, MiningConfig(enabled=False), PER_STEP, GROUP, seed=0, drop_zero_variance=False)
    off_batches = run(off, ScriptedPolicy(truth), 40)

    assert variance_share(on_batches) >= 0.9
    assert 0.25 <= variance_share(off_batches) <= 0.42
    assert all(len({s.prompt_id for s in b}) >= PER_STEP for b in on_batches)

    on.save(tmp_path)
    out = export(tmp_path, tmp_path / "ledger.csv")
    with out.open() as f:
        table = {r["prompt_id"]: r for r in csv.DictReader(f)}
    assert len(table) == len(rows)
    # Once a group shows a prompt solved or out of reach, its posterior says so and the draws go to
    # the learnable third; a second uniform group (park_min_evidence) parks it when one comes.
    seen = {pid: float(r["pass_rate"]) for pid, r in table.items() if r["band"] != "unseen"}
    assert len(seen) >= 85
    assert all(rate >= 0.8 for pid, rate in seen.items() if pid.startswith("solved"))
    assert all(rate <= 0.2 for pid, rate in seen.items() if pid.startswith("impossible"))
    assert all(table[pid]["band"] in ("learnable", "solved" if pid.startswith("solved") else "too_hard")
               for pid in seen if not pid.startswith("learnable"))
    # A p = 0.5 prompt can draw 8 passes of 8 by chance (2/256 per group) and be parked until re-mined.
    assert sum(table[f"learnable:{i}"]["band"] == "learnable" for i in range(30)) >= 28
    late = [s.prompt_id for b in on_batches[-10:] for s in b]
    assert sum(p.startswith("learnable") for p in late) >= 0.95 * len(late)


def test_ledger_alone_keeps_the_batch_learnable_and_rollouts_cheap():
    """Without the zero-variance filter the ledger's bands do the work once every prompt was seen;
    and with the filter, a useful group costs about one group of rollouts instead of three."""
    rows, truth = pool()
    miner = Miner(rows, MiningConfig(enabled=True, remine_after_versions=0), PER_STEP, GROUP, seed=1, drop_zero_variance=False)
    run(miner, ScriptedPolicy(truth, 1), 25)  # first sight of (nearly) every prompt
    assert sum(e.band == "unseen" for e in miner.ledger.entries.values()) <= 2
    assert variance_share(run(miner, ScriptedPolicy(truth, 2), 20, start=25)) >= 0.95

    costs = {}
    for enabled in (True, False):
        m = Miner(rows, MiningConfig(enabled=enabled, remine_after_versions=0), PER_STEP, GROUP, seed=3)
        policy = ScriptedPolicy(truth, 3)
        batches = run(m, policy, 60)
        costs[enabled] = policy.rollouts / sum(len({s.prompt_id for s in b}) for b in batches)
    assert costs[True] < 1.5 * GROUP and costs[False] > 2.5 * GROUP


def test_short_batch_trains_on_what_it_has_and_records_it():
    rows, truth = pool(10)
    truth = {pid: (0.0 if p == 0.5 else p) for pid, p in truth.items()}  # nothing is learnable
    miner = Miner(rows, MiningConfig(enabled=True, overdraw_budget=2.0, remine_after_versions=0), PER_STEP, GROUP)
    drawn = miner.next_batch(0, ScriptedPolicy(truth))
    assert drawn.train == []
    assert drawn.metrics["mining/short_batch"] == 1.0
    assert drawn.metrics["mining/prompts_drawn"] <= 2 * PER_STEP
    assert drawn.metrics["filter/groups/all_passed"] + drawn.metrics["filter/groups/all_same_reward"] == len(
        {s.prompt_id for s in drawn.generated})
    assert "mining/rollouts_per_useful_group" not in drawn.metrics
    # Once every prompt is parked the miner re-tries the stalest ones rather than stop.
    for step in range(1, 6):
        assert miner.next_batch(step, ScriptedPolicy(truth)).generated


def test_remining_follows_the_policy_moving():
    """Parked prompts come back once the policy has moved on from their evidence, not before."""
    rows, truth = pool(10)
    cfg = MiningConfig(enabled=True, remine_after_versions=20, remine_drift=1.0, remine_min_share=0.5,
                       remine_max_share=1.0)
    miner = Miner(rows, cfg, PER_STEP, GROUP)
    policy = ScriptedPolicy(truth)
    for step in range(8):
        policy.version = step
        metrics = miner.next_batch(step, policy).metrics
        assert metrics["mining/remined_prompts"] == 0  # nothing parked is older than 20 versions yet
    assert miner.ledger.entries["impossible:0"].band == "too_hard"
    parked = sum(e.band == "too_hard" for e in miner.ledger.entries.values())
    better = ScriptedPolicy({pid: (0.5 if pid.startswith("impossible") else p) for pid, p in truth.items()}, version=40)
    miner.next_batch(8, better)  # the miner learns the policy's version from the groups it scores
    batch = miner.next_batch(9, better)
    metrics = batch.metrics
    assert 4 <= metrics["mining/remined_prompts"] <= PER_STEP  # share 0.5..1 of 8 groups of 8 rollouts
    assert metrics["mining/remine_rollouts"] == GROUP * metrics["mining/remined_prompts"]
    assert metrics["mining/moves/too_hard_to_learnable"] >= 1
    # A re-estimate of samples_per_prompt completions with reward variance trains like any group.
    remined_in_batch = {s.prompt_id for s in batch.train} - {s.prompt_id for s in batch.generated}
    assert len(remined_in_batch) == metrics["mining/remine_useful_groups"] >= 1
    assert all(p.startswith("impossible") for p in remined_in_batch)
    assert metrics["mining/useful_groups"] >= PER_STEP
    for step in range(10, 20):
        better.version = 40 + step
        miner.next_batch(step, better)
    assert sum(e.band == "too_hard" for e in miner.ledger.entries.values()) < parked / 3


def test_remine_count_grows_as_the_learnable_pool_shrinks():
    cfg = MiningConfig(remine_min_share=0.1, remine_max_share=0.5, estimate_samples=8)
    counts = [remine_count(open_, reserve=100, step_rollouts=256, cfg=cfg) for open_ in (200, 100, 50, 0)]
    assert counts == [round(0.1 * 32), round(0.1 * 32), round(0.3 * 32), round(0.5 * 32)]
    assert remine_count(0, 100, 256, replace(cfg, remine_after_versions=0)) == 0


def test_overdue_orders_parked_prompts_by_policy_movement():
    cfg = MiningConfig(remine_after_versions=10, remine_drift=0.2, park_min_evidence=8)
    ledger = Ledger(0.1, 0.9, min_evidence=8)
    for pid, version in (("old", 0), ("mid", 5), ("new", 18)):
        ledger.add(pid, "math")
        ledger.record(pid, "math", 8, 0, step=version, version=version)
    ledger.record("open", "code", 8, 4, step=0, version=0)  # learnable: never re-mined
    assert [ledger.entries[p].band for p in ("old", "mid", "new")] == ["too_hard"] * 3
    assert overdue(ledger, ["new", "mid", "old", "open"], 20, cfg) == ["old", "mid"]  # 2.0 and 1.5; new: 0.2
    # The domain's pass rate moving by remine_drift makes even fresh evidence due.
    for i in range(6):
        ledger.record(f"easy{i}", "math", 8, 8, step=18, version=18)
    assert ledger.domain_rate("math") - ledger.entries["new"].domain_rate >= 0.2
    assert overdue(ledger, ["new", "mid", "old"], 20, cfg)[-1] == "new"
    assert overdue(ledger, ["old"], 20, replace(cfg, remine_after_versions=0)) == []


def test_band_metrics_per_domain_and_domain_floor():
    rows, truth = pool(10)
    code = [{**r, "id": "c" + r["id"], "domain": "code"} for r in rows if r["id"].startswith("solved")]
    truth.update({r["id"]: 1.0 for r in code})
    cfg = MiningConfig(enabled=True, domain_floor=0.2, remine_after_versions=0)
    miner = Miner(rows + code, cfg, PER_STEP, GROUP)
    first = miner.domain_shares()
    assert first["code"] > 0.2 and first["math"] > 0.2  # all unseen: both have prompts to learn
    run(miner, ScriptedPolicy(truth), 10)
    m = miner.next_batch(10, ScriptedPolicy(truth)).metrics
    code_rates = [miner.ledger.mean(miner.ledger.entries[r["id"]]) for r in code]
    assert all(rate is None or rate >= 0.85 for rate in code_rates) and any(code_rates)
    assert m["mining/band/solved/code"] + m["mining/band/learnable/code"] + m["mining/band/unseen/code"] == 10
    assert m["mining/band/learnable/math"] + m["mining/band/unseen/math"] > 0
    # All of code is solved: no group of it is expected to vary, so math gets every draw ...
    assert m["mining/quota/code"] == 0.0 and m["mining/quota/math"] == 1.0
    # ... while its share as a domain (what sizes its refill reserve) falls to near the floor.
    assert 0.2 <= miner.domain_shares(skip_exhausted=False)["code"] < 0.25
    fixed = replace(miner.cfg, domain_mixing="fixed", domain_weights=("math=3", "code=1"))
    assert Miner(rows + code, fixed, PER_STEP, GROUP).domain_shares() == {"code": 0.25, "math": 0.75}


@pytest.mark.parametrize("need,keep", [(32, 0.5), (32, 0.8), (10, 0.3), (5, 0.9)])
def test_draw_size_fills_the_step_with_the_asked_probability(need, keep):
    def fills(n: int) -> float:  # P(Binomial(n, keep) >= need), exactly
        return sum(math.comb(n, i) * keep**i * (1 - keep) ** (n - i) for i in range(need, n + 1))

    assert draw_size(need, keep, 0.5) == math.ceil(need / keep)
    n = draw_size(need, keep, 0.9)
    assert n > math.ceil(need / keep) and fills(n) >= 0.88 and fills(n - 1) < 0.92  # about the least such n
    assert draw_size(need, keep, 0.99) > n
    assert draw_size(need, 1.0, 0.9) == need and draw_size(0, keep, 0.9) == 0


def test_apportion_follows_shares_and_caps():
    assert apportion(10, {"a": 0.5, "b": 0.5}, {"a": 100, "b": 100}) == {"a": 5, "b": 5}
    assert apportion(10, {"a": 0.9, "b": 0.1}, {"a": 3, "b": 100}) == {"a": 3, "b": 7}
    assert apportion(10, {"a": 1.0, "b": 0.0}, {"a": 4, "b": 100}) == {"a": 4, "b": 0}


def test_domain_quotas_count_the_prompts_in_flight():
    """Asynchronous training draws while earlier draws are still generating: the shares hold over
    what is in flight plus the new draw, and nothing in flight is drawn twice."""
    rows = [{"id": f"{d}:{i}", "domain": d, "prompt": f"{d}{i}", "reference": {}} for d in ("code", "math")
            for i in range(40)]
    cfg = MiningConfig(enabled=True, domain_mixing="fixed", domain_weights=("math=1", "code=1"))
    miner = Miner(rows, cfg, PER_STEP, GROUP, seed=0)
    assert [r["domain"] for r in miner.draw(8, set())].count("math") == 4  # nothing in flight: 4 + 4
    miner.in_flight = {f"math:{i}" for i in range(6)}
    drawn = miner.draw(8, set())
    # (6 in flight + 8 new) split 7 / 7: the new draw brings math to 7 and code to 7.
    assert [r["domain"] for r in drawn].count("math") == 1 and len(drawn) == 8
    assert not {r["id"] for r in drawn} & miner.in_flight
    miner.in_flight = {f"math:{i}" for i in range(12)}  # more in flight than math's share of it all
    drawn = miner.draw(8, set())
    assert [r["domain"] for r in drawn].count("code") == 8
