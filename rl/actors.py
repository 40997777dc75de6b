"""Where work is placed: starting Ray and the named actors, and fanning work out to them."""

from __future__ import annotations

import contextlib
import gc
import os
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import ray

from rl.broadcast import ObjectStoreTransport, WeightTransport, make_transport
from rl.config import Config
from rl.metrics import PhaseTimer, cores_busy
from rl.placement import Placement, reserve, roles
from rl.rollout import CONCURRENCY_GROUPS, RolloutWorker
from rl.supervise import (STARTUP_TIMEOUT_S, ActorStalled, Supervisor, actor_name, get_within, owner,
                          wait_names_free)
from rl.trainer import TrainerWorker
from rl.types import Sample


def start_ray(cfg: Config) -> None:
    """Start a local Ray with its dashboard on monitor.dashboard_host:port, or join run.ray_address;
    then print where the dashboard and the Prometheus metrics endpoint are, and how to sign in.

    Ray >= 2.59 guards a local cluster's dashboard and HTTP API with a token (RAY_AUTH_MODE=token). Ray
    reads it from $RAY_AUTH_TOKEN, else the file named by $RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token
    (created by the first local `ray.init`); `ray get-auth-token` prints it. The token itself is not
    printed, since run logs get shared.
    """
    if cfg.run.ray_address:
        ctx = ray.init(address=cfg.run.ray_address, log_to_driver=True)
        check_placement(cfg, ray.cluster_resources().get("CPU", 0.0))
    else:
        ctx = ray.init(
            num_cpus=cfg.run.num_cpus, log_to_driver=True, include_dashboard=True,
            dashboard_host=cfg.monitor.dashboard_host, dashboard_port=cfg.monitor.dashboard_port,
        )
    if not ctx.dashboard_url:
        print("Ray dashboard: not running (it needs the ray[default] package)", flush=True)
        return
    print(f"Ray dashboard: http://{ctx.dashboard_url}", flush=True)
    port = ctx.address_info.get("metrics_export_port")
    if port:
        print(f"Prometheus metrics of this node: http://{ctx.address_info['node_ip_address']}:{port}/metrics",
              flush=True)
    try:
        from ray._private.authentication.authentication_utils import is_token_auth_enabled
    except ImportError:  # a Ray from before token authentication
        return
    if is_token_auth_enabled():
        source = "$RAY_AUTH_TOKEN" if os.environ.get("RAY_AUTH_TOKEN") else (
            os.environ.get("RAY_AUTH_TOKEN_PATH") or "~/.ray/auth_token")
        print(f"  the dashboard asks for the cluster's auth token: `ray get-auth-token` prints it (Ray reads "
              f"it from {source}); HTTP API clients send the header 'Authorization: Bearer <token>'",
              flush=True)


def check_placement(cfg: Config, available: float | None = None) -> None:
    """Exit naming the numbers when the actors ask for more Ray CPUs than there are (Ray would wait
    for them forever): `available`, or for a local Ray run.num_cpus (null: this machine's cores).
    Joining a cluster (run.ray_address) is checked once joined, against the cluster's CPUs."""
    if available is None:
        if cfg.run.ray_address:
            return
        available = float(cfg.run.num_cpus or os.cpu_count() or 1)
    roles = {"rollout": (cfg.rollout.num_actors, cfg.rollout.cpus_per_actor),
             "reward": (cfg.reward.num_actors, cfg.reward.cpus_per_actor),
             "trainer": (cfg.train.num_actors, cfg.train.cpus)}
    need = sum(n * cpus for n, cpus in roles.values())
    if need > available + 1e-9:
        parts = ", ".join(f"{role} {n} x {cpus:g}" for role, (n, cpus) in roles.items())
        where = "the cluster has" if cfg.run.ray_address else ("run.num_cpus is" if cfg.run.num_cpus else
                                                                "this machine has")
        sys.exit(f"error: the actors need {need:g} Ray CPUs ({parts}: rollout.num_actors x rollout.cpus_per_actor, "
                 f"reward.num_actors x reward.cpus_per_actor, train.num_actors x train.cpus) but {where} "
                 f"{available:g}; Ray could never place them all")


