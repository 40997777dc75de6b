"""Actor supervision (rl.supervise) on real Ray actors standing in for the engines, reward actors and
trainer: an engine or reward actor that dies or stalls mid-draw is replaced, gets the current
weights and the sampler state of the draw's start, and the draw comes out as it would have; a role
past run.max_restarts, or a dead trainer, ends the run. Real engines: tests/e2e/test_faults.py."""

from __future__ import annotations

import os
import time
from collections import Counter

import pytest

from rl.actors import Actors, generate_and_score, sync_weights, train
from rl.config import load_config
from rl.supervise import BASE_TIMEOUT_S, ActorLost, ActorStalled, Supervisor, Timeouts
from rl.types import Sample

N = 2


class FakeEngine:
    """Samples come from a counter (its "sampler state"): the same state gives the same completions."""

    def __init__(self, fail: str = "") -> None:
        self.fail, self.counter, self.version = fail, 0, 0

    def info(self):
        return {"pid": os.getpid()}

    def generate_scored(self, rows, reward_actors, *, n, **sampling):
        if self.fail == "die":
            os._exit(1)
        if self.fail == "stall":
            time.sleep(3600)
        samples = []
        for row in rows:
            for k in range(n):
                self.counter += 1
                samples.append(Sample(row["id"], "math", row["prompt"], [1], completion_ids=[self.counter],
                                      group_index=k, rollout_logprobs=[-1.0], policy_version=self.version,
                                      token_versions=[self.version]))
        if self.fail == "die_after":  # the process ends once the call has returned (its reward calls still run)
            import threading

            threading.Timer(0.3, os._exit, (1,)).start()
        return [(list(range(len(rows))), reward_actors[0].score.remote(samples))]

    def rng_state(self):
        return self.counter

    def restore(self, state, version):
        if state is not None:
            self.counter = state
        self.version = version

    def receive_weights(self, published, version):
        import ray

        ray.get(published[0])  # fetched as a real engine does
        self.version = version
        return {"bytes": 4.0, "fetch_seconds": 0.0, "load_seconds": 0.0}

    def held_version(self):
        return self.version


class FakeReward:
    def __init__(self, fail: str = "") -> None:
        self.fail = fail

    def info(self):
        return {}

    def score(self, samples):
        if self.fail == "die":
            os._exit(1)
        if self.fail == "slow":
            time.sleep(1.5)
        for s in samples:
            s.reward = float(s.completion_ids[0] % 2)
        return samples, {"reward/calls": 1.0}


class FakeTrainer:
    def __init__(self, fail: str = "") -> None:
        self.fail, self.version = fail, 3

    def state(self):
        return {"version": self.version}

    def shared_weights(self):
        return {"w": 1}

    def train_step(self, samples):
        if self.fail == "die":
            os._exit(1)
        self.version += 1
        return {"policy_version": float(self.version)}


def _rig(ray, fails: dict[str, list[str]], *overrides: str):
    """Actors with a supervisor whose `start` gives actor i of a role its next entry of `fails`
    (then healthy ones); returns (actors, started) where `started` counts starts per role."""
    cfg = load_config(None, ["rollout.max_staleness=0", "rollout.num_actors=2", "reward.num_actors=1", *overrides])
    classes = {"rollout": FakeEngine, "reward": FakeReward}
    started = {"rollout": 0, "reward": 0}

    def start(role):
        def make(i):
            queue = fails.get(f"{role}-{i}", [])
            fail = queue.pop(0) if queue else ""
            started[role] += 1
            return ray.remote(classes[role]).options(name=f"{role}-{i}", num_cpus=0).remote(fail)
        return make

    starters = {role: start(role) for role in classes}
    rollouts = [starters["rollout"](i) for i in range(2)]
    rewards = [starters["reward"](0)]
    trainer = ray.remote(FakeTrainer).options(num_cpus=0).remote(fails.get("trainer", [""])[0])
    ray.get([a.info.remote() for a in rollouts + rewards] + [trainer.state.remote()])  # started, as build_actors does
    actors = Actors(rollouts, rewards, trainer)
    actors.supervisor = Supervisor(cfg, actors, starters)
    return actors, started


