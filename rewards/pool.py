"""Reward actors: score Samples in parallel with per-call timeouts, never letting one bad reward stop
the run.

How `RewardPool.score` runs a batch:
- each sample's domain routes it to its rewards (`registry.resolve_routes`);
- a per-sample reward is one call per sample, run on `threads` worker threads; an async reward's
  calls all run at once on one event loop; a batched reward gets one call per chunk of at most its
  `max_batch` samples (a batched reward that runs programs, such as code execution, parallelises
  inside its call with a process pool of its own);
- every call has `timeout_s` from the moment it starts; a call that raises or times out scores its
  samples 0 (component `error`), counted in `reward/errors/<domain>`, the first message per domain
  printed. A call waiting for a worker pool shared with other calls stops its own clock meanwhile
  (`rewards.clock.pause_clock`; the code reward does so while its sandbox jobs are queued behind
  others).

Python cannot kill a thread: a worker stuck past its deadline is retired and replaced, and is sent an
asynchronous `RewardTimeout`, which stops pure-Python loops at their next bytecode; a call blocked
inside C code keeps its (daemon) thread until it returns. Work that must be killable runs in
subprocesses of its own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ctypes
import inspect
import queue
import sys
import threading
import time
from collections import defaultdict
from concurrent.futures import ALL_COMPLETED, Future, InvalidStateError, wait
from typing import Any

from rewards.clock import set_running
from rewards.custom import RewardLoadError, load_custom_rewards, pin_spec
from rewards.registry import (
    RewardFn,
    RewardResult,
    Routes,
    awaited,
    batch_limit,
    combine,
    get_reward,
    is_async,
    read_stats,
    resolve_routes,
    route_for,
    stats_growth,
)
from rl.config import Config, RewardConfig
from rl.types import Sample

# Imported for their registrations: the built-in rewards.
import rewards.code  # noqa: F401
import rewards.instruction  # noqa: F401
import rewards.math  # noqa: F401
import rewards.shaping  # noqa: F401

DEFAULT_TIMEOUT_S = RewardConfig().timeout_s
DEFAULT_THREADS = RewardConfig().threads


class RewardTimeout(Exception):
    """A reward call ran past its timeout."""


def describe(exc: BaseException) -> str:
    # str(KeyError) quotes its message; the message itself reads better.
    message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
    return f"{type(exc).__name__}: {message}"


def _settle(future: Future, value: Any = None, exc: BaseException | None = None) -> None:
    """Resolve `future` unless a timeout (or the call itself) already did."""
    try:
        future.set_exception(exc) if exc is not None else future.set_result(value)
    except InvalidStateError:
        pass


class _Call:
    """One call of one reward: a sample, or a list of samples for a batched reward."""

    def __init__(self, name: str, fn: RewardFn, indices: list[int], arg: Any, batched: bool) -> None:
        self.name, self.fn, self.indices, self.arg, self.batched = name, fn, indices, arg, batched
        self.future: Future = Future()
        self.started: float | None = None  # monotonic time the call began; deadlines count from it
        # (paused seconds so far, monotonic time of the pause in progress or None), replaced as a
        # whole so that the pool's thread always reads a consistent pair.
        self.paused: tuple[float, float | None] = (0.0, None)
        self.seconds = 0.0
        self.cancel: Any = None  # set for calls on the event loop

    def pause(self, paused: bool) -> None:
        total, since = self.paused
        if paused and since is None:
            self.paused = (total, time.monotonic())
        elif not paused and since is not None:
            self.paused = (total + time.monotonic() - since, None)

    def elapsed(self, now: float) -> float:
        """Seconds counted against the timeout: since the call started, less its paused time."""
        total, since = self.paused
        return now - self.started - total - (now - since if since is not None else 0.0)

    def run(self) -> None:
        self.started = time.monotonic()
        set_running(self)
        try:
            value = self.fn(self.arg)
            if inspect.isawaitable(value):
                value = asyncio.run(awaited(value))
            _settle(self.future, value)
        except BaseException as exc:  # noqa: BLE001 - even SystemExit from a reward costs only its samples
            _settle(self.future, exc=exc)
        finally:
            set_running(None)
            self.seconds = time.monotonic() - self.started

    async def run_async(self) -> None:
        try:
            _settle(self.future, await self.fn(self.arg))
        except BaseException as exc:  # noqa: BLE001 - cancellation at a timeout lands here too
            _settle(self.future, exc=exc)
        finally:
            self.seconds = time.monotonic() - self.started

    def values(self) -> list[RewardResult | None]:
        """The call's results, one per sample; raises what the call raised."""
        value = self.future.result(timeout=0)
        if not self.batched:
            return [value]
        if not isinstance(value, list) or len(value) != len(self.indices):
            got = f"a list of {len(value)}" if isinstance(value, list) else type(value).__name__
            raise TypeError(f"batched reward returned {got} for {len(self.indices)} samples; expected one result each")
        return value


