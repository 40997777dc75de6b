"""Asynchronous training within a staleness bound (`rollout.max_staleness` K >= 1; StaleSync-style).

The engines generate continuously (`RolloutWorker.submit`): each step's prompts go out as soon as
the staleness bound allows, finished groups go straight to the reward actors, and the trainer
takes a step's batch as soon as its groups are scored. New weights reach the engines between two
engine steps while they generate (requests in flight continue under them, or restart).

Staleness. A token sampled by policy version u and trained by version v is v - u versions stale.
Step j trains at most at version V + (j - s) when V updates have been submitted and step s is the
next to train, so the prompts of step j go out only once every engine holds a version
>= V + (j - s) - K: every token of step j is then at most K versions stale when it trains (K = 1:
step s + 1 generates while step s trains). Groups that would exceed K anyway are dropped and
counted (`rollout/stale_dropped_groups`).

The miner is the same as in the synchronous loop, one `StepFill` per step; several are open at once
and take their groups as they come back. A checkpoint first lets every draw in flight finish (the
ledger records each group when it is scored), then saves the open steps beside the miner, so a
resumed run neither repeats nor skips a prompt.
"""

from __future__ import annotations

import pickle
import time
from pathlib import Path
from typing import Any

import ray

from rl.actors import busy_meter
from rl.checkpoint import SaveSchedule
from rl.config import Config
from rl.metrics import PhaseTimer
from rl.supervise import ActorStalled, get_within, owner
from rl.types import Sample

PENDING = "pending_steps.pkl"  # the open steps of an asynchronous run's checkpoint
COLLECT_TIMEOUT_S = 1.0  # an engine's collect call returns empty after this, and is asked again


