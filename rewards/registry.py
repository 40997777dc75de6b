"""One reward signature, registered by name.

    @reward("math")
    def math_reward(sample: Sample) -> RewardResult | None: ...

A reward returns a score with named components, or `None` when it does not apply to the sample.
Two variants serve expensive scorers:
- async: `async def fn(sample)`; the reward pool runs many at once on one event loop;
- batched: `@reward("rm", batched=True, max_batch=16) def fn(samples) -> list[RewardResult | None]`
  receives a list (at most `max_batch`, None = all of one scoring call) and returns one result per
  sample, in order. A batched reward may be async too.

A reward with counters of its own (the code reward's cache hits and sandbox runs) registers a
`stats` callable returning them, cumulative; the reward pool reports how much each grew during a
scoring call as `reward/<name>/<counter>`, without knowing the reward's internals.

Routing: each domain is scored by one or more rewards with weights; the sample's score is the
weighted sum of the rewards that apply (`combine`). `DEFAULT_DOMAIN_REWARDS` is the built-in table;
`resolve_routes` lays configured routes over it.
"""

from __future__ import annotations

import asyncio
import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from rl.config import ConfigError, RewardConfig
from rl.types import Sample


@dataclass
class RewardResult:
    score: float
    components: dict[str, float] = field(default_factory=dict)
    passed: bool | None = None  # task solved; None = decide from score (>= 1.0)


RewardFn = Callable[..., Any]  # (Sample) -> RewardResult | None, or batched / async, see above
REWARDS: dict[str, RewardFn] = {}
Routes = dict[str, list[tuple[str, float]]]

# Which rewards score each domain, with their weights. A built-in route whose reward is not
# registered in this process (no reward model configured, say) is left out by `resolve_routes`.
DEFAULT_DOMAIN_REWARDS: Routes = {
    "math": [("math", 1.0)],
    "code": [("code", 1.0)],
    "instruction": [("instruction", 1.0)],
    "general": [("reward_model", 1.0)],
}

_BATCH_ATTR = "__reward_max_batch__"  # present on batched rewards: max samples per call, 0 = no limit
StatsFn = Callable[[], Mapping[str, float]]  # a reward's cumulative counters, by name
STATS: dict[str, StatsFn] = {}


def batched(fn: RewardFn | None = None, *, max_batch: int | None = None) -> Any:
    """Mark `fn(samples: list[Sample]) -> list[RewardResult | None]` as a batched reward (for custom
    rewards loaded from config: decorate the function with `@batched` in its module)."""
    def mark(f: RewardFn) -> RewardFn:
        return _mark_batched(f, max_batch)

    return mark if fn is None else mark(fn)


def _mark_batched(fn: RewardFn, max_batch: int | None) -> RewardFn:
    if max_batch is not None and (not isinstance(max_batch, int) or max_batch < 1):
        raise ValueError(f"max_batch must be a positive integer or None, got {max_batch!r}")
    setattr(fn, _BATCH_ATTR, max_batch or 0)
    return fn


def batch_limit(fn: RewardFn) -> int | None:
    """None for a per-sample reward; else the most samples per call (0 = no limit)."""
    return getattr(fn, _BATCH_ATTR, None)


def is_async(fn: RewardFn) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))


def reward(name: str, *, batched: bool = False, max_batch: int | None = None,
           stats: StatsFn | None = None) -> Callable[[RewardFn], RewardFn]:
    """Register `fn` as the reward called `name` (see the module docstring for the variants and
    `stats`)."""

    def deco(fn: RewardFn) -> RewardFn:
        if name in REWARDS and REWARDS[name] is not fn:
            raise ValueError(f"reward {name!r} is already registered ({REWARDS[name].__module__})")
        if batched:
            _mark_batched(fn, max_batch)
        REWARDS[name] = fn
        if stats is not None:
            STATS[name] = stats
        return fn

    return deco


def get_reward(name: str) -> RewardFn:
    if name not in REWARDS:
        raise KeyError(f"unknown reward {name!r}; registered: {sorted(REWARDS)}")
    return REWARDS[name]


def read_stats() -> dict[str, dict[str, float]]:
    """Every registered reward's counters now: {reward name: {counter: value}}."""
    return {name: dict(fn()) for name, fn in STATS.items() if name in REWARDS}


