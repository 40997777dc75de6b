"""Keeping a run going when a rollout engine or a reward actor dies or stalls.

The driver supervises its actors itself rather than through Ray's `max_restarts`: Ray would run
the constructor again, but a new engine also needs the current weights and its sampler state, and
the call the old one was in must be redone. So:

* Every remote call of the loop has a timeout (`Timeouts`): `run.call_timeout_s`, or one derived
  from the call's work. An actor that has not answered by then counts as stalled, which is
  treated as dead (`ActorStalled`; the stalled actor is killed).
* `Supervisor.redo(work)` runs a piece of the loop's work (a draw's generation and scoring, a
  weight sync). When an engine or a reward actor it used dies or stalls, the actor is killed,
  a replacement starts in the same placement bundle under the same name, an engine gets the
  trainer's current weights and the sampler state every engine had when the work began, and
  the work is done again from the start. Nothing of the failed attempt reaches the ledger or the
  batch (the miner records a draw only once it is back whole), so nothing counts twice, and the
  redone draw samples what the lost one would have.
* Each role is replaced at most `run.max_restarts` times over the run; past that, or when a
  trainer dies or stalls, `ActorLost` (or the Ray error) ends the run, naming the last checkpoint
  (`run_rl.actor_died`). Replacements are counted in the metrics (`fault/restarts/<role>`, a
  running total) and printed.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import ray

from rl.config import Config

T = TypeVar("T")
ROLES = ("rollout", "reward")
BASE_TIMEOUT_S = 300.0  # the least any call is given: start-up hiccups, a busy node, a slow object transfer
MIN_TOKENS_PER_S = 20.0  # an engine generating slower than this per call has stalled
MIN_TRAIN_TOKENS_PER_S = 50.0  # likewise a trainer, over the prompt and completion tokens of its batch
STARTUP_TIMEOUT_S = 900.0  # for a replacement actor to start (an engine loads its model)


class ActorStalled(Exception):
    """Remote calls that did not finish within their timeout; `actor_ids` are the actors they went to."""

    def __init__(self, actor_ids: list[str], seconds: float, what: str) -> None:
        super().__init__(f"{what}: no answer within {seconds:.0f} s")
        self.actor_ids, self.seconds, self.what = actor_ids, seconds, what


class ActorLost(Exception):
    """An actor the run cannot do without and cannot replace: the run stops."""


def owner(ref: Any) -> str:
    """The id (hex) of the actor whose task returns `ref`."""
    return ref.task_id().actor_id().hex()


def get_within(refs: list[Any], seconds: float | None, what: str, fetch: bool = True) -> list[Any] | None:
    """`ray.get(refs)`, raising `ActorStalled` (naming their actors) when some are not ready after
    `seconds` (None: wait as long as it takes). A dead actor's call raises its Ray error. With
    `fetch=False`, only waits until they are ready (wherever they are stored) and returns None."""
    if not refs:
        return []
    _, pending = ray.wait(refs, num_returns=len(refs), timeout=seconds, fetch_local=fetch)
    if pending:
        raise ActorStalled(sorted({owner(r) for r in pending}), seconds or 0.0, what)
    return ray.get(refs) if fetch else None


class Timeouts:
    """How long each kind of remote call may take: `run.call_timeout_s` when set, else derived from
    the call's work (BASE_TIMEOUT_S plus the slowest plausible rate for that work)."""

    def __init__(self, cfg: Config) -> None:
        self.fixed = cfg.run.call_timeout_s or None
        self.engines, self.rewards = cfg.rollout.num_actors, cfg.reward.num_actors
        self.reward_call_s = cfg.reward.timeout_s

    def generation(self, rows: int, n: int, max_new_tokens: int) -> float:
        """Generating and scoring `rows` prompts x `n` completions spread over the engines."""
        tokens = math.ceil(rows / self.engines) * n * max_new_tokens
        return self.fixed or BASE_TIMEOUT_S + tokens / MIN_TOKENS_PER_S + self.scoring(rows * n)

    def engine_progress(self, completions: int, max_new_tokens: int) -> float:
        """How long an engine with `completions` requests in flight may go without finishing one."""
        return self.fixed or BASE_TIMEOUT_S + completions * max_new_tokens / MIN_TOKENS_PER_S

    def scoring(self, samples: int) -> float:
        """Scoring `samples` over the reward actors: at worst every reward call runs to reward.timeout_s in turn."""
        return self.fixed or BASE_TIMEOUT_S + math.ceil(samples / self.rewards) * self.reward_call_s

    def training(self, samples: list[Any]) -> float:
        """One update on `samples` (its work: their prompt and completion tokens)."""
        tokens = sum(len(s.prompt_ids) + len(s.completion_ids) for s in samples)
        return self.fixed or BASE_TIMEOUT_S + tokens / MIN_TRAIN_TOKENS_PER_S

    def call(self) -> float:
        """Anything else: a weight sync, a checkpoint's share, a state query."""
        return self.fixed or BASE_TIMEOUT_S