@contextlib.contextmanager
def frozen_gc() -> Iterator[None]:
    """Keep the objects alive now out of the garbage collector's view while the block runs.

    About half a million objects live in the driver by the RL loop (Ray, vLLM and transformers
    modules, the rows, the miner's ledger) and stay to the end; a full collection walked them all
    in about 0.25 s, which landed in whatever phase was allocating (mostly the wait for scores).
    Frozen, collections look only at what the steps create; thawed afterwards, so that shutdown
    frees them as usual (extension modules report what is never freed).
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@dataclass
class Actors:
    """The run's actors. `trainer` is rank 0 of the data-parallel `trainers` (the one that publishes
    weights and writes checkpoints); `placement` holds the reserved bundles; `supervisor`
    (`rl.supervise`), when set, replaces engines and reward actors that die or stall and redoes
    their work (the functions below go through it)."""

    rollouts: list[Any]
    rewards: list[Any]
    trainer: Any
    trainers: list[Any] = field(default_factory=list)
    placement: Placement | None = None
    transport: WeightTransport = field(default_factory=ObjectStoreTransport)
    supervisor: Supervisor | None = None

    def __post_init__(self) -> None:
        if not self.trainers and self.trainer is not None:
            self.trainers = [self.trainer]


def build_actors(cfg: Config, model_path: str, reward_worker: type, ref_path: str | None = None) -> Actors:
    """Rollout, reward and trainer actors, each in the bundle reserved for it (`rl.placement`; a
    cluster that cannot hold them raises `PlacementError` before any actor starts); engines and
    policy start from `model_path`, the KL reference from `ref_path` (default `model_path`).
    `reward_worker` is the reward actor's class (`rewards.pool.RewardWorker`), built from `cfg.reward`."""
    transport = make_transport(cfg.rollout.weight_transport)
    placement = reserve(roles(cfg), cfg.run.placement_timeout_s)
    start = {"rollout": lambda i: start_rollout(cfg, placement, i, model_path),
             "reward": lambda i: start_reward(cfg, placement, i, reward_worker)}
    rollouts = [start["rollout"](i) for i in range(cfg.rollout.num_actors)]
    rewards = [start["reward"](i) for i in range(cfg.reward.num_actors)]
    trainers = start_trainers(cfg, placement, model_path, ref_path)
    _wait_started({**{actor_name("rollout", i): r.info.remote() for i, r in enumerate(rollouts)},
                   **{actor_name("reward", i): r.info.remote() for i, r in enumerate(rewards)},
                   **{actor_name("trainer", i): t.state.remote() for i, t in enumerate(trainers)}})
    actors = Actors(rollouts, rewards, trainers[0], trainers, placement, transport)
    actors.supervisor = Supervisor(cfg, actors, start)
    return actors


def _wait_started(calls: dict[str, Any]) -> None:
    """Wait for every actor's first call (its constructor ran); `ActorStalled` naming those that did
    not answer within STARTUP_TIMEOUT_S."""
    refs = list(calls.values())
    _, pending = ray.wait(refs, num_returns=len(refs), timeout=STARTUP_TIMEOUT_S)
    if pending:
        late = [name for name, ref in calls.items() if ref in pending]
        raise ActorStalled([owner(r) for r in pending], STARTUP_TIMEOUT_S, f"starting {', '.join(late)}")
    ray.get(refs)