def stats_growth(before: Mapping[str, Mapping[str, float]],
                 after: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """`reward/<name>/<counter>` = how much each counter grew from `before` to `after` (at least 0:
    a reset in between counts from 0), for the rewards of which some counter grew."""
    out: dict[str, float] = {}
    for name, counts in after.items():
        old = before.get(name, {})
        if any(value > old.get(key, 0) for key, value in counts.items()):
            out.update({f"reward/{name}/{key}": float(max(0, value - old.get(key, 0)))
                        for key, value in counts.items()})
    return out


def parse_route(text: str) -> tuple[str, list[tuple[str, float]]]:
    """`"math=math,format:0.1"` -> `("math", [("math", 1.0), ("format", 0.1)])`; a reward named with a
    mode keeps it (`"instruction=instruction:loose"`); ValueError if malformed."""
    domain, sep, rewards_text = text.partition("=")
    domain = domain.strip()
    if not sep or not domain or not rewards_text.strip():
        raise ValueError(f"route {text!r}: expected DOMAIN=REWARD[:WEIGHT][,REWARD[:WEIGHT]...]")
    routes = []
    for item in rewards_text.split(","):
        name, weight = _name_and_weight(item.strip())
        if not name:
            raise ValueError(f"route {text!r}: empty reward name")
        try:
            routes.append((name, float(weight) if weight else 1.0))
        except ValueError:
            raise ValueError(f"route {text!r}: weight {weight!r} is not a number") from None
    return domain, routes


def check_routes(reward: RewardConfig) -> None:
    """ConfigError naming the first entry of `reward.routes` that `parse_route` rejects."""
    for i, text in enumerate(reward.routes):
        try:
            parse_route(text)
        except ValueError as exc:
            raise ConfigError(f"config key 'reward.routes[{i}]': {exc}") from None


# Suffixes a reward name may carry to choose a scoring mode (`instruction:loose`); any other suffix
# after a colon is a weight.
REWARD_MODES = ("strict", "loose")


def _name_and_weight(item: str) -> tuple[str, str]:
    """`"math:0.1"` -> `("math", "0.1")`; `"instruction:loose"` -> `("instruction:loose", "")`;
    `"instruction:loose:0.5"` -> `("instruction:loose", "0.5")`."""
    name, _, rest = item.partition(":")
    mode, _, weight = rest.partition(":")
    if mode.strip() in REWARD_MODES:
        return f"{name}:{mode.strip()}", weight.strip()
    return name, rest


def resolve_routes(routes: Iterable[str] | Mapping[str, list[tuple[str, float]]] = ()) -> Routes:
    """The built-in table with `routes` (route strings, see `parse_route`, or a parsed table)
    replacing the domains they name. Built-in routes to unregistered rewards are dropped; a given
    route to an unregistered reward is a ValueError naming it."""
    given = dict(routes) if isinstance(routes, Mapping) else dict(parse_route(r) for r in routes)
    table = {d: list(r) for d, r in DEFAULT_DOMAIN_REWARDS.items() if all(n in REWARDS for n, _ in r)}
    for domain, domain_routes in given.items():
        unknown = [n for n, _ in domain_routes if n not in REWARDS]
        if unknown:
            raise ValueError(
                f"route for domain {domain!r} names unknown reward(s) {unknown}; registered: {sorted(REWARDS)}"
            )
        table[domain] = list(domain_routes)
    return table


def combine(sample: Sample, route: list[tuple[str, float]], results: Mapping[str, RewardResult | None]) -> RewardResult:
    """Weighted sum of the applicable results; components are prefixed by reward name; passed when
    every applicable reward passed. ValueError when none applies."""
    total, applied, passed = 0.0, False, True
    components: dict[str, float] = {}
    for name, weight in route:
        result = results[name]
        if result is None:
            continue
        if not isinstance(result, RewardResult):
            raise TypeError(f"reward {name!r} returned {type(result).__name__}, expected RewardResult or None")
        check_score(name, result)
        total += weight * result.score
        applied = True
        components[name] = result.score
        components.update({f"{name}/{k}": v for k, v in result.components.items()})
        passed = passed and (result.passed if result.passed is not None else result.score >= 1.0)
    if not applied:
        raise ValueError(f"no reward applies to prompt {sample.prompt_id} in domain {sample.domain!r}")
    if not math.isfinite(total):  # finite scores times finite weights can still overflow
        raise ValueError(f"the weighted sum of the rewards of domain {sample.domain!r} is {total}")
    return RewardResult(total, components, passed)


def check_score(name: str, result: RewardResult) -> None:
    """TypeError unless reward `name`'s score and components are real numbers, ValueError unless they
    are finite: a NaN or inf reward would reach the advantages (and count as a pass) unnoticed."""
    values = {"score": result.score, **{f"component {k!r}": v for k, v in result.components.items()}}
    for what, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"reward {name!r} returned {what} {value!r} ({type(value).__name__}), expected a number")
        if not math.isfinite(value):
            raise ValueError(f"reward {name!r} returned a non-finite {what} ({value!r})")


def route_for(sample: Sample, routes: Routes) -> list[tuple[str, float]]:
    route = routes.get(sample.domain)
    if not route:
        raise KeyError(
            f"no reward configured for domain {sample.domain!r} (prompt {sample.prompt_id}); "
            f"routed domains: {sorted(routes)} (see reward.routes)"
        )
    return route


async def awaited(value: Any) -> Any:
    """Await `value` (an awaitable a reward returned), for `asyncio.run`."""
    return await value


def call_reward(fn: RewardFn, sample: Sample) -> RewardResult | None:
    """Call any reward variant on one sample, in this thread (no timeout)."""
    limit = batch_limit(fn)
    value = fn([sample] if limit is not None else sample)
    if inspect.isawaitable(value):
        value = asyncio.run(awaited(value))
    if limit is not None:
        if not isinstance(value, list) or len(value) != 1:
            raise TypeError(f"batched reward returned {value!r} for 1 sample; expected a list of 1 result")
        value = value[0]
    return value


def score_sample(sample: Sample, routes: Routes | None = None) -> RewardResult:
    """Score one sample in this thread, without timeouts (`rewards.pool` scores batches)."""
    route = route_for(sample, resolve_routes() if routes is None else routes)
    return combine(sample, route, {name: call_reward(get_reward(name), sample) for name, _ in route})