class Supervisor:
    """Replaces the run's engines and reward actors when they die or stall (module docstring).

    `start[role](i)` starts actor `i` of `role` ("rollout", "reward") in its placement bundle under
    its name (`rollout-i`, `reward-i`); `actors` is the run's `rl.actors.Actors`, whose lists are
    updated in place, so everything holding `actors` uses the replacement from then on.
    """

    def __init__(self, cfg: Config, actors: Any, start: dict[str, Callable[[int], Any]]) -> None:
        self.actors, self.start = actors, start
        self.max_restarts = cfg.run.max_restarts
        self.timeouts = Timeouts(cfg)
        self.restarts = dict.fromkeys(ROLES, 0)
        self.rng: list[Any] | None = None  # every engine's sampler state where no draw is under way
        self.gone: set[str] = set()  # ids of the actors replaced so far

    def handles(self, role: str) -> list[Any]:
        return {"rollout": self.actors.rollouts, "reward": self.actors.rewards, "trainer": self.actors.trainers}[role]

    def locate(self, actor_id: str | None) -> tuple[str, int] | None:
        """(role, index) of the run's actor with id `actor_id`; None when it is none of them."""
        for role in (*ROLES, "trainer"):
            for i, handle in enumerate(self.handles(role)):
                if handle._actor_id.hex() == actor_id:
                    return role, i
        return None

    def metrics(self) -> dict[str, float]:
        """Replacements so far, per role (running totals)."""
        return {f"fault/restarts/{role}": float(n) for role, n in self.restarts.items()}

    def sampler_states(self) -> list[Any]:
        """Every engine's sampler state (`RolloutWorker.rng_state`), in engine order."""
        return get_within([r.rng_state.remote() for r in self.actors.rollouts], self.timeouts.call(),
                          "reading the engines' sampler state")

    def snapshot(self) -> None:
        """Remember every engine's sampler state (what a redone draw starts from)."""
        self.rng = self.sampler_states()

    def forget_rng(self) -> None:
        """The engines' sampler state changed outside a draw (a checkpoint was restored)."""
        self.rng = None

    def redo(self, work: Callable[[], T], *, draw: bool) -> T:
        """`work()`; when an engine or reward actor it used dies or stalls, replace it and do `work` again
        (a `draw` first sets every engine back to the sampler state it had when the work began)."""
        restore = False
        while True:
            try:
                if draw and restore:  # every engine back to where the failed attempt started
                    version = self.policy_version()
                    get_within([r.restore.remote(state, version) for r, state in zip(self.actors.rollouts, self.rng)],
                               self.timeouts.call(), "restoring the engines' sampler state")
                elif draw and self.rng is None:
                    self.snapshot()
                result = work()
                if draw:
                    self.snapshot()
                return result
            except (ray.exceptions.RayActorError, ActorStalled) as exc:
                self.replace(exc)
                restore = draw and self.rng is not None
            except ray.exceptions.ObjectLostError as exc:  # e.g. the engine that made a reward call died
                if not self.probe():
                    raise
                restore = draw and self.rng is not None

    def probe(self) -> list[tuple[str, int]]:
        """Ask every engine and reward actor for its info; replace those that are dead or do not answer
        in time. Returns the replaced ones."""
        replaced = []
        for role in ROLES:
            for handle in list(self.handles(role)):
                try:
                    get_within([handle.info.remote()], self.timeouts.call(), f"probing {role} actors")
                except (ray.exceptions.RayActorError, ActorStalled) as exc:
                    replaced += self.replace(exc)
        return replaced

    def policy_version(self) -> int:
        return int(get_within([self.actors.trainer.state.remote()], self.timeouts.call(), "the trainer's state")[0]
                   ["version"])

    def replace(self, exc: Exception) -> list[tuple[str, int]]:
        """Replace the engines and reward actors `exc` names as dead or stalled; returns them as
        (role, index); an actor replaced already is skipped (its other calls fail too). Raises `exc`
        itself when it names a trainer or an actor not of this run, and `ActorLost` when a role has
        used up run.max_restarts."""
        stalled = isinstance(exc, ActorStalled)
        named = exc.actor_ids if stalled else [getattr(exc, "actor_id", None)]
        if named and all(i in self.gone for i in named):
            return []
        places = [self.locate(i) for i in named if i not in self.gone]
        if not places or any(p is None or p[0] == "trainer" for p in places):
            raise exc
        for role, i in places:
            self._replace(role, i, exc, stalled)
        return places  # type: ignore[return-value]

    def _replace(self, role: str, i: int, exc: Exception, stalled: bool) -> None:
        name = actor_name(role, i)
        lines = str(exc).strip().splitlines()
        why = f"stalled ({exc})" if stalled else f"died ({type(exc).__name__}: {lines[0] if lines else ''})"
        if self.restarts[role] >= self.max_restarts:
            raise ActorLost(f"{name} {why}, and {role} actors were already replaced {self.restarts[role]} times "
                            f"(run.max_restarts={self.max_restarts})") from exc
        self.restarts[role] += 1
        print(f"warning: {name} {why}; starting a replacement ({role} restart {self.restarts[role]} of at most "
              f"{self.max_restarts}) and redoing its unfinished work", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        handles = self.handles(role)
        self.gone.add(handles[i]._actor_id.hex())
        ray.kill(handles[i], no_restart=True)
        wait_names_free([name])
        new = self.start[role](i)
        try:
            ray.get(new.info.remote(), timeout=STARTUP_TIMEOUT_S)
            if role == "rollout":
                version = self.policy_version()
                self.actors.transport.broadcast(self.actors.trainer, [new], version, self.timeouts.call())
                state = self.rng[i] if self.rng is not None and i < len(self.rng) else None
                ray.get(new.restore.remote(state, version), timeout=self.timeouts.call())
        except (ray.exceptions.RayError, ActorStalled) as start_exc:
            raise ActorLost(f"{name} {why}, and its replacement failed to start ({type(start_exc).__name__}: "
                            f"{str(start_exc).strip()[:300]})") from start_exc
        handles[i] = new
        print(f"{name} replaced in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)


def actor_name(role: str, i: int) -> str:
    """The Ray name of a run's actor: rollout-i, reward-i, and "trainer" (rank 0) or trainer-i."""
    return "trainer" if role == "trainer" and i == 0 else f"{role}-{i}"


def wait_names_free(names: list[str], timeout_s: float = 30.0) -> None:
    """Wait (up to `timeout_s`) until no live actor holds any of `names` (killed ones release theirs
    shortly after `ray.kill`)."""
    deadline = time.monotonic() + timeout_s
    for name in names:
        while time.monotonic() < deadline:
            try:
                ray.get_actor(name)
            except ValueError:  # gone: the name is free
                break
            time.sleep(0.05)