class _Worker(threading.Thread):
    def __init__(self, calls: queue.SimpleQueue) -> None:
        super().__init__(daemon=True, name="reward-worker")
        self.calls = calls
        self.lock = threading.Lock()
        self.call: _Call | None = None
        self.retired = False

    def run(self) -> None:
        try:
            while True:
                call = self.calls.get()
                if call is None:
                    return
                with self.lock:
                    self.call = call
                call.run()
                with self.lock:
                    self.call = None
                    if self.retired:
                        return
        except RewardTimeout:  # the timeout signal landed after its call ended; retired anyway
            return


def _raise_in(thread: threading.Thread, exc_type: type[BaseException]) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(exc_type))


class RewardPool:
    """Scores batches of Samples with the given routing; see the module docstring."""

    def __init__(self, routes: Routes | None = None, timeout_s: float | None = DEFAULT_TIMEOUT_S,
                 threads: int = DEFAULT_THREADS) -> None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        if timeout_s is not None and timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0 or None, got {timeout_s}")
        self.routes = resolve_routes() if routes is None else routes
        self.timeout_s = timeout_s
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._workers = [self._spawn() for _ in range(threads)]
        self._loop: asyncio.AbstractEventLoop | None = None
        self.abandoned_threads = 0  # workers retired (and replaced) after a timed-out call

    def __enter__(self) -> RewardPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for _ in self._workers:
            self._calls.put(None)
        self._workers = []
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._loop = None

    # --- running calls ----------------------------------------------------------------------------

    def _spawn(self) -> _Worker:
        worker = _Worker(self._calls)
        worker.start()
        return worker

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            threading.Thread(target=self._loop.run_forever, daemon=True, name="reward-loop").start()
        return self._loop

    def _loop_responds(self) -> bool:
        answered = threading.Event()
        self._loop.call_soon_threadsafe(answered.set)
        return answered.wait(timeout=1.0)

    def _abandon(self, call: _Call) -> None:
        if call.cancel is not None:
            call.cancel()
            return
        for worker in self._workers:
            with worker.lock:
                if worker.call is call:
                    worker.retired = True
                    _raise_in(worker, RewardTimeout)
                    break
        else:
            return
        self._workers = [w for w in self._workers if not w.retired] + [self._spawn()]
        self.abandoned_threads += 1

    def _run(self, calls: list[_Call]) -> bool:
        """Run every call to a result, an exception or its timeout; True if an async call timed out."""
        for call in calls:
            if is_async(call.fn):
                call.started = time.monotonic()
                call.cancel = asyncio.run_coroutine_threadsafe(call.run_async(), self._event_loop()).cancel
            else:
                self._calls.put(call)
        pending, async_timeout = calls, False
        while pending:
            if self.timeout_s is None:
                wait([c.future for c in pending], return_when=ALL_COMPLETED)
                break
            now = time.monotonic()
            left = [self.timeout_s - c.elapsed(now) for c in pending if c.started is not None]
            wait([c.future for c in pending], timeout=max(0.005, min(left, default=self.timeout_s)))
            now, still = time.monotonic(), []
            for call in pending:
                if call.future.done():
                    continue
                if call.started is not None and call.elapsed(now) >= self.timeout_s:
                    _settle(call.future, exc=RewardTimeout(f"no result after {self.timeout_s:g} s"))
                    call.seconds = self.timeout_s
                    async_timeout |= call.cancel is not None
                    self._abandon(call)
                else:
                    still.append(call)
            pending = still
        return async_timeout

    # --- scoring ----------------------------------------------------------------------------------

    def evaluate(self, samples: list[Sample]) -> tuple[list[RewardResult | str], list[float]]:
        """One result or error message per sample, and the reward-call seconds spent on each."""
        errors: dict[int, str] = {}
        routes: dict[int, list[tuple[str, float]]] = {}
        by_reward: dict[str, list[int]] = defaultdict(list)
        for i, sample in enumerate(samples):
            try:
                routes[i] = route_for(sample, self.routes)
            except KeyError as exc:
                errors[i] = describe(exc)
                continue
            for name in dict(routes[i]):
                by_reward[name].append(i)
        calls: list[_Call] = []
        for name, indices in by_reward.items():
            try:
                fn = get_reward(name)
            except KeyError as exc:
                errors.update({i: describe(exc) for i in indices})
                continue
            limit = batch_limit(fn)
            if limit is None:
                calls += [_Call(name, fn, [i], samples[i], batched=False) for i in indices]
                continue
            size = limit or len(indices)
            for start in range(0, len(indices), size):
                chunk = indices[start : start + size]
                calls.append(_Call(name, fn, chunk, [samples[i] for i in chunk], batched=True))
        if self._run(calls) and not self._loop_responds():
            # A coroutine blocking the loop would block every later call: leave it, start a fresh one.
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._loop = None
        results: dict[int, dict[str, RewardResult | None]] = defaultdict(dict)
        seconds = [0.0] * len(samples)
        for call in calls:
            for i in call.indices:
                seconds[i] += call.seconds / len(call.indices)
            try:
                values = call.values()
            except BaseException as exc:  # noqa: BLE001
                for i in call.indices:
                    errors.setdefault(i, f"reward {call.name!r}: {describe(exc)}")
                continue
            for i, value in zip(call.indices, values):
                results[i][call.name] = value
        outcomes: list[RewardResult | str] = []
        for i, sample in enumerate(samples):
            if i not in errors:
                try:
                    outcomes.append(combine(sample, routes[i], results[i]))
                    continue
                except Exception as exc:
                    errors[i] = describe(exc)
            outcomes.append(f"prompt {sample.prompt_id}: {errors[i]}")
        return outcomes, seconds

    def score(self, samples: list[Sample]) -> tuple[list[Sample], dict[str, float]]:
        """Fill reward fields in place; return the samples and per-domain stats:
        `reward/errors/<domain>` (every domain in the batch), `time/reward/<domain>` (seconds of
        reward calls spent on the domain; calls overlap, so domains can sum to more than the wall
        time), `time/reward_compute` (wall seconds) and, for each reward with counters (`stats` in
        `registry.reward`) that grew, their growth: `reward/<name>/<counter>`, e.g. the code reward's
        `reward/code/{lookups,cache_hits,shared,executions}` (counts, so they add across calls)."""
        t0 = time.perf_counter()
        counters_before = read_stats()
        outcomes, seconds = self.evaluate(samples)
        counters_after = read_stats()
        errors: dict[str, int] = {s.domain: 0 for s in samples}
        first_error: dict[str, str] = {}
        stats: dict[str, float] = defaultdict(float)
        for s, outcome, secs in zip(samples, outcomes, seconds):
            stats[f"time/reward/{s.domain}"] += secs
            if isinstance(outcome, str):
                s.reward, s.reward_components, s.passed = 0.0, {"error": 1.0}, False
                errors[s.domain] += 1
                first_error.setdefault(s.domain, outcome)
            else:
                s.reward, s.reward_components, s.passed = outcome.score, outcome.components, bool(outcome.passed)
        stats.update({f"reward/errors/{d}": float(n) for d, n in errors.items()})
        stats.update(stats_growth(counters_before, counters_after))
        stats["time/reward_compute"] = time.perf_counter() - t0
        for domain, msg in first_error.items():
            print(f"[reward] {errors[domain]} error(s) in domain {domain!r}; first: {msg}", flush=True)
        return samples, dict(stats)