def start_rollout(cfg: Config, placement: Placement, i: int, model_path: str) -> Any:
    """Rollout engine `i` (named `rollout-i`) in its bundle, on `model_path`'s weights."""
    max_model_len = cfg.data.max_prompt_tokens + max(cfg.rollout.max_new_tokens, cfg.eval.max_new_tokens or 0)
    return (ray.remote(concurrency_groups=CONCURRENCY_GROUPS)(RolloutWorker)
            .options(name=actor_name("rollout", i), **placement.options("rollout", i))
            .remote(model_path, cfg.rollout, dtype=cfg.model.dtype, seed=cfg.run.seed + i, max_model_len=max_model_len))


def start_reward(cfg: Config, placement: Placement, i: int, reward_worker: type) -> Any:
    """Reward actor `i` (named `reward-i`) in its bundle."""
    return ray.remote(reward_worker).options(name=actor_name("reward", i), **placement.options("reward", i)).remote(cfg.reward)


def start_trainers(cfg: Config, placement: Placement, model_path: str, ref_path: str | None = None) -> list[Any]:
    """`train.num_actors` trainer actors; with more than one, they form one torch.distributed group
    (rank r in trainer bundle r) whose rendezvous address is found in rank 0's bundle."""
    # Decoupled PPO by default where samples can be off-policy (asynchronous training).
    auto = "on" if cfg.rollout.max_staleness else "off"
    train_cfg = replace(cfg.train, decoupled=auto if cfg.train.decoupled == "auto" else cfg.train.decoupled)
    world = cfg.train.num_actors
    envs: list[dict[str, str] | None] = [None]
    if world > 1:
        where = {**placement.options("trainer", 0), "num_cpus": 0, "num_gpus": 0}
        host, port = ray.get(ray.remote(_free_address).options(**where).remote())
        envs = [dict(RANK=str(r), WORLD_SIZE=str(world), LOCAL_RANK="0", LOCAL_WORLD_SIZE="1", MASTER_ADDR=host,
                     MASTER_PORT=str(port)) for r in range(world)]
    return [
        ray.remote(TrainerWorker)
        .options(name=actor_name("trainer", rank), **placement.options("trainer", rank))
        .remote(model_path, train_cfg, dtype=cfg.model.dtype, seed=cfg.run.seed,
                max_new_tokens=cfg.rollout.max_new_tokens, total_steps=cfg.run.steps, ref_path=ref_path, dist_env=env)
        for rank, env in enumerate(envs)
    ]


def _free_address() -> tuple[str, int]:
    """This node's address and a port free on it (run in rank 0's bundle: the process group's rendezvous)."""
    with socket.socket() as s:
        s.bind(("", 0))
        return ray.util.get_node_ip_address(), s.getsockname()[1]


def train(actors: Actors, samples: list[Sample]) -> dict[str, float]:
    """One update on every trainer (each on its share of `samples`, which travel once through the
    object store); rank 0's metrics, which are merged over all ranks."""
    batch = ray.put(samples)
    refs = [t.train_step.remote(batch) for t in actors.trainers]
    if actors.supervisor is None:
        return ray.get(refs)[0]
    return get_within(refs, actors.supervisor.timeouts.training(samples), "a trainer's update")[0]


def stop_actors(actors: Actors, timeout_s: float = 30.0) -> None:
    """Kill every actor, give their reserved bundles back to the cluster and wait (up to `timeout_s`)
    until their names are free, so that a Ray that goes on running (a test session's) can place and
    name the next run's actors."""
    for actor in [*actors.rollouts, *actors.rewards, *actors.trainers]:
        ray.kill(actor)
    if actors.placement is not None:
        actors.placement.release()
    wait_names_free([actor_name(role, i) for role, handles in (("rollout", actors.rollouts), ("reward", actors.rewards),
                                                               ("trainer", actors.trainers)) for i in range(len(handles))],
                    timeout_s)


def _place(actor: Any) -> tuple[str, int]:
    import ray as _ray

    return _ray.get_runtime_context().get_node_id(), os.getpid()


