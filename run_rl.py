"""RL post-training of a Mixture-of-Experts checkpoint with Ray + vLLM (GRPO family).

    python run_rl.py --config configs/tiny_cpu.yaml train.lr=1e-5
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import ray

from data_mining.datasets import DatasetError, load_datasets, split_heldout
from data_mining.miner import Miner
from data_mining.sampler import EpochSampler
from data_mining.tasks import make_task_split
from rl.actors import Actors, build_actors, evaluate, generate, score, start_ray, sync_weights
from rl.bootstrap import BootstrapSpec, bootstrap
from rl.config import Config, parse_cli, save_config
from rl.metrics import MetricsLog, PhaseTimer, sample_metrics
from rl.report import write_report


def prepare_checkpoint(cfg: Config, dry_run: bool = False) -> str:
    path = Path(cfg.model.path)
    if (path / "config.json").exists():
        if dry_run:
            check_checkpoint(path)
        return str(path)
    if path.exists():  # bootstrapping would replace whatever is there
        sys.exit(f"error: model.path {str(path)!r} exists but is not a Hugging Face checkpoint directory "
                 "(no config.json)")
    if not cfg.model.bootstrap:
        sys.exit(f"error: model.path {str(path)!r} does not exist and model.bootstrap is false")
    if dry_run:
        return f"{path} (to be bootstrapped)"
    # The starting checkpoint is a fixed artifact (bootstrap seed 0), whatever the RL seed.
    spec = BootstrapSpec(tasks=tuple(cfg.data.tasks), task_weights=tuple(cfg.data.task_weights),
                         min_digits=cfg.data.min_digits, max_digits=cfg.data.max_digits)
    return str(bootstrap(path, spec))


def check_checkpoint(path: Path) -> None:
    """Exit naming the problem when `path` lacks what the actors load: model config, weights, tokenizer."""
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        sys.exit(f"error: model.path {str(path)!r} has no usable config.json: {exc}")
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        sys.exit(f"error: model.path {str(path)!r} has no weight files (*.safetensors or *.bin)")
    # transformers builds an empty tokenizer rather than fail when the files are missing.
    if not any((path / name).exists() for name in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        sys.exit(f"error: model.path {str(path)!r} has no tokenizer (tokenizer.json, tokenizer.model or vocab.json)")


def load_prompts(cfg: Config) -> tuple[list[dict], list[dict]]:
    """Train and held-out rows: the configured datasets, validated (bad rows reported), or the procedural task."""
    if cfg.data.datasets:
        tokenizer = None  # a checkpoint still to be bootstrapped has none yet: lengths count bytes
        if (Path(cfg.model.path) / "config.json").exists():
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(cfg.model.path)
        try:
            rows, report = load_datasets(cfg.data.datasets, cfg.data.dataset_weights, tokenizer,
                                         cfg.data.max_prompt_tokens)
        except DatasetError as exc:
            sys.exit(f"error: {exc}")
        print(report.summary(), flush=True)
        train, heldout = split_heldout(rows, cfg.data.heldout_fraction, cfg.data.heldout_prompts)
        if not train or (not heldout and (cfg.eval.before or cfg.eval.after)):
            sys.exit(f"error: {len(rows)} valid dataset rows split into {len(train)} train / {len(heldout)} held-out "
                     "prompts; adjust data.heldout_fraction (or set eval.before=false eval.after=false)")
        return train, heldout
    train, heldout = make_task_split(
        list(cfg.data.tasks), list(cfg.data.task_weights), cfg.data.train_prompts, cfg.data.heldout_prompts,
        seed=cfg.run.seed, min_digits=cfg.data.min_digits, max_digits=cfg.data.max_digits,
    )
    if (Path(cfg.model.path) / "config.json").exists():  # another checkpoint's tokenizer may spell prompts longer
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(cfg.model.path)
        fits = lambda row: len(tokenizer(row["prompt"])["input_ids"]) <= cfg.data.max_prompt_tokens  # noqa: E731
        kept_train, kept_heldout = [r for r in train if fits(r)], [r for r in heldout if fits(r)]
        if len(kept_train) < len(train) or len(kept_heldout) < len(heldout):
            print(f"skipped {len(train) - len(kept_train)} train / {len(heldout) - len(kept_heldout)} held-out "
                  f"procedural prompts longer than data.max_prompt_tokens={cfg.data.max_prompt_tokens}", flush=True)
        if not kept_train:
            sys.exit(f"error: every procedural train prompt is longer than data.max_prompt_tokens="
                     f"{cfg.data.max_prompt_tokens} tokens with the tokenizer of {cfg.model.path}")
        train, heldout = kept_train, kept_heldout
    return train, heldout


def _rates(result: dict | None) -> str:
    """'0.292 (code 0.559, instruction 0.641, math 0.133)' from evaluate()'s result; 'n/a' without one."""
    if not result:
        return "n/a"
    domains = ", ".join(f"{k.split('/', 1)[1]} {v:.3f}" for k, v in sorted(result.items()) if "/" in k)
    return f"{result['pass_rate']:.3f}" + (f" ({domains})" if domains else "")