def _kill(ray, actors):
    for a in [*actors.rollouts, *actors.rewards, *actors.trainers]:
        ray.kill(a)


ROWS = [{"id": f"p:{i}", "prompt": f"p{i}"} for i in range(6)]
SAMPLING = dict(n=N, temperature=1.0, top_p=1.0, max_new_tokens=4)


def _completions(samples):
    return [(s.prompt_id, s.completion_ids[0], s.reward) for s in samples]


@pytest.mark.parametrize("who", ["rollout-1", "reward-0"])
def test_an_actor_dying_mid_draw_is_replaced_and_the_draw_comes_out_as_it_would_have(ray_session, who):
    ray = ray_session
    healthy, _ = _rig(ray, {})
    expected = [_completions(generate_and_score(healthy, ROWS, **SAMPLING)[0]) for _ in range(2)]
    _kill(ray, healthy)

    actors, started = _rig(ray, {who: ["die"]})
    before = actors.rollouts[1] if who.startswith("rollout") else actors.rewards[0]
    got = [_completions(generate_and_score(actors, ROWS, **SAMPLING)[0]) for _ in range(2)]
    assert got == expected  # the redone draw sampled what the lost one would have; the next one goes on
    role = who.split("-")[0]
    assert actors.supervisor.restarts == {"rollout": int(role == "rollout"), "reward": int(role == "reward")}
    assert actors.supervisor.metrics()[f"fault/restarts/{role}"] == 1.0
    assert started[role] == 3 if role == "rollout" else started[role] == 2
    after = actors.rollouts[1] if role == "rollout" else actors.rewards[0]
    assert after._actor_id != before._actor_id and ray.get_actor(who)._actor_id == after._actor_id
    # Every engine holds the trainer's version (the replacement got the current weights).
    assert ray.get([e.held_version.remote() for e in actors.rollouts]) == [3, 3]
    _kill(ray, actors)


def test_an_engine_dying_after_its_call_returned_loses_the_reward_calls_it_owns_and_is_replaced(ray_session):
    ray = ray_session
    # Reward calls an engine makes are owned by it: once it dies their results cannot be fetched
    # (OwnerDiedError, which names no actor); the supervisor finds the dead engine by asking every actor.
    actors, _ = _rig(ray, {"rollout-0": ["die_after"], "reward-0": ["slow"]})
    samples, _ = generate_and_score(actors, ROWS, **SAMPLING)
    assert len(samples) == len(ROWS) * N and actors.supervisor.restarts == {"rollout": 1, "reward": 0}
    _kill(ray, actors)


def test_a_stalled_engine_is_killed_and_replaced(ray_session):
    ray = ray_session
    actors, _ = _rig(ray, {"rollout-0": ["stall"]}, "run.call_timeout_s=3")
    stalled = actors.rollouts[0]
    t0 = time.monotonic()
    samples, _ = generate_and_score(actors, ROWS, **SAMPLING)
    assert time.monotonic() - t0 < 60
    assert sorted({s.prompt_id for s in samples}) == sorted(r["id"] for r in ROWS) and len(samples) == len(ROWS) * N
    assert actors.supervisor.restarts["rollout"] == 1
    with pytest.raises(ray.exceptions.RayActorError):  # the stalled one was killed
        ray.get(stalled.info.remote(), timeout=30)
    _kill(ray, actors)


def test_a_role_past_max_restarts_ends_the_run(ray_session):
    ray = ray_session
    actors, _ = _rig(ray, {"reward-0": ["die", "die"]}, "run.max_restarts=1")
    with pytest.raises(ActorLost, match=r"reward-0 died.*already replaced 1 times \(run.max_restarts=1\)"):
        generate_and_score(actors, ROWS, **SAMPLING)
    assert actors.supervisor.restarts["reward"] == 1
    _kill(ray, actors)


