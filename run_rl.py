"""RL post-training of a Mixture-of-Experts checkpoint with Ray + vLLM (GRPO family).

    python run_rl.py --config configs/tiny_cpu.yaml train.lr=1e-5
"""

from __future__ import annotations

import gc
import json
import shutil
import sys
import time
from pathlib import Path

import ray

from data_mining.bootstrap import BootstrapSpec, bootstrap
from data_mining.datasets import DatasetError, load_datasets, split_heldout
from data_mining.miner import Miner
from data_mining.sampler import EpochSampler
from data_mining.tasks import make_task_split
from rl.actors import (ENGINE_RNG, Actors, add_stats, build_actors, evaluate, generate_and_score, resume_actors,
                       save_actors, start_ray, sync_weights)
from rl.config import Config, parse_cli, save_config
from rl.metrics import MetricsLog, PhaseTimer, sample_metrics
from rl.report import write_report
from rl.trainer import TRAINER_STATE

RESUME = "resume.json"  # in every checkpoint: {"step": the step a resumed run starts at}


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


def resume_step(cfg: Config) -> int:
    """The step a run resumed from run.resume starts at (0 for a fresh run). A directory that is not
    a checkpoint written by `save_checkpoint` exits with status 2, naming it and what it lacks."""
    if not cfg.run.resume:
        return 0
    path = Path(cfg.run.resume)
    needs = {"config.json": "config.json", "*.safetensors": "weights (*.safetensors)",
             TRAINER_STATE: TRAINER_STATE, ENGINE_RNG: ENGINE_RNG, "ledger.parquet": "ledger.parquet", RESUME: RESUME}
    missing = [what for pattern, what in needs.items() if not any(path.glob(pattern))]
    problem = "does not exist" if not path.is_dir() else f"lacks {', '.join(missing)}" if missing else ""
    if not problem:
        try:
            return int(json.loads((path / RESUME).read_text())["step"])
        except (ValueError, KeyError, TypeError) as exc:
            problem = f"has an unreadable {RESUME} ({exc!r})"
    print(f"error: run.resume {str(path)!r} is not a checkpoint directory to resume from: it {problem}",
          file=sys.stderr, flush=True)
    sys.exit(2)


def save_checkpoint(cfg: Config, actors: Actors, miner: Miner, path: Path, step: int) -> None:
    """Everything `run.resume=path` continues from: weights (a normal Hugging Face checkpoint with its
    tokenizer), trainer and engine state, the ledger with the sampler state, and the step to start at."""
    save_actors(actors, path)
    for f in Path(cfg.model.path).iterdir():  # tokenizer files travel with the weights
        if f.name.startswith(("tokenizer", "special_tokens")) or f.name == "chat_template.jinja":
            shutil.copy(f, path / f.name)
    miner.save(path)
    (path / RESUME).write_text(json.dumps({"step": step, "of_steps": cfg.run.steps}))


def setup_run(cfg: Config, model_path: str, train_rows: list[dict]) -> tuple[Actors, Miner, int]:
    """Actors, miner and first step. Resumed (run.resume): policy and engines load the checkpoint's
    weights (the KL reference stays `model_path`), and the trainer's optimiser, LR schedule, version and
    RNG, the engines' RNG and the ledger and sampler continue from it."""
    start = resume_step(cfg)
    actors = build_actors(cfg, cfg.run.resume or model_path, ref_path=model_path)
    miner = Miner.from_config(cfg, train_rows)
    if cfg.run.resume:
        miner.load(cfg.run.resume)
        version = resume_actors(actors, cfg.run.resume)
        print(f"resumed from {cfg.run.resume} at step {start} of {cfg.run.steps} (policy version {version}): "
              "weights, optimiser, LR schedule, RNG streams, ledger and sampler restored", flush=True)
    return actors, miner, start


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
    def draw(rows: list[dict], n: int) -> list:
        samples, stats = generate_and_score(actors, rows, overlap=cfg.reward.overlap, timer=timer, n=n,
                                            temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                                            max_new_tokens=cfg.rollout.max_new_tokens)
        add_stats(reward_stats, stats)
        return samples
    return draw