def rollouts(cfg: Config, actors: Actors, timer: PhaseTimer, reward_stats: dict):
    """The miner's link to the policy: `n` scored Samples per row, timed, reward stats summed."""
    def generate_and_score(rows: list[dict], n: int) -> list:
        with timer("generate"):
            samples = generate(actors, rows, n=n, temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                               max_new_tokens=cfg.rollout.max_new_tokens)
        with timer("reward"):
            samples, stats = score(actors, samples)
        for key, value in stats.items():
            reward_stats[key] = reward_stats.get(key, 0.0) + value
        return samples
    return generate_and_score


def rl_loop(cfg: Config, actors: Actors, data: Miner | EpochSampler, log: MetricsLog, run_dir: Path,
            deadline: float | None = None) -> int:
    """The RL steps: draw (mine) -> generate -> reward -> update -> push weights, each phase timed.
    Returns the number of steps run (fewer than run.steps when the deadline passes)."""
    miner = data if isinstance(data, Miner) else Miner.from_config(cfg, data.rows, sampler=data)
    for step in range(cfg.run.steps):
        if deadline is not None and time.time() >= deadline:
            print(f"run.max_seconds reached after {step} steps", flush=True)
            return step
        timer, reward_stats = PhaseTimer(), {}
        drawn = miner.next_batch(step, rollouts(cfg, actors, timer, reward_stats))
        batch, samples = drawn.train, drawn.generated
        train_stats: dict = {}
        if batch:  # a step where every group was uniform has nothing to learn; the run goes on
            with timer("train"):
                train_stats = ray.get(actors.trainer.train_step.remote(batch))
            with timer("sync"):
                train_stats["time/weight_sync_engine"] = sync_weights(actors, int(train_stats["policy_version"]))
        tokens = sum(len(s.completion_ids) for s in samples)
        metrics = {**sample_metrics(samples), **reward_stats, **drawn.metrics, **train_stats, **timer.seconds,
                   "perf/tokens_per_second": tokens / timer.seconds["time/generate"]}
        gap = metrics.get("rollout/logprob_abs_diff_max", 0.0)
        if gap > cfg.rollout.logprob_gap_warn:
            print(f"WARNING: rollout/trainer log-prob gap {gap:.2e} exceeds "
                  f"{cfg.rollout.logprob_gap_warn:.0e} at step {step}", flush=True)
        log.log(step, metrics)
        if cfg.run.save_every and (step + 1) % cfg.run.save_every == 0:
            ray.get(actors.trainer.save.remote(str(run_dir / f"checkpoint-{step + 1}")))
            miner.save(run_dir / f"checkpoint-{step + 1}")
            miner.save(run_dir)
    return cfg.run.steps


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
        m = cfg.monitor
        sinks = [name for name, on in (("metrics.jsonl", True), ("Ray metrics", m.ray_metrics),
                                       ("TensorBoard", m.tensorboard), ("W&B", m.wandb)) if on]
        where = "the cluster's" if cfg.run.ray_address else f"{m.dashboard_host}:{m.dashboard_port}"
        print(f"monitor: Ray dashboard on {where}; metrics to {', '.join(sinks)}; progress {m.progress}")
        return 0

    start_ray(cfg)
    actors = build_actors(cfg, model_path)
    miner = Miner.from_config(cfg, train_rows)
    if cfg.run.resume:
        miner.load(cfg.run.resume)
        print(f"data side resumed from {cfg.run.resume}", flush=True)
    log = MetricsLog(run_dir, cfg.run.steps, cfg.monitor, domains={r["domain"] for r in train_rows})
    summary: dict = {"model": model_path}
    if cfg.eval.before:
        summary["heldout_before"] = evaluate(actors, heldout_rows, cfg)
        print(f"held-out sampled pass rate before RL: {_rates(summary['heldout_before'])}", flush=True)

    start = time.time()
    if cfg.mining.enabled and cfg.mining.offline_pass and not cfg.run.resume:
        offline = miner.offline_pass(rollouts(cfg, actors, PhaseTimer(), {}))
        print(f"offline pass: {offline['mining/offline_rollouts']:.0f} rollouts in {time.time() - start:.0f} s; "
              + ", ".join(f"{k.removeprefix('mining/band/')} {v:.0f}" for k, v in offline.items() if "/band/" in k), flush=True)
    steps = rl_loop(cfg, actors, miner, log, run_dir, start + cfg.run.max_seconds if cfg.run.max_seconds else None)
    log.close()
    summary["steps"] = steps
    summary["mining"] = {**miner.totals, "rollouts_per_useful_group": miner.totals["rollouts"] / max(1, miner.totals["useful_groups"])}

    final = run_dir / "final"
    ray.get(actors.trainer.save.remote(str(final)))
    for f in Path(model_path).iterdir():  # tokenizer files travel with the weights
        if f.name.startswith(("tokenizer", "special_tokens")) or f.name == "chat_template.jinja":
            shutil.copy(f, final / f.name)
    if cfg.eval.after:
        summary["heldout_after"] = evaluate(actors, heldout_rows, cfg)
    summary["final_checkpoint"] = str(final)
    miner.save(final)
    miner.save(run_dir)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    before, after = summary.get("heldout_before"), summary.get("heldout_after")
    print(f"held-out sampled pass rate: before {_rates(before)} -> after {_rates(after)}; checkpoint {final}",
          flush=True)
    print(f"report: {write_report(run_dir)}", flush=True)
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