def score_samples(samples: list[Sample], routes: Routes | None = None, timeout_s: float | None = DEFAULT_TIMEOUT_S,
                  threads: int = DEFAULT_THREADS) -> tuple[list[Sample], dict[str, float]]:
    """`RewardPool.score` with a pool made for this one batch."""
    with RewardPool(routes, timeout_s, threads) as pool:
        return pool.score(samples)


def setup_rewards(config: RewardConfig, load_models: bool = True) -> Routes:
    """Make this process's reward registry match a reward config and return its routing table:
    load `custom` rewards, configure the code reward (`code_cache`, `sandbox`), register the reward
    model when `reward_model_path` is set (loading its weights only with `load_models`), resolve
    `routes`.

    Raises RewardLoadError naming the bad spec, route or model. The driver calls it (without
    models) before starting reward actors, so a bad setting stops the run there; every reward
    actor calls it again at start-up, as registration is per process.
    """
    load_custom_rewards(list(config.custom))
    rewards.code.configure(config.code_cache, config.sandbox)
    if config.reward_model_path:
        from rewards.reward_model import register_reward_model

        register_reward_model(
            config.reward_model_path,
            label=config.reward_model_label,
            batch_size=config.reward_model_batch_size,
            max_length=config.reward_model_max_length,
            load=load_models,
        )
    try:
        return resolve_routes(config.routes)
    except ValueError as exc:
        raise RewardLoadError(str(exc)) from exc


def prepare_reward_config(cfg: Config) -> Config:
    """`cfg` with the reward section the reward actors get: custom reward files pinned to absolute
    paths (an actor's working directory may differ). Loads the custom rewards and routes in this
    process first (reward-model weights are not loaded), so a bad setting stops the run here, before
    Ray starts, with `error: <what is wrong>` and exit status 2."""
    reward = dataclasses.replace(cfg.reward, custom=tuple(pin_spec(spec) for spec in cfg.reward.custom))
    try:
        setup_rewards(reward, load_models=False)
    except RewardLoadError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    return dataclasses.replace(cfg, reward=reward)


class RewardWorker:
    """Ray actor body (wrapped with ray.remote by the driver): a `RewardPool` set up from the reward
    config at start-up."""

    def __init__(self, config: RewardConfig) -> None:
        self.routes = setup_rewards(config)
        self.pool = RewardPool(self.routes, config.timeout_s, config.threads)

    def info(self) -> dict[str, list[tuple[str, float]]]:
        return self.routes

    def score(self, samples: list[Sample]) -> tuple[list[Sample], dict[str, float]]:
        return self.pool.score(samples)