def rl_loop(cfg: Config, actors: Actors, data: Miner | EpochSampler, log: MetricsLog, run_dir: Path,
            deadline: float | None = None, start: int = 0) -> int:
    """The RL steps `start`..run.steps-1: draw (mine) -> generate -> reward -> update -> push weights,
    each phase timed. Returns the steps done by the end (fewer than run.steps when the deadline passes)."""
    miner = data if isinstance(data, Miner) else Miner.from_config(cfg, data.rows, sampler=data)
    for step in range(start, cfg.run.steps):
        if deadline is not None and time.time() >= deadline:
            print(f"run.max_seconds reached at step {step}", flush=True)
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
            save_checkpoint(cfg, actors, miner, run_dir / f"checkpoint-{step + 1}", step + 1)
            miner.save(run_dir)
    return cfg.run.steps


def main(argv: list[str] | None = None) -> int:
    cfg, args = parse_cli(argv, description=__doc__)
    start_step = resume_step(cfg)
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
        if cfg.run.resume:
            print(f"resume: from {cfg.run.resume} at step {start_step}")
        return 0

    start_ray(cfg)
    actors, miner, start_step = setup_run(cfg, model_path, train_rows)
    log = MetricsLog(run_dir, cfg.run.steps, cfg.monitor, domains={r["domain"] for r in train_rows})
    summary: dict = {"model": model_path}
    if cfg.eval.before and cfg.run.resume:
        print("held-out evaluation before RL skipped: a resumed run's policy is no longer the starting one", flush=True)
    elif cfg.eval.before:
        summary["heldout_before"] = evaluate(actors, heldout_rows, cfg)
        print(f"held-out sampled pass rate before RL: {_rates(summary['heldout_before'])}", flush=True)

    start = time.time()
    if cfg.mining.enabled and cfg.mining.offline_pass and not cfg.run.resume:
        offline = miner.offline_pass(rollouts(cfg, actors, PhaseTimer(), {}))
        print(f"offline pass: {offline['mining/offline_rollouts']:.0f} rollouts in {time.time() - start:.0f} s; "
              + ", ".join(f"{k.removeprefix('mining/band/')} {v:.0f}" for k, v in offline.items() if "/band/" in k), flush=True)
    # About half a million objects live in this process by now (Ray, vLLM and transformers modules,
    # the rows, the miner's ledger) and stay to the end; a full collection walked them all in about
    # 0.25 s, which landed in whatever phase was allocating (mostly the wait for scores). Frozen,
    # collections look only at what the steps create. Thawed afterwards, so that shutdown frees them
    # as usual (extension modules report what is never freed).
    gc.collect()
    gc.freeze()
    try:
        steps = rl_loop(cfg, actors, miner, log, run_dir, start + cfg.run.max_seconds if cfg.run.max_seconds else None,
                        start=start_step)
    finally:
        gc.unfreeze()
    log.close()
    summary["steps"] = steps
    summary["mining"] = {**miner.totals, "rollouts_per_useful_group": miner.totals["rollouts"] / max(1, miner.totals["useful_groups"])}

    final = run_dir / "final"
    save_checkpoint(cfg, actors, miner, final, steps)
    if cfg.eval.after:
        summary["heldout_after"] = evaluate(actors, heldout_rows, cfg)
    summary["final_checkpoint"] = str(final)
    miner.save(run_dir)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    before, after = summary.get("heldout_before"), summary.get("heldout_after")
    print(f"held-out sampled pass rate: before {_rates(before)} -> after {_rates(after)}; checkpoint {final}",
          flush=True)
    try:  # everything is saved by now; a plotting failure must not fail the run
        print(f"report: {write_report(run_dir)}", flush=True)
    except Exception as exc:  # noqa: BLE001
        print(f"WARNING: the report could not be written ({type(exc).__name__}: {exc}); the run's results are "
              f"saved; retry with `python -m rl.report {run_dir}`", file=sys.stderr, flush=True)
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