def busy_meter(actors: Actors) -> Any:
    """`rl.metrics.cores_busy` over the run's processes on this node (the driver and the actors placed
    here) and this node's cores (its Ray CPUs, at most its real cores): the share of what the run
    holds here that it keeps busy. Actors on other nodes are not counted. The actors are looked up
    again at every reading, so a replacement (`rl.supervise`) counts from its first reading on."""
    node = ray.get_runtime_context().get_node_id()
    pid_of: dict[str, int | None] = {}  # actor id -> its pid here (None: on another node)

    def pids() -> list[int]:
        handles = [*actors.rollouts, *actors.rewards, *actors.trainers]
        new = [h for h in handles if h._actor_id.hex() not in pid_of]
        if new:
            try:
                places = ray.get([h.__ray_call__.remote(lambda self: _place(self)) for h in new],
                                 timeout=STARTUP_TIMEOUT_S)
            except (ray.exceptions.RayError, TimeoutError):  # one is dying: looked up at the next reading
                places = []
            for h, (where, pid) in zip(new, places):
                pid_of[h._actor_id.hex()] = pid if where == node else None
        return [os.getpid(), *(pid for h in handles if (pid := pid_of.get(h._actor_id.hex())) is not None)]

    logical = next((n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n["NodeID"] == node), 0.0)
    return cores_busy(pids, min(logical, float(os.cpu_count() or 1)))


def _split(items: list, parts: int) -> list[list]:
    return [items[i::parts] for i in range(parts)]


def _within(actors: Actors, kind: str, *work: int) -> float | None:
    """The timeout of a call of `kind` ("generation", "scoring") with that work; None unsupervised."""
    return None if actors.supervisor is None else getattr(actors.supervisor.timeouts, kind)(*work)


def generate(actors: Actors, rows: list[dict], **sampling: Any) -> list[Sample]:
    """Spread prompts over the rollout actors; each returns `n` Samples per prompt."""
    parts = [p for p in _split(rows, len(actors.rollouts)) if p]
    results = get_within([r.generate.remote(p, **sampling) for r, p in zip(actors.rollouts, parts)],
                         _within(actors, "generation", len(rows), sampling["n"], sampling.get("max_new_tokens", 16)),
                         "generation")
    return [s for part in results for s in part]


def score(actors: Actors, samples: list[Sample]) -> tuple[list[Sample], dict[str, float]]:
    """Spread samples over the reward actors; the scored samples in the given order, stats summed."""
    k = len(actors.rewards)
    results = get_within([r.score.remote(p) for r, p in zip(actors.rewards, _split(samples, k)) if p],
                         _within(actors, "scoring", len(samples)), "scoring")
    scored: list[Sample] = [None] * len(samples)  # type: ignore[list-item]
    for i, (part, _) in enumerate(results):
        scored[i::k] = part  # `_split` dealt sample j to actor j % k
    return scored, _sum_stats(results)


def add_stats(total: dict[str, float], stats: dict[str, float]) -> None:
    """Add reward stats (counts and seconds) into `total`, key by key."""
    for key, value in stats.items():
        total[key] = total.get(key, 0.0) + value


def _sum_stats(results: list[tuple[list[Sample], dict[str, float]]]) -> dict[str, float]:
    """The stats of reward actors' (samples, stats) answers, summed."""
    stats: dict[str, float] = {}
    for _, part_stats in results:
        add_stats(stats, part_stats)
    return stats


def generate_and_score(actors: Actors, rows: list[dict], *, overlap: bool = True, timer: PhaseTimer | None = None,
                       **sampling: Any) -> tuple[list[Sample], dict[str, float]]:
    """`generate` then `score`: the same samples, in the same order, with the same merged stats.

    With `overlap`, each rollout actor sends every prompt's group to a reward actor as soon as its
    completions finish (`RolloutWorker.generate_scored`), so scoring runs while the engine still
    generates. `timer` phases: `generate` (until every engine is done) and `reward` (the wait for
    scores after that, i.e. what scoring still adds to the step); the stats' `time/reward_compute`
    stays the reward actors' busy seconds.
    """
    if actors.supervisor is None:
        return _generate_and_score(actors, rows, overlap=overlap, timer=timer, **sampling)
    return actors.supervisor.redo(lambda: _generate_and_score(actors, rows, overlap=overlap, timer=timer, **sampling),
                                  draw=True)


