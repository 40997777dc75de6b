"""The asynchronous pipeline (rl.pipeline) on real Ray actors that stand in for the engines, the
reward actors and the trainer: what it promises whatever the engines' timing.

- no sample trains a policy more than max_staleness versions newer than its oldest token;
- every drawn prompt's group is generated and scored exactly once, and reaches its step's fill;
- a checkpoint taken mid-run holds the open steps, and a resumed run continues them.

The stand-ins generate when asked for results (`collect`), with the weights version they hold then,
and take weights when the pipeline sends them; a real engine is exercised in tests/e2e/test_async.py.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
import torch

from data_mining.miner import Miner
from rl.config import load_config
from rl.metrics import step_metrics
from rl.pipeline import PENDING, Pipeline, run_async
from rl.rollout import CONCURRENCY_GROUPS
from rl.types import Sample

N = 4  # samples per prompt


def _passes(prompt_id: str, k: int) -> bool:
    """Every third prompt is solved by every sample (a zero-variance group, dropped); the rest split."""
    i = int(prompt_id.split(":")[1])
    return True if i % 3 == 0 else (k + i) % 2 == 0


class FakeEngine:
    def __init__(self, delay: float = 0.0) -> None:
        self.version, self.delay = 0, delay
        self.cond = threading.Condition()
        self.queued: list = []
        self.submitted: Counter = Counter()

    def submit(self, tag, rows, reward_actors, *, n, **sampling):
        with self.cond:
            self.queued.append((tag, rows, reward_actors, n))
            self.submitted.update(r["id"] for r in rows)
            self.cond.notify_all()

    def collect(self, timeout: float = 1.0):
        with self.cond:
            self.cond.wait_for(lambda: self.queued, timeout=min(timeout, 0.2))
            jobs, self.queued = self.queued, []
        time.sleep(self.delay)  # generation takes a while; weights may arrive meanwhile
        calls = []
        for tag, rows, rewards, n in jobs:
            v = self.version
            samples = [Sample(r["id"], r["domain"], r["prompt"], [1], completion_ids=[2, 3], group_index=k,
                              rollout_logprobs=[-1.0, -1.0], policy_version=v, token_versions=[v, v])
                       for r in rows for k in range(n)]
            calls.append(([(tag, i, n) for i in range(len(rows))], rewards[0].score.remote(samples)))
        return {"calls": calls, "idle_seconds": 0.0, "restarted": 0, "version": self.version}

    def load_weights(self, weights, version):
        self.version = max(self.version, version)
        return 0.001

    def submitted_counts(self):
        return self.submitted


class FakeReward:
    def __init__(self) -> None:
        self.groups: Counter = Counter()

    def score(self, samples):
        for s in samples:
            s.passed = _passes(s.prompt_id, s.group_index)
            s.reward = float(s.passed)
            self.groups[s.prompt_id] += 1 / N
        return samples, {"time/reward_compute": 0.0}

    def scored_groups(self):
        return self.groups


class FakeTrainer:
    def __init__(self, delay: float = 0.0) -> None:
        self.version, self.delay, self.trained = 0, delay, []

    def train_step(self, samples):
        time.sleep(self.delay)
        staleness = [self.version - s.policy_version for s in samples]
        self.trained.append(sorted({s.prompt_id for s in samples}))
        self.version += 1
        return {"policy_version": float(self.version), "rollout/staleness_max": float(max(staleness))}

    def weights(self):
        return {"w": torch.zeros(1)}

    def shared_weights(self):
        return self.weights()

    def state(self):
        return {"version": self.version}

    def history(self):
        return self.trained


class Actors:
    def __init__(self, ray, engines: int, engine_delay: float, train_delay: float) -> None:
        make = ray.remote(concurrency_groups=CONCURRENCY_GROUPS)(FakeEngine)
        self.rollouts = [make.options(num_cpus=0).remote(engine_delay) for _ in range(engines)]
        self.rewards = [ray.remote(FakeReward).options(num_cpus=0).remote()]
        self.trainer = ray.remote(FakeTrainer).options(num_cpus=0).remote(train_delay)
        self.trainers = [self.trainer]


class Log:
    def __init__(self) -> None:
        self.rows: dict[int, dict] = {}

    def log(self, step, metrics):
        self.rows[step] = metrics


def _config(tmp_path, k: int, steps: int, *extra: str):
    return load_config(None, [f"run.dir={tmp_path}", f"run.steps={steps}", f"rollout.max_staleness={k}",
                              "train.prompts_per_step=4", f"rollout.samples_per_prompt={N}",
                              "mining.estimate_samples=4", "mining.refill=false",  # the stand-in pool only
                              *extra])


def _rows(n: int = 200) -> list[dict]:
    return [{"id": f"p:{i}", "domain": "math", "prompt": f"p{i}", "reference": {}} for i in range(n)]


def _run(ray, cfg, miner, actors, tmp_path, saves=None):
    log = Log()

    def save(state, path, step):
        path.mkdir(parents=True, exist_ok=True)
        state.save(path)
        if saves is not None:
            saves.append(step)

    steps, state = run_async(cfg, actors, miner, log, tmp_path, lambda *a: step_metrics(*a, 1.0), save)
    return steps, state, log


@pytest.mark.parametrize("k,engine_delay,train_delay", [(1, 0.0, 0.05), (2, 0.05, 0.0), (1, 0.05, 0.05)])
def test_staleness_is_bounded_and_every_drawn_group_is_scored_exactly_once(ray_session, tmp_path, k, engine_delay,
                                                                            train_delay):
    ray = ray_session
    cfg = _config(tmp_path, k, steps=8)
    miner = Miner.from_config(cfg, _rows())
    actors = Actors(ray, 2, engine_delay, train_delay)
    steps, _, log = _run(ray, cfg, miner, actors, tmp_path)
    assert steps == 8 and sorted(log.rows) == list(range(8))
    # The trainer measures each batch's staleness against its own version: never above K.
    assert all(r.get("rollout/staleness_max", 0.0) <= k for r in log.rows.values())
    assert any(r.get("rollout/staleness_max", 0.0) >= 1 for r in log.rows.values())  # it did overlap
    submitted = sum((ray.get(e.submitted_counts.remote()) for e in actors.rollouts), Counter())
    scored = ray.get(actors.rewards[0].scored_groups.remote())
    assert submitted == Counter({p: round(c) for p, c in scored.items()})  # each draw scored once, none lost
    # The ledger saw each scored group exactly once (it counts samples).
    seen = {p: e.attempts for p, e in miner.ledger.entries.items() if e.attempts}
    assert seen == {p: c * N for p, c in submitted.items()}
    assert not miner.in_flight
    # Every trained prompt has variance: uniform groups were dropped.
    trained = ray.get(actors.trainer.history.remote())
    assert all(int(p.split(":")[1]) % 3 for batch in trained for p in batch)


def test_a_checkpoint_holds_the_open_steps_and_a_resumed_run_continues_them(ray_session, tmp_path):
    ray = ray_session
    # K = 2: step 2's prompts go out while step 1 trains whatever the engines hold, so step 2 is open
    # when checkpoint-2 is written.
    cfg = _config(tmp_path, 2, 6, "run.save_every=2")
    miner = Miner.from_config(cfg, _rows())
    saves: list[int] = []
    _run(ray, cfg, miner, Actors(ray, 2, 0.02, 0.02), tmp_path, saves)
    assert saves == [2, 4, 6]
    ckpt = tmp_path / "checkpoint-2"
    assert (ckpt / PENDING).exists()

    resumed = Miner.from_config(cfg, _rows())
    resumed.load(ckpt)
    cfg2 = _config(tmp_path, 2, 6, "run.save_every=0", f"run.resume={ckpt}")
    pipe = Pipeline(cfg2, Actors(ray, 2, 0.0, 0.0), resumed, version=2, resume=str(ckpt))
    open_steps = {step: fill for step, fill in pipe.fills.items()}
    assert open_steps and min(open_steps) >= 2  # what was drawn for steps 2.. before the checkpoint
    pending = {step: set(fill.drawn) for step, fill in open_steps.items()}
    # Nothing drawn before the checkpoint is in flight in the restored state, and nothing is drawn again.
    assert not resumed.in_flight
    batch = pipe.next_batch(2)
    assert pending[2] <= {s.prompt_id for s in batch.generated}
    later = set().union(*(set(f.drawn) for f in pipe.fills.values())) if pipe.fills else set()
    assert not (pending[2] & later - pending.get(3, set()))


def test_rows_lost_with_an_engines_results_go_out_again_before_its_own_failure_is_seen():
    """The scoring results an engine owned can fail (OwnerDiedError) in a wait that does not yet see
    the engine's own call fail: those rows must go out again then, not wait for a failure."""
    from types import SimpleNamespace

    class Stream:
        def __init__(self) -> None:
            self.submitted: list[tuple[list[dict], int]] = []

        def wait(self, timeout, others):
            return [], {}, [], [], [(7, {"id": "p:1"}), (7, {"id": "p:2"})]  # lost, no failure

        def submit(self, rows, n):
            self.submitted.append((rows, n))
            return 8

    pipe = Pipeline.__new__(Pipeline)
    draw = SimpleNamespace(n=N, rows=[{"id": "p:1"}, {"id": "p:2"}], scored=0)
    pipe.stream, pipe.loads, pipe.reward_stats, pipe.sync_seconds = Stream(), {}, {}, []
    pipe.draws, pipe.fills, pipe.supervisor = {7: (3, draw)}, {}, SimpleNamespace()
    pipe._pump(0.0)
    assert pipe.stream.submitted == [([{"id": "p:1"}, {"id": "p:2"}], N)]
    assert pipe.draws[8] == (3, draw)  # the new tag counts for the same step and draw
    pipe.supervisor = None  # unsupervised, the loss is an error rather than a step that never fills
    with pytest.raises(RuntimeError, match="2 rows lost"):
        pipe._pump(0.0)