def test_an_engine_dying_at_a_weight_sync_is_replaced_with_the_new_weights(ray_session):
    ray = ray_session
    actors, _ = _rig(ray, {})
    ray.kill(actors.rollouts[0], no_restart=True)
    metrics = sync_weights(actors, 3)
    assert metrics["sync/bytes_per_engine"] == 4.0 and actors.supervisor.restarts["rollout"] == 1
    assert ray.get([e.held_version.remote() for e in actors.rollouts]) == [3, 3]
    _kill(ray, actors)


def test_a_dead_trainer_is_not_replaced(ray_session):
    ray = ray_session
    actors, _ = _rig(ray, {"trainer": ["die"]})
    with pytest.raises(ray.exceptions.RayActorError):
        train(actors, generate_and_score(actors, ROWS, **SAMPLING)[0])
    with pytest.raises(ray.exceptions.RayActorError) as info:  # a sync needing its weights is not recovered either
        sync_weights(actors, 4)
    assert info.value.actor_id == actors.trainer._actor_id.hex()  # raised in the engines, naming the trainer
    assert actors.supervisor.restarts == {"rollout": 0, "reward": 0}
    _kill(ray, actors)


def test_timeouts_follow_the_work_unless_fixed():
    cfg = load_config(None, ["rollout.max_staleness=0", "rollout.num_actors=2", "reward.num_actors=2",
                           "reward.timeout_s=10"])
    t = Timeouts(cfg)
    # 64 prompts over 2 engines x 8 completions x 24 tokens at 20 tokens/s, plus scoring 512 samples
    # over 2 reward actors at 10 s each in turn.
    assert t.generation(64, 8, 24) == pytest.approx(BASE_TIMEOUT_S + 32 * 8 * 24 / 20 + BASE_TIMEOUT_S + 256 * 10)
    batch = [Sample("p", "math", "", [1] * 60, completion_ids=[2] * 40) for _ in range(50)]  # 5000 tokens
    assert t.training(batch) == pytest.approx(BASE_TIMEOUT_S + 100) and t.call() == BASE_TIMEOUT_S
    fixed = Timeouts(load_config(None, ["run.call_timeout_s=7"]))
    assert fixed.generation(64, 8, 24) == fixed.scoring(10) == fixed.training(batch) == fixed.call() == 7


def test_stalled_names_the_actors_that_did_not_answer(ray_session):
    ray = ray_session
    from rl.supervise import get_within

    actors, _ = _rig(ray, {"rollout-1": ["stall"]})
    refs = [e.generate_scored.remote(ROWS[:1], actors.rewards, **SAMPLING) for e in actors.rollouts]
    with pytest.raises(ActorStalled) as info:
        get_within(refs, 2.0, "generation")
    assert info.value.actor_ids == [actors.rollouts[1]._actor_id.hex()]
    _kill(ray, actors)


# ---- the asynchronous pipeline ------------------------------------------------------------------

class StreamEngine:
    """tests/rl/test_pipeline.py's stand-in engine, with what a replacement needs; `fail` = (mode, n):
    at its n-th collect call, exit the process ("die") or never answer ("stall"); the rows submitted
    and not collected are lost with it."""

    def __init__(self, fail: tuple[str, int] = ("", 0)) -> None:
        from tests.rl.test_pipeline import FakeEngine

        self.engine, (self.mode, self.fail_at), self.calls = FakeEngine(0.01), fail, 0

    def info(self):
        return {"version": self.engine.version}

    def submit(self, *args, **kwargs):
        return self.engine.submit(*args, **kwargs)

    def collect(self, timeout: float = 1.0):
        self.calls += 1
        if self.calls == self.fail_at:
            os._exit(1) if self.mode == "die" else time.sleep(3600)
        return self.engine.collect(timeout)

    def set_rewards(self, rewards):
        with self.engine.cond:
            self.engine.queued = [(tag, rows, rewards, n) for tag, rows, _, n in self.engine.queued]

    def load_weights(self, weights, version):
        return self.engine.load_weights(weights, version)

    def receive_weights(self, published, version):
        self.engine.load_weights(None, version)
        return {"bytes": 4.0, "fetch_seconds": 0.0, "load_seconds": 0.0}

    def rng_state(self):
        return None

    def restore(self, state, version):
        self.engine.version = version