def _generate_and_score(actors: Actors, rows: list[dict], *, overlap: bool, timer: PhaseTimer | None,
                        **sampling: Any) -> tuple[list[Sample], dict[str, float]]:
    timer = timer or PhaseTimer()
    if not overlap:
        with timer("generate"):
            samples = generate(actors, rows, **sampling)
        with timer("reward"):
            return score(actors, samples)
    parts = [p for p in _split(rows, len(actors.rollouts)) if p]
    with timer("generate"):
        calls = get_within([r.generate_scored.remote(p, actors.rewards, **sampling)
                            for r, p in zip(actors.rollouts, parts)],
                           _within(actors, "generation", len(rows), sampling["n"], sampling.get("max_new_tokens", 16)),
                           "generation")
    sent = [(part, row_indices, ref) for part, part_calls in enumerate(calls) for row_indices, ref in part_calls]
    with timer("reward"):
        results = get_within([ref for _, _, ref in sent], _within(actors, "scoring", len(rows) * sampling["n"]),
                             "scoring")
    # Back into `generate`'s order: rollout actor by actor, row by row, `n` samples per row.
    n, groups = sampling["n"], {}
    for (part, row_indices, _), (scored, _) in zip(sent, results):
        for j, i in enumerate(row_indices):
            groups[part, i] = scored[j * n : (j + 1) * n]
    return [s for key in sorted(groups) for s in groups[key]], _sum_stats(results)


def sync_weights(actors: Actors, version: int) -> dict[str, float]:
    """Rank 0's weights into every rollout engine, in place, by the actors' transport (`rl.broadcast`);
    the sync's metrics: bytes and seconds per engine."""
    if actors.supervisor is None:
        return actors.transport.broadcast(actors.trainer, actors.rollouts, version).metrics()
    timeout = actors.supervisor.timeouts.call()
    return actors.supervisor.redo(
        lambda: actors.transport.broadcast(actors.trainer, actors.rollouts, version, timeout).metrics(), draw=False)


def evaluate(actors: Actors, rows: list[dict], cfg: Config) -> dict[str, float]:
    """Sampled pass rate on held-out prompts, overall and per domain."""
    samples, _ = generate_and_score(
        actors,
        rows,
        overlap=cfg.reward.overlap,
        n=cfg.eval.samples_per_prompt,
        temperature=cfg.eval.temperature,
        max_new_tokens=cfg.eval.max_new_tokens or cfg.rollout.max_new_tokens,
        record_routing=False,
    )
    result = {"pass_rate": sum(s.passed for s in samples) / len(samples)}
    for domain in sorted({s.domain for s in samples}):
        items = [s for s in samples if s.domain == domain]
        result[f"pass_rate/{domain}"] = sum(s.passed for s in items) / len(items)
    return result


def offline_pass(cfg: Config, actors: Actors, miner: Any) -> None:
    """The miner's offline pass (every train prompt estimated before RL), generated with the rollout
    settings, and a line saying what it found."""
    start = time.time()
    offline = miner.offline_pass(lambda rows, n: generate_and_score(
        actors, rows, overlap=cfg.reward.overlap, n=n, temperature=cfg.rollout.temperature,
        top_p=cfg.rollout.top_p, max_new_tokens=cfg.rollout.max_new_tokens)[0])
    bands = ", ".join(f"{k.removeprefix('mining/band/')} {v:.0f}" for k, v in offline.items() if "/band/" in k)
    print(f"offline pass: {offline['mining/offline_rollouts']:.0f} rollouts in {time.time() - start:.0f} s; {bands}",
          flush=True)