class EngineStream:
    """The driver's side of streaming generation: draws out to the engines, scored groups back.

    With a supervisor (`rl.supervise`), calls that fail because their actor died, or that take past
    their timeout, are handed back by `wait` as failures; `engine_replaced` and the failed scoring
    calls say which rows were lost with them, for the pipeline to submit again."""

    def __init__(self, actors: Any, sampling: dict[str, Any], timeouts: Any = None) -> None:
        self.rollouts, self.rewards, self.sampling = actors.rollouts, actors.rewards, sampling
        self.timeouts = timeouts  # `rl.supervise.Timeouts`; None: wait as long as it takes
        self.next_tag = 0
        self.parts: dict[int, list[list[int]]] = {}  # tag -> per engine, the draw's row indices it got
        self.rows: dict[int, list[dict[str, Any]]] = {}  # tag -> the rows submitted under it
        self.n: dict[int, int] = {}  # tag -> completions per row
        self.load = [0] * len(self.rollouts)  # rows in flight per engine
        self.pending: list[set[tuple[int, int]]] = [set() for _ in self.rollouts]  # (tag, local row) not sent to scoring
        self.collecting: dict[Any, int] = {}  # collect call in flight -> engine
        self.scoring: dict[Any, tuple[int, list[tuple[int, int, int]]]] = {}  # reward call -> engine, groups
        self.deadline: dict[Any, float] = {}  # call in flight -> when it counts as stalled
        self.counters: list[dict[str, Any]] = [{} for _ in self.rollouts]  # each engine's latest counters
        self.progress = [time.monotonic()] * len(self.rollouts)  # when each engine last finished a request
        self.retired: dict[str, float] = {}  # the counters of engines since replaced

    def submit(self, rows: list[dict[str, Any]], n: int) -> int:
        """Deal `rows` over the engines, least loaded first; returns the draw's tag."""
        tag, self.next_tag = self.next_tag, self.next_tag + 1
        order = sorted(range(len(self.rollouts)), key=lambda e: self.load[e])
        parts: list[list[int]] = [[] for _ in self.rollouts]
        for j in range(len(rows)):
            parts[order[j % len(order)]].append(j)
        for e, idx in enumerate(parts):
            if idx:
                self.rollouts[e].submit.options(concurrency_group="stream").remote(
                    tag, [rows[j] for j in idx], self.rewards, n=n, **self.sampling)
                if not self.load[e]:
                    self.progress[e] = time.monotonic()
                self.load[e] += len(idx)
                self.pending[e].update((tag, local) for local in range(len(idx)))
        self.parts[tag], self.rows[tag], self.n[tag] = parts, rows, n
        self.ensure_collecting()
        return tag

    def forget(self, tag: int) -> None:
        """Every group of draw `tag` is back: drop its bookkeeping."""
        del self.parts[tag], self.rows[tag], self.n[tag]

    def wait(self, timeout: float, others: list[Any]) -> tuple[list[tuple[int, int, list[Sample]]], dict, list,
                                                                list[Exception], list[tuple[int, dict]]]:
        """Wait up to `timeout` s for anything: returns the groups scored since ((tag, row, samples)),
        the reward stats of their calls summed, which of `others` are ready, the failures (an actor's
        Ray error, or `ActorStalled` for calls past their timeout) and the rows lost with failed
        scoring calls ((tag, row))."""
        refs = [*self.collecting, *self.scoring, *others]
        if not refs:
            return [], {}, [], [], []
        ray.wait(refs, num_returns=1, timeout=timeout)
        ready = set(ray.wait(refs, num_returns=len(refs), timeout=0)[0])
        groups: list[tuple[int, int, list[Sample]]] = []
        stats: dict[str, float] = {}
        failures: list[Exception] = []
        lost: list[tuple[int, dict]] = []
        for ref in [r for r in self.collecting if r in ready]:
            e = self.collecting.pop(ref)
            self.deadline.pop(ref, None)
            try:
                self.counters[e] = info = ray.get(ref)
            except ray.exceptions.RayActorError as exc:  # the engine died: `engine_replaced` says what it lost
                failures.append(exc)
                continue
            for calls, score_ref in info["calls"]:
                self.scoring[score_ref] = (e, calls)
                if self.timeouts is not None:
                    self.deadline[score_ref] = time.monotonic() + self.timeouts.scoring(sum(c for _, _, c in calls))
                self.pending[e].difference_update((tag, local) for tag, local, _ in calls)
                self.progress[e] = time.monotonic()
            if any(self.load) or self.scoring:
                self._collect(e)
        for ref in [r for r in self.scoring if r in ready]:
            e, calls = self.scoring.pop(ref)
            self.deadline.pop(ref, None)
            try:
                samples, call_stats = ray.get(ref)
            except (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError) as exc:
                # The reward actor died, or the engine that made the call (the result's owner) did: the
                # groups go out again (a dead engine is replaced when its collect call fails).
                if isinstance(exc, ray.exceptions.RayActorError):
                    failures.append(exc)
                lost += [(tag, self._row(tag, e, local)) for tag, local, _ in calls]
                self.load[e] -= len(calls)
                continue
            for key, value in call_stats.items():
                stats[key] = stats.get(key, 0.0) + value
            pos = 0
            for tag, local_row, count in calls:
                groups.append((tag, self.parts[tag][e][local_row], samples[pos:pos + count]))
                pos += count
                self.load[e] -= 1
        failures += self._stalled()
        return groups, stats, [r for r in others if r in ready], failures, lost

    def _row(self, tag: int, e: int, local: int) -> dict[str, Any]:
        return self.rows[tag][self.parts[tag][e][local]]

    def _stalled(self) -> list[Exception]:
        """Calls past their timeout, and engines with rows in flight that finished none for as long."""
        if self.timeouts is None:
            return []
        now, limit = time.monotonic(), self.timeouts.call()
        out: list[Exception] = [ActorStalled([owner(r)], limit, "a streaming call")
                                for r, t in self.deadline.items() if now > t]
        for e in range(len(self.rollouts)):
            if not self.pending[e]:
                continue
            wait = self.timeouts.engine_progress(sum(self.n[tag] for tag, _ in self.pending[e]),
                                                 self.sampling["max_new_tokens"])
            if now - self.progress[e] > wait:
                out.append(ActorStalled([self.rollouts[e]._actor_id.hex()], wait, "generation (no request finished)"))
        return out

    def engine_replaced(self, e: int) -> list[tuple[int, dict]]:
        """Engine `e` was replaced: forget its calls in flight; the rows it had not sent to scoring ((tag, row))."""
        for ref in [r for r, i in self.collecting.items() if i == e]:
            del self.collecting[ref]
            self.deadline.pop(ref, None)
        lost = [(tag, self._row(tag, e, local)) for tag, local in sorted(self.pending[e])]
        self.load[e] -= len(lost)
        self.pending[e] = set()
        for key in ("idle_seconds", "restarted"):
            self.retired[key] = self.retired.get(key, 0.0) + self.counters[e].get(key, 0.0)
        self.counters[e], self.progress[e] = {}, time.monotonic()
        return lost

    def rewards_replaced(self) -> None:
        """A reward actor was replaced: every engine sends to the new list from now on."""
        get_within([r.set_rewards.options(concurrency_group="stream").remote(self.rewards) for r in self.rollouts],
                   self.timeouts.call(), "handing the engines the new reward actors")

    def _collect(self, e: int) -> None:
        ref = self.rollouts[e].collect.options(concurrency_group="stream").remote(COLLECT_TIMEOUT_S)
        self.collecting[ref] = e
        if self.timeouts is not None:
            self.deadline[ref] = time.monotonic() + COLLECT_TIMEOUT_S + self.timeouts.call()

    def ensure_collecting(self) -> None:
        """A collect call in flight to every engine."""
        for e in range(len(self.rollouts)):
            if e not in self.collecting.values():
                self._collect(e)

    def idle_seconds(self) -> float:
        """The engines' idle seconds so far (nothing queued or in flight), summed."""
        return self.retired.get("idle_seconds", 0.0) + sum(c.get("idle_seconds", 0.0) for c in self.counters)

    def restarted(self) -> int:
        return int(self.retired.get("restarted", 0)) + sum(c.get("restarted", 0) for c in self.counters)


