"""RL post-training of a Mixture-of-Experts checkpoint with Ray + vLLM (GRPO family).

    python run_rl.py --config configs/tiny_cpu.yaml train.lr=1e-5
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

import ray

from data_mining.filters import filter_groups
from data_mining.sampler import EpochSampler
from data_mining.tasks import make_split
from rl.actors import Actors, build_actors, evaluate, generate, score, start_ray, sync_weights
from rl.bootstrap import BootstrapSpec, bootstrap
from rl.config import Config, parse_cli, save_config
from rl.metrics import MetricsLog, PhaseTimer, sample_metrics
from rl.report import write_report


def prepare_checkpoint(cfg: Config, dry_run: bool = False) -> str:
    path = Path(cfg.model.path)
    if (path / "config.json").exists():
        return str(path)
    if not cfg.model.bootstrap:
        sys.exit(f"error: model.path {str(path)!r} is not a Hugging Face checkpoint directory (no config.json)")
    if dry_run:
        return f"{path} (to be bootstrapped)"
    # The starting checkpoint is a fixed artifact (bootstrap seed 0), whatever the RL seed.
    spec = BootstrapSpec(min_digits=cfg.data.min_digits, max_digits=cfg.data.max_digits)
    return str(bootstrap(path, spec))


def load_prompts(cfg: Config) -> tuple[list[dict], list[dict]]:
    train, heldout = make_split(
        cfg.data.train_prompts, cfg.data.heldout_prompts, seed=cfg.run.seed,
        min_digits=cfg.data.min_digits, max_digits=cfg.data.max_digits,
    )
    return [asdict(r) for r in train], [asdict(r) for r in heldout]


def rl_loop(cfg: Config, actors: Actors, sampler: EpochSampler, log: MetricsLog, run_dir: Path) -> None:
    """The RL steps: generate -> reward -> update -> push weights, each phase timed."""
    for step in range(cfg.run.steps):
        timer = PhaseTimer()
        with timer("generate"):
            samples = generate(
                actors, sampler.next(cfg.train.prompts_per_step), n=cfg.rollout.samples_per_prompt,
                temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                max_new_tokens=cfg.rollout.max_new_tokens,
            )
        with timer("reward"):
            samples, reward_stats = score(actors, samples)
        batch, filter_stats = filter_groups(samples) if cfg.train.drop_zero_variance_groups else (samples, {})
        train_stats: dict = {}
        if batch:  # a step where every group was uniform has nothing to learn; the run goes on
            with timer("train"):
                train_stats = ray.get(actors.trainer.train_step.remote(batch))
            with timer("sync"):
                train_stats["time/weight_sync_engine"] = sync_weights(actors, int(train_stats["policy_version"]))
        tokens = sum(len(s.completion_ids) for s in samples)
        metrics = {**sample_metrics(samples), **reward_stats, **filter_stats, **train_stats, **timer.seconds,
                   "perf/tokens_per_second": tokens / timer.seconds["time/generate"]}
        gap = metrics.get("rollout/logprob_abs_diff_max", 0.0)
        if gap > cfg.rollout.logprob_gap_warn:
            print(f"WARNING: rollout/trainer log-prob gap {gap:.2e} exceeds "
                  f"{cfg.rollout.logprob_gap_warn:.0e} at step {step}", flush=True)
        log.log(step, metrics)
        if cfg.run.save_every and (step + 1) % cfg.run.save_every == 0:
            ray.get(actors.trainer.save.remote(str(run_dir / f"checkpoint-{step + 1}")))


def main(argv: list[str] | None = None) -> int:
    cfg, args = parse_cli(argv, description=__doc__)
    run_dir = Path(cfg.run.dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    model_path = prepare_checkpoint(cfg, dry_run=args.dry_run)
    train_rows, heldout_rows = load_prompts(cfg)
    if args.dry_run:
        print(f"plan: {cfg.run.steps} steps x {cfg.train.prompts_per_step} prompts x "
              f"{cfg.rollout.samples_per_prompt} samples on {model_path}; {len(train_rows)} train / "
              f"{len(heldout_rows)} held-out prompts; run dir {run_dir}")
        return 0

    start_ray(cfg)
    actors = build_actors(cfg, model_path)
    sampler = EpochSampler(train_rows, seed=cfg.run.seed)
    log = MetricsLog(run_dir, cfg.run.steps)
    summary: dict = {"model": model_path}
    if cfg.eval.before:
        summary["heldout_before"] = evaluate(actors, heldout_rows, cfg)
        print(f"held-out sampled pass rate before RL: {summary['heldout_before']['pass_rate']:.3f}", flush=True)

    rl_loop(cfg, actors, sampler, log, run_dir)
    log.close()

    final = run_dir / "final"
    ray.get(actors.trainer.save.remote(str(final)))
    for f in Path(model_path).iterdir():  # tokenizer files travel with the weights
        if f.name.startswith(("tokenizer", "special_tokens")) or f.name == "chat_template.jinja":
            shutil.copy(f, final / f.name)
    if cfg.eval.after:
        summary["heldout_after"] = evaluate(actors, heldout_rows, cfg)
    summary["final_checkpoint"] = str(final)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    before = summary.get("heldout_before", {}).get("pass_rate")
    after = summary.get("heldout_after", {}).get("pass_rate")
    print(f"held-out sampled pass rate: before {before} -> after {after}; checkpoint {final}", flush=True)
    print(f"report: {write_report(run_dir)}", flush=True)
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
