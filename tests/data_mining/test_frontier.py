"""Refill at the frontier: task generators with a difficulty knob, steered toward a pass rate of 0.5."""

from __future__ import annotations

from dataclasses import asdict, replace

import pytest

from data_mining.frontier import frontier_level, split_levels
from data_mining.miner import Miner
from data_mining.tasks import TaskGenerator, is_heldout, make_split
from rl.config import MiningConfig
from tests.data_mining.scripted import GROUP, PER_STEP, LevelPolicy, ScriptedPolicy, pool, run

CURVE = {1: 0.95, 2: 0.85, 3: 0.6, 4: 0.35, 5: 0.1, 6: 0.02}  # the pass rate crosses 0.5 at 3.4


def test_frontier_level_interpolates_the_crossing_and_explores_past_the_measured_levels():
    assert frontier_level({1: 0.9, 2: 0.7, 3: 0.3}, 1, 6, start=2) == pytest.approx(2.5)
    assert frontier_level({1: 0.9, 2: 0.8}, 1, 6, start=2) == 3  # all easy: one level harder
    assert frontier_level({3: 0.2, 4: 0.1}, 1, 6, start=4) == 2  # all hard: one level easier
    assert frontier_level({1: 0.9, 2: 0.8}, 1, 2, start=1) == 2  # never past the generator's levels
    assert frontier_level({}, 1, 6, start=2.5) == 2.5
    assert frontier_level({1: 0.3, 2: 0.6}, 1, 6, start=1) == 2  # rising with difficulty: nearest to 0.5


def test_split_levels_follows_the_fraction():
    assert split_levels(3.0, 10) == {3: 10}
    assert split_levels(3.25, 8) == {3: 6, 4: 2}
    assert sum(split_levels(1.7, 64).values()) == 64


def test_generator_makes_new_train_prompts_at_the_level_asked():
    train, _ = make_split(200, 20, max_digits=2)
    seen = {r.id for r in train}
    gen = TaskGenerator("arithmetic", seed=0, max_level=4)
    rows = gen.make(3, 50, seen)
    assert len(rows) == 50 and len({r.id for r in rows}) == 50
    assert all(r.difficulty == 3 and len(r.prompt.split("+")[0].split("-")[0]) == 3 for r in rows)
    assert not any(r.id in seen or is_heldout(r.id) for r in rows)
    assert gen.make(9, 1, seen)[0].difficulty == 4  # clamped to max_level
    again = TaskGenerator("arithmetic", seed=0, max_level=4)
    assert [r.id for r in again.make(3, 50, seen)] == [r.id for r in rows]
    state = gen.state()
    nxt = [r.id for r in gen.make(2, 5, seen)]
    again.load_state(state)
    assert [r.id for r in again.make(2, 5, seen)] == nxt
    # A finite family runs out: fewer rows, then none.
    code = TaskGenerator("code", seed=0, max_level=9)
    assert code.max_level == 3
    first = code.make(1, 1000, set(), max_misses=200)
    assert 0 < len(first) < 30 and code.make(1, 5, {r.id for r in first}, max_misses=200) == []


def test_an_exhausted_level_hands_its_share_of_a_refill_to_the_next_level_up():
    from data_mining.frontier import Frontier

    gen = TaskGenerator("arithmetic", seed=0, max_level=4)
    level_one = {r.id for r in gen.make(1, 10_000, set())}  # every one-digit prompt: level 1 is used up
    frontier = Frontier({"math": gen}, MiningConfig(refill_prompts=40))
    frontier.knobs["math"] = 1.25  # 30 prompts asked of level 1, 10 of level 2
    rows = frontier.refill("math", level_one)
    assert len(rows) == 40 and {r["difficulty"] for r in rows} == {2}
    assert len({r["id"] for r in rows}) == 40 and not {r["id"] for r in rows} & level_one
    assert "math" not in frontier.dry
    # Nothing new at or above the knob: the domain is dry and not asked again.
    small = TaskGenerator("code", seed=0, max_level=3)
    everything: set[str] = set()
    for level in (1, 2, 3):
        while made := small.make(level, 10_000, everything):
            everything.update(r.id for r in made)
    code = Frontier({"code": small}, MiningConfig(refill_prompts=8))
    code.knobs["code"] = 1.0
    assert code.refill("code", everything) == [] and "code" in code.dry