class Pipeline:
    """Steps of an asynchronous run: open steps' draws streamed to the engines, batches trained,
    weights published to the engines without waiting for them."""

    def __init__(self, cfg: Config, actors: Any, miner: Any, version: int, resume: str | None = None) -> None:
        self.cfg, self.actors, self.miner, self.k = cfg, actors, miner, cfg.rollout.max_staleness
        sampling = dict(temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                        max_new_tokens=cfg.rollout.max_new_tokens)
        self.supervisor = getattr(actors, "supervisor", None)  # replaces engines and reward actors that fail
        if self.supervisor is not None:
            self.supervisor.forget_rng()  # the engines' sampler states move on outside any draw from here
        self.stream = EngineStream(actors, sampling, self.supervisor.timeouts if self.supervisor else None)
        self.fills: dict[int, Any] = {}  # step -> its StepFill, open
        if resume and (Path(resume) / PENDING).exists():
            with open(Path(resume) / PENDING, "rb") as f:
                self.fills = {step: fill.attach(miner) for step, fill in pickle.load(f).items()}
        self.draws: dict[int, tuple[int, Any]] = {}  # tag -> (step, Draw) in flight
        self.version = version  # updates submitted to the trainer
        self.engine_versions = [version] * len(actors.rollouts)  # the weights each engine holds
        self.loads: dict[Any, tuple[int, int, float]] = {}  # weight load in flight -> (engine, version, deadline)
        self.reward_stats: dict[str, float] = {}
        self.sync_seconds: list[float] = []
        self.draining = False

    # ---- generation ------------------------------------------------------------------------------

    @property
    def engine_version(self) -> int:
        """The version every engine holds (at least)."""
        return min(self.engine_versions)

    def _open(self, next_step: int) -> None:
        """Open the steps from `next_step` on whose prompts may go out now (see the module docstring)."""
        last = min(next_step + self.k, self.cfg.run.steps - 1)
        for j in range(next_step, last + 1):
            if j not in self.fills:
                if self.engine_version < self.version + (j - next_step) - self.k:
                    return
                self.fills[j] = self.miner.plan_step(j)

    def _feed(self, next_step: int) -> None:
        """Every open step's due draws out to the engines, earliest step first."""
        if self.draining:
            return
        self._open(next_step)
        for j in sorted(self.fills):
            while (draw := self.fills[j].next_draw()) is not None:
                self.draws[self.stream.submit(draw.rows, draw.n)] = (j, draw)

    def _pump(self, timeout: float, others: list[Any] = ()) -> list[Any]:
        """One wait: scored groups into their steps, acknowledged weight loads; returns the ready `others`."""
        groups, stats, ready, failures, lost = self.stream.wait(timeout, [*self.loads, *others])
        for key, value in stats.items():
            self.reward_stats[key] = self.reward_stats.get(key, 0.0) + value
        by_tag: dict[int, list[Sample]] = {}
        for tag, _, samples in groups:
            by_tag.setdefault(tag, []).extend(samples)
        for (step, draw), samples in [(self.draws[tag], samples) for tag, samples in by_tag.items()]:
            self.fills[step].add(draw, samples)
            if draw.scored >= len(draw.rows):  # under every tag it went out with (lost rows go out again)
                for tag in [t for t, (_, d) in self.draws.items() if d is draw]:
                    del self.draws[tag]
                    self.stream.forget(tag)
        loaded = [r for r in ready if r in self.loads]
        for ref in loaded:
            engine, version, _ = self.loads.pop(ref)
            try:
                self.sync_seconds.append(ray.get(ref))
            except ray.exceptions.RayActorError as exc:
                failures.append(exc)
                continue
            self.engine_versions[engine] = max(self.engine_versions[engine], version)
        now = time.monotonic()
        failures += [ActorStalled([owner(r)], self.supervisor.timeouts.call(), "a weight load")
                     for r, (_, _, deadline) in self.loads.items() if now > deadline]
        if failures or lost:  # rows lost with an engine's scoring results may come before its own failure
            self._recover(failures, lost)
        return [r for r in ready if r not in loaded]

    def _recover(self, failures: list[Exception], lost: list[tuple[int, dict]]) -> None:
        """Replace the engines and reward actors that died or stalled (`rl.supervise`) and submit the rows
        lost with them again, to the engines as they are now; a failure it cannot recover is raised.
        Rows can be lost without a failure in the same wait: the scoring results an engine owned fail
        (OwnerDiedError) before its own call does. They go out again at once; were one dealt to the
        dead engine, its failure, when it comes, hands it back (`EngineStream.engine_replaced`)."""
        if self.supervisor is None:
            raise (failures[0] if failures else RuntimeError(f"{len(lost)} rows lost with an engine's results"))
        for exc in failures:
            for role, i in self.supervisor.replace(exc):
                if role == "rollout":
                    lost += self.stream.engine_replaced(i)
                    for ref in [r for r, (e, _, _) in self.loads.items() if e == i]:
                        del self.loads[ref]
                    # It started from the trainer's current weights.
                    self.engine_versions[i] = ray.get(self.actors.rollouts[i].info.remote())["version"]
                else:
                    self.stream.rewards_replaced()
        by_tag: dict[int, list[dict]] = {}
        for tag, row in lost:
            by_tag.setdefault(tag, []).append(row)
        for tag, rows in by_tag.items():
            step, draw = self.draws[tag]
            self.draws[self.stream.submit(rows, draw.n)] = (step, draw)

    def next_batch(self, step: int) -> Any:
        """Step `step`'s batch, once its groups are scored (generation for later steps goes on)."""
        while step not in self.fills or not self.fills[step].settled():
            self._feed(step)
            if step in self.fills and self.fills[step].settled():
                break
            self.stream.ensure_collecting()
            self._pump(COLLECT_TIMEOUT_S)
        batch = self.fills.pop(step).finish()
        return self._fresh(batch)

    def _fresh(self, batch: Any) -> Any:
        """Drop the groups whose oldest token would train a policy more than K versions newer."""
        stale = {s.prompt_id for s in batch.train if self.version - s.policy_version > self.k}
        if stale:
            batch.train = [s for s in batch.train if s.prompt_id not in stale]
        batch.metrics["rollout/stale_dropped_groups"] = float(len(stale))
        return batch

    # ---- training --------------------------------------------------------------------------------

    def train(self, batch: Any, step: int, timer: PhaseTimer) -> dict[str, Any]:
        """Train on `batch` while the engines generate for the coming steps; the new weights go to
        every engine as soon as the trainer has them (they land between two engine steps)."""
        trainer = self.actors.trainer
        done = trainer.train_step.remote(batch.train)
        weights = trainer.shared_weights.remote()  # queued behind the update: the new weights
        self.version += 1
        limit = self.supervisor.timeouts.training(batch.train) if self.supervisor else float("inf")
        until = time.monotonic() + limit
        load_limit = limit + (self.supervisor.timeouts.call() if self.supervisor else 0.0)  # queued behind the update
        for e, engine in enumerate(self.actors.rollouts):
            load = engine.load_weights.options(concurrency_group="weights").remote(weights, self.version)
            self.loads[load] = (e, self.version, time.monotonic() + load_limit)
        with timer("train"):
            while not self._pump(0.05, [done]):
                if time.monotonic() > until:  # a stalled trainer ends the run (run_rl.actor_died)
                    raise ActorStalled([owner(done)], limit, "a trainer's update")
                self._feed(step + 1)
        return ray.get(done)

    def drain(self, next_step: int) -> None:
        """Let every draw and weight load in flight finish; nothing new goes out until `resume_feeding`."""
        self.draining = True
        while self.draws or self.loads:
            self.stream.ensure_collecting()
            self._pump(COLLECT_TIMEOUT_S)

    def resume_feeding(self) -> None:
        self.draining = False

    def step_metrics(self, idle_before: float, trainer_idle: float, busy: float) -> dict[str, float]:
        """What this step's stream did: reward stats, sync seconds, idle seconds, restarts, busy cores."""
        out = {**self.reward_stats, "time/engine_idle": self.stream.idle_seconds() - idle_before,
               "time/trainer_idle": trainer_idle, "perf/cores_busy_fraction": busy,
               "rollout/restarted_requests": float(self.stream.restarted()),
               "rollout/engine_version": float(self.engine_version)}
        if self.supervisor is not None:
            out.update(self.supervisor.metrics())
        if self.sync_seconds:
            out["time/weight_sync_engine"] = max(self.sync_seconds)
        self.reward_stats, self.sync_seconds = {}, []
        return out


