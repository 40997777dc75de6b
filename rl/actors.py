"""Where work is placed: starting Ray and the named actors, and fanning work out to them."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import ray
import torch

from rewards.custom import pin_spec
from rewards.pool import RewardWorker, setup_rewards
from rl.config import Config
from rl.metrics import PhaseTimer
from rl.rollout import RolloutWorker
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


@dataclass
class Actors:
    rollouts: list[Any]
    rewards: list[Any]
    trainer: Any


def build_actors(cfg: Config, model_path: str, ref_path: str | None = None) -> Actors:
    """Rollout, reward and trainer actors; engines and policy start from `model_path`, the KL
    reference from `ref_path` (default `model_path`)."""
    # Checked in the driver first: a bad custom reward, route or reward model stops the run here,
    # naming it, before any actor starts. Each reward actor repeats the set-up in its own process.
    reward_config = replace(cfg.reward, custom=tuple(pin_spec(spec) for spec in cfg.reward.custom))
    setup_rewards(reward_config, load_models=False)
    max_model_len = cfg.data.max_prompt_tokens + max(cfg.rollout.max_new_tokens, cfg.eval.max_new_tokens or 0)
    rollouts = [
        ray.remote(RolloutWorker)
        .options(name=f"rollout-{i}", num_cpus=cfg.rollout.cpus_per_actor)
        .remote(
            model_path,
            dtype=cfg.model.dtype,
            seed=cfg.run.seed + i,
            threads=cfg.rollout.threads,
            kv_cache_gib=cfg.rollout.kv_cache_gib,
            enforce_eager=cfg.rollout.enforce_eager,
            max_model_len=max_model_len,
            record_routing=cfg.rollout.record_routing,
        )
        for i in range(cfg.rollout.num_actors)
    ]
    rewards = [
        ray.remote(RewardWorker).options(name=f"reward-{i}", num_cpus=cfg.reward.cpus_per_actor).remote(reward_config)
        for i in range(cfg.reward.num_actors)
    ]
    trainer = (
        ray.remote(TrainerWorker)
        .options(name="trainer", num_cpus=cfg.train.cpus)
        .remote(
            model_path,
            asdict(cfg.train),
            dtype=cfg.model.dtype,
            seed=cfg.run.seed,
            max_new_tokens=cfg.rollout.max_new_tokens,
            total_steps=cfg.run.steps,
            ref_path=ref_path,
        )
    )
    ray.get([r.info.remote() for r in rollouts + rewards] + [trainer.state.remote()])
    return Actors(rollouts, rewards, trainer)


ENGINE_RNG = "rollout_rng.pt"  # each rollout engine's sampler state (`RolloutWorker.rng_state`)


def save_actors(actors: Actors, path: str | Path) -> None:
    """The trainer's checkpoint (weights, optimiser, LR schedule, version, RNG) and each rollout
    engine's RNG state (`rollout_rng.pt`) into `path`."""
    ray.get(actors.trainer.save.remote(str(path)))
    torch.save(ray.get([r.rng_state.remote() for r in actors.rollouts]), Path(path) / ENGINE_RNG)


def resume_actors(actors: Actors, path: str | Path) -> int:
    """Restore what `save_actors` wrote, on actors built from `path`'s weights; returns the policy version."""
    version = ray.get(actors.trainer.load_state.remote(str(path)))
    states = torch.load(Path(path) / ENGINE_RNG, weights_only=True)
    if len(states) != len(actors.rollouts):
        print(f"warning: {path} holds {len(states)} rollout engine states for {len(actors.rollouts)} engines; "
              "sampling will not repeat the interrupted run", flush=True)
    ray.get([r.restore.remote(states[i] if i < len(states) else None, version)
             for i, r in enumerate(actors.rollouts)])
    return version


def _split(items: list, parts: int) -> list[list]:
    return [items[i::parts] for i in range(parts)]


def generate(actors: Actors, rows: list[dict], **sampling: Any) -> list[Sample]:
    """Spread prompts over the rollout actors; each returns `n` Samples per prompt."""
    parts = [p for p in _split(rows, len(actors.rollouts)) if p]
    results = ray.get([r.generate.remote(p, **sampling) for r, p in zip(actors.rollouts, parts)])
    return [s for part in results for s in part]


def score(actors: Actors, samples: list[Sample]) -> tuple[list[Sample], dict[str, float]]:
    """Spread samples over the reward actors; the scored samples in the given order, stats summed."""
    k = len(actors.rewards)
    results = ray.get([r.score.remote(p) for r, p in zip(actors.rewards, _split(samples, k)) if p])
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
    timer = timer or PhaseTimer()
    if not overlap:
        with timer("generate"):
            samples = generate(actors, rows, **sampling)
        with timer("reward"):
            return score(actors, samples)
    parts = [p for p in _split(rows, len(actors.rollouts)) if p]
    with timer("generate"):
        calls = ray.get([r.generate_scored.remote(p, actors.rewards, **sampling) for r, p in zip(actors.rollouts, parts)])
    sent = [(part, row_indices, ref) for part, part_calls in enumerate(calls) for row_indices, ref in part_calls]
    with timer("reward"):
        results = ray.get([ref for _, _, ref in sent])
    # Back into `generate`'s order: rollout actor by actor, row by row, `n` samples per row.
    n, groups = sampling["n"], {}
    for (part, row_indices, _), (scored, _) in zip(sent, results):
        for j, i in enumerate(row_indices):
            groups[part, i] = scored[j * n : (j + 1) * n]
    return [s for key in sorted(groups) for s in groups[key]], _sum_stats(results)


def sync_weights(actors: Actors, version: int) -> float:
    """Trainer weights into every rollout engine, in place; returns the slowest engine's seconds."""
    weights = actors.trainer.weights.remote()
    return max(ray.get([r.load_weights.remote(weights, version) for r in actors.rollouts]))


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