class StreamReward:
    def __init__(self, fail: tuple[str, int] = ("", 0)) -> None:
        from tests.rl.test_pipeline import FakeReward

        self.reward, (self.mode, self.fail_at), self.calls = FakeReward(), fail, 0

    def info(self):
        return {}

    def score(self, samples):
        self.calls += 1
        if self.calls == self.fail_at:
            os._exit(1) if self.mode == "die" else time.sleep(3600)
        return self.reward.score(samples)


@pytest.mark.parametrize("who,mode", [("rollout-0", "die"), ("reward-0", "die"), ("rollout-1", "stall"),
                                      ("reward-0", "stall")])
def test_an_async_run_replaces_a_dead_or_stalled_actor_and_scores_every_drawn_group_once(
        ray_session, tmp_path, monkeypatch, who, mode):
    from data_mining.miner import Miner, StepFill
    from rl.metrics import step_metrics
    from rl.pipeline import run_async
    from rl.rollout import CONCURRENCY_GROUPS
    from tests.rl.test_pipeline import N as PER_PROMPT
    from tests.rl.test_pipeline import FakeTrainer, Log, _config, _rows

    ray = ray_session
    drawn: list[str] = []
    next_draw = StepFill.next_draw

    def recording(self):
        draw = next_draw(self)
        if draw is not None:
            drawn.extend(r["id"] for r in draw.rows)
        return draw

    monkeypatch.setattr(StepFill, "next_draw", recording)
    # 6 s without an answer counts as a stall: long enough that a loaded machine does not look like one.
    cfg = _config(tmp_path, 1, 8, "rollout.num_actors=2", "reward.num_actors=1", "run.call_timeout_s=6")
    fails = {who: (mode, 6)}  # the 6th call: mid-run, with rows in flight

    def start(role, cls, i):
        opts = dict(name=f"{role}-{i}", num_cpus=0)
        wrap = ray.remote(concurrency_groups=CONCURRENCY_GROUPS)(cls) if role == "rollout" else ray.remote(cls)
        return wrap.options(**opts).remote(fails.pop(f"{role}-{i}", ("", 0)))

    starters = {"rollout": lambda i: start("rollout", StreamEngine, i),
                "reward": lambda i: start("reward", StreamReward, i)}
    rollouts = [starters["rollout"](i) for i in range(2)]
    rewards = [starters["reward"](0)]
    trainer = ray.remote(FakeTrainer).options(num_cpus=0).remote(0.02)
    actors = Actors(rollouts, rewards, trainer)
    actors.supervisor = Supervisor(cfg, actors, starters)
    miner = Miner.from_config(cfg, _rows())
    log = Log()
    steps, _ = run_async(cfg, actors, miner, log, tmp_path, lambda *a: step_metrics(*a, 1.0), lambda *a: None)

    role = who.split("-")[0]
    assert steps == 8 and sorted(log.rows) == list(range(8))
    assert log.rows[7][f"fault/restarts/{role}"] == 1.0 and sum(actors.supervisor.restarts.values()) == 1
    # Every drawn prompt's group reached the ledger exactly once: none lost with the actor, none twice.
    seen = {p: e.attempts for p, e in miner.ledger.entries.items() if e.attempts}
    assert seen == {p: c * PER_PROMPT for p, c in Counter(drawn).items()}
    assert not miner.in_flight
    _kill(ray, actors)