class PipelineState:
    """An asynchronous run's data side for `rl.checkpoint.save`: the miner, and the steps still open."""

    def __init__(self, miner: Any, pipeline: Pipeline) -> None:
        self.miner, self.pipeline = miner, pipeline

    @property
    def totals(self) -> Any:
        return self.miner.totals

    def save(self, path: str | Path) -> Any:
        with open(Path(path) / PENDING, "wb") as f:
            pickle.dump(self.pipeline.fills, f)
        return self.miner.save(path)

    def load(self, path: str | Path) -> None:
        self.miner.load(path)


def run_async(cfg: Config, actors: Any, miner: Any, log: Any, run_dir: Path, step_metrics: Any, save: Any,
              deadline: float | None = None, start: int = 0, version: int = 0,
              stop: Any = None) -> tuple[int, PipelineState]:
    """Steps `start`..run.steps-1 of an asynchronous run; returns the steps done and the state to
    checkpoint. `step_metrics(batch, reward_stats, train_stats, timer, step)` makes a step's record;
    `save(data, path, step)` writes a checkpoint; `stop` (`rl.stop.RunStop`) ends the run at a step
    boundary when requested."""
    pipe = Pipeline(cfg, actors, miner, version, resume=cfg.run.resume)
    state = PipelineState(miner, pipe)
    busy = busy_meter(actors)
    saves = SaveSchedule(cfg.run.save_every, cfg.run.save_every_minutes)
    for step in range(start, cfg.run.steps):
        if deadline is not None and time.time() >= deadline:
            print(f"run.max_seconds reached at step {step}", flush=True)
            pipe.drain(step)
            return step, state
        if stop is not None and stop.requested():
            pipe.drain(step)
            return step, state
        timer, idle_before = PhaseTimer(), pipe.stream.idle_seconds()
        t0 = time.perf_counter()
        with timer("wait_batch"):  # the trainer is idle while the batch fills
            batch = pipe.next_batch(step)
        train_stats = pipe.train(batch, step, timer) if batch.train else {}
        timer.seconds["time/step"] = time.perf_counter() - t0
        stream = pipe.step_metrics(idle_before, timer.seconds["time/wait_batch"], busy())
        log.log(step, step_metrics(batch, stream, train_stats, timer, step))
        if saves.due(step + 1):
            pipe.drain(step + 1)
            save(state, run_dir / f"checkpoint-{step + 1}", step + 1)
            pipe.resume_feeding()
    pipe.drain(cfg.run.steps)
    return cfg.run.steps, state