def level_miner(cfg: MiningConfig, seed: int = 0) -> Miner:
    """A small arithmetic pool at levels 1-2 (mostly solved by the LevelPolicy) with a generator up to 6."""
    train, _ = make_split(40, 4, seed=seed, max_digits=2)
    return Miner([asdict(r) for r in train], cfg, PER_STEP, GROUP, seed=seed,
                 generators={"math": TaskGenerator("arithmetic", seed, max_level=6)})


def test_frontier_controller_converges_to_the_difficulty_of_pass_rate_one_half():
    cfg = MiningConfig(enabled=True, refill_prompts=32, refill_max_difficulty=6, remine_after_versions=0)
    miner = level_miner(cfg)
    policy = LevelPolicy(CURVE, practice=0.1)  # practised prompts get solved: the pool must be refilled
    knobs, short = [], []
    for step in range(60):
        policy.version = step
        batch = miner.next_batch(step, policy)
        knobs.append(miner.frontier.knobs.get("math"))
        short.append(batch.metrics["mining/short_batch"])
    assert knobs[-1] == pytest.approx(3.4, abs=0.4)
    assert all(k == pytest.approx(3.4, abs=0.6) for k in knobs[-20:])
    generated = miner.frontier.generated
    assert len(generated) >= 64 and {r["difficulty"] for r in generated[-32:]} <= {3, 4}
    # A practised prompt is solved within a few visits, so the pool drains fast; a short step makes
    # the generator refill before the next one, which is full.
    assert sum(short) <= 6 and not any(a and b for a, b in zip(short, short[1:]))


def test_fixed_pool_reports_exhaustion_once(capsys):
    rows, truth = pool(10)
    truth = {pid: (1.0 if p == 0.5 else p) for pid, p in truth.items()}  # nothing left to learn
    miner = Miner(rows, MiningConfig(enabled=True, remine_after_versions=0), PER_STEP, GROUP)
    metrics = [miner.next_batch(step, ScriptedPolicy(truth)).metrics for step in range(12)]
    assert metrics[-1]["mining/exhausted/math"] == 1.0 and metrics[-1]["mining/refill/math"] == 0.0
    assert metrics[-1]["mining/supply/math"] < 4 * PER_STEP
    assert capsys.readouterr().err.count("warning: mining: domain 'math'") == 1


def test_resume_restores_ledger_generators_and_sampler_exactly(tmp_path):
    cfg = MiningConfig(enabled=True, refill_prompts=16, refill_max_difficulty=6, remine_after_versions=3)
    miner = level_miner(cfg)
    run(miner, LevelPolicy(CURVE, 1, practice=0.1), 12, moving=True)
    assert miner.frontier.generated  # the pool has grown
    miner.save(tmp_path)
    resumed = level_miner(cfg, seed=0)
    resumed.frontier.generators["math"] = TaskGenerator("arithmetic", 99, max_level=6)  # state comes from the file
    resumed.load(tmp_path)
    assert resumed.state() == miner.state() and resumed.ledger.entries == miner.ledger.entries
    assert resumed.rows == miner.rows and resumed.base_weight == miner.base_weight
    a = run(miner, LevelPolicy(CURVE, 2, practice=0.1), 12, start=12, moving=True)
    b = run(resumed, LevelPolicy(CURVE, 2, practice=0.1), 12, start=12, moving=True)
    assert [[s.prompt_id for s in x] for x in a] == [[s.prompt_id for s in x] for x in b]
    assert resumed.ledger.entries == miner.ledger.entries and resumed.state() == miner.state()
    assert len(miner.frontier.generated) > 16


def test_a_domain_whose_groups_rarely_vary_is_refilled():
    miner = level_miner(MiningConfig(enabled=True, refill_prompts=8, learnable_reserve=0.0))  # never short of supply
    assert "mining/refill/math" not in miner.refill()
    miner.domain_keep["math"] = 0.3  # of late, 30% of its drawn groups had reward variance
    # Its 40 unseen prompts are tried first: making more would only add to what is not yet tried.
    assert "mining/refill/math" not in miner.refill() and not miner.frontier.generated
    miner.record(LevelPolicy(CURVE)(list(miner.rows.values()), GROUP), step=0)  # every prompt tried once
    assert miner.refill()["mining/refill/math"] == 8 and len(miner.frontier.generated) == 8
    # The 8 new ones wait unseen now, a refill's worth: none more until they are tried.
    assert "mining/refill/math" not in miner.refill() and len(miner.frontier.generated) == 8
