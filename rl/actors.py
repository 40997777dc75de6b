"""Where work is placed: starting Ray and the named actors, and fanning work out to them."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import ray

from rewards.pool import RewardWorker
from rl.config import Config
from rl.rollout import RolloutWorker
from rl.trainer import TrainerWorker
from rl.types import Sample


def start_ray(cfg: Config) -> None:
    if cfg.run.ray_address:
        ray.init(address=cfg.run.ray_address, log_to_driver=True)
    else:
        ray.init(num_cpus=cfg.run.num_cpus, log_to_driver=True, include_dashboard=False)


@dataclass
class Actors:
    rollouts: list[Any]
    rewards: list[Any]
    trainer: Any


def build_actors(cfg: Config, model_path: str) -> Actors:
    max_model_len = 64 + max(cfg.rollout.max_new_tokens, cfg.eval.max_new_tokens or 0)
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
        ray.remote(RewardWorker).options(name=f"reward-{i}", num_cpus=cfg.reward.cpus_per_actor).remote()
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
        )
    )
    ray.get([r.info.remote() for r in rollouts] + [trainer.state.remote()])
    return Actors(rollouts, rewards, trainer)


def _split(items: list, parts: int) -> list[list]:
    return [items[i::parts] for i in range(parts)]


def generate(actors: Actors, rows: list[dict], **sampling: Any) -> list[Sample]:
    """Spread prompts over the rollout actors; each returns `n` Samples per prompt."""
    parts = [p for p in _split(rows, len(actors.rollouts)) if p]
    results = ray.get([r.generate.remote(p, **sampling) for r, p in zip(actors.rollouts, parts)])
    return [s for part in results for s in part]


def score(actors: Actors, samples: list[Sample]) -> tuple[list[Sample], dict[str, float]]:
    parts = [p for p in _split(samples, len(actors.rewards)) if p]
    results = ray.get([r.score.remote(p) for r, p in zip(actors.rewards, parts)])
    stats: dict[str, float] = {}
    for _, part_stats in results:
        for k, v in part_stats.items():
            stats[k] = stats.get(k, 0.0) + v
    return [s for part, _ in results for s in part], stats


def sync_weights(actors: Actors, version: int) -> float:
    """Trainer weights into every rollout engine, in place; returns the slowest engine's seconds."""
    weights = actors.trainer.weights.remote()
    return max(ray.get([r.load_weights.remote(weights, version) for r in actors.rollouts]))


def evaluate(actors: Actors, rows: list[dict], cfg: Config) -> dict[str, float]:
    """Sampled pass rate on held-out prompts, overall and per domain."""
    samples = generate(
        actors,
        rows,
        n=cfg.eval.samples_per_prompt,
        temperature=cfg.eval.temperature,
        max_new_tokens=cfg.eval.max_new_tokens or cfg.rollout.max_new_tokens,
        record_routing=False,
    )
    samples, _ = score(actors, samples)
    result = {"pass_rate": sum(s.passed for s in samples) / len(samples)}
    for domain in sorted({s.domain for s in samples}):
        items = [s for s in samples if s.domain == domain]
        result[f"pass_rate/{domain}"] = sum(s.passed for s in items) / len(items)
    return result
