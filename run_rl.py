"""RL post-training of a Mixture-of-Experts checkpoint with Ray + vLLM (GRPO family).

    python run_rl.py --config configs/tiny_cpu.yaml train.lr=1e-5
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import ray

from data_mining.bootstrap import embedded_builder
from data_mining.datasets import DatasetError
from data_mining.miner import Miner
from data_mining.prompts import load_prompts
from data_mining.tasks import check_task_names
from rewards.pool import RewardWorker, prepare_reward_config
from rewards.registry import check_routes, resolve_routes
from rl import checkpoint
from rl.actors import (Actors, add_stats, build_actors, busy_meter, check_placement, evaluate, frozen_gc,
                       generate_and_score, offline_pass, start_ray, sync_weights, train)
from rl.broadcast import TransportError
from rl.config import Config, parse_cli, save_config
from rl.metrics import MetricsLog, PhaseTimer, describe_plan, format_rates, step_metrics
from rl.objective import check_names
from rl.placement import PlacementError
from rl.pipeline import run_async
from rl.report import finish_run
from rl.stop import EXIT_ACTOR_DIED, EXIT_RESUMABLE, RunStop
from rl.supervise import STARTUP_TIMEOUT_S, ActorLost, ActorStalled

CHECKS = {"train": check_names, "data": check_task_names, "reward": check_routes}  # names the config uses


def setup_run(cfg: Config, model_path: str, train_rows: list[dict]) -> tuple[Actors, Miner, int]:
    """Actors, miner and first step; a resumed run (run.resume) continues from its checkpoint, with
    the run's starting model kept as the KL reference."""
    start = checkpoint.resume_step(cfg)
    try:
        actors = build_actors(cfg, cfg.run.resume or model_path, RewardWorker, ref_path=model_path)
    except (PlacementError, TransportError, ActorStalled) as exc:  # nothing started, or an actor never did
        ray.shutdown()
        sys.exit(f"error: {exc}")
    miner = Miner.from_config(cfg, train_rows)
    if cfg.run.resume:
        version = checkpoint.restore(actors, miner, cfg.run.resume)
        print(f"resumed from {cfg.run.resume} at step {start} of {cfg.run.steps} (policy version {version}): "
              "weights, optimiser, LR schedule, RNG streams, ledger and sampler restored", flush=True)
    return actors, miner, start


def rl_loop(cfg: Config, actors: Actors, miner: Miner, log: MetricsLog, run_dir: Path,
            deadline: float | None = None, start: int = 0, stop: RunStop | None = None) -> int:
    """The RL steps `start`..run.steps-1; returns the steps done (fewer when the deadline passes or
    `stop` is requested: a signal, or too many non-finite updates in a row)."""
    sampling = dict(temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                    max_new_tokens=cfg.rollout.max_new_tokens)
    saves = checkpoint.SaveSchedule(cfg.run.save_every, cfg.run.save_every_minutes)
    stop = stop or RunStop(cfg.train.max_skipped_steps)
    busy = busy_meter(actors)
    for step in range(start, cfg.run.steps):
        if deadline is not None and time.time() >= deadline:
            print(f"run.max_seconds reached at step {step}", flush=True)
            return step
        if stop.requested():
            return step
        timer, reward_stats, t0 = PhaseTimer(), {}, time.perf_counter()
        fill = miner.plan_step(step)
        while (draw := fill.next_draw()) is not None:  # draw: prompts from the ledger (re-mining first)
            samples, stats = generate_and_score(actors, draw.rows, overlap=cfg.reward.overlap, timer=timer,
                                                n=draw.n, **sampling)  # generate + score (timed inside)
            fill.add(draw, samples)  # filter: the ledger records every group, uniform groups are dropped
            add_stats(reward_stats, stats)
        batch = fill.finish()
        train_stats: dict = {}
        if batch.train:  # a step where every group was uniform has nothing to learn; the run goes on
            with timer("train"):
                train_stats = train(actors, batch.train)
            with timer("sync"):
                train_stats.update(sync_weights(actors, int(train_stats["policy_version"])))
        timer.seconds["time/step"] = time.perf_counter() - t0
        reward_stats["perf/cores_busy_fraction"] = busy()
        if actors.supervisor is not None:
            reward_stats.update(actors.supervisor.metrics())
        metrics = step_metrics(batch, reward_stats, train_stats, timer, step, cfg.rollout.logprob_gap_warn)
        log.log(step, stop.observe(step, metrics))
        if saves.due(step + 1):
            checkpoint.save(cfg, actors, miner, run_dir / f"checkpoint-{step + 1}", step + 1)
            miner.save(run_dir)
    return cfg.run.steps


def run_steps(cfg: Config, actors: Actors, miner: Miner, log: MetricsLog, run_dir: Path, deadline: float | None,
          start: int, stop: RunStop) -> tuple[int, Any]:
    """The RL loop, synchronous or asynchronous (rollout.max_staleness > 0); the steps done and the
    data side's state to checkpoint."""
    if not cfg.rollout.max_staleness:
        return rl_loop(cfg, actors, miner, log, run_dir, deadline, start=start, stop=stop), miner
    gap_warn = cfg.rollout.logprob_gap_warn
    return run_async(  # asynchronous: generation for the coming steps overlaps training
        cfg, actors, miner, log, run_dir, deadline=deadline, start=start, stop=stop,
        version=ray.get(actors.trainer.state.remote(), timeout=STARTUP_TIMEOUT_S)["version"],
        step_metrics=lambda batch, *rest: stop.observe(rest[-1], step_metrics(batch, *rest, gap_warn)),
        save=lambda state, path, step: (checkpoint.save(cfg, actors, state, path, step), miner.save(run_dir)))


def stop_early(cfg: Config, actors: Actors, miner: Miner, data: Any, run_dir: Path, stop: RunStop,
               step: int) -> int:
    """A run stopped at step boundary `step`: a preempted one writes its checkpoint and says how to
    resume; one stopped by the non-finite guard names its last checkpoint. The exit status."""
    if stop.exit_code == EXIT_RESUMABLE:
        path = run_dir / f"checkpoint-{step}"
        if checkpoint.checkpoint_problem(path) != ("", step):  # not just written by the loop
            checkpoint.save(cfg, actors, data, path, step)
            miner.save(run_dir)
        print(f"stopped at step {step} of {cfg.run.steps} ({stop.reason}); checkpoint written to {path}. "
              f"The run is resumable (exit status {EXIT_RESUMABLE}): run the same command with "
              "run.resume=latest", flush=True)
    else:
        last = checkpoint.latest(run_dir)
        print(f"error: the run stopped at step {step}: {stop.reason}. Last checkpoint: "
              f"{last or 'none written yet'}", file=sys.stderr, flush=True)
    return stop.exit_code


def actor_died(run_dir: Path, exc: Exception) -> int:
    """An actor the run cannot replace (a trainer, or a role past run.max_restarts) died or stalled
    during the loop: the run stops naming the newest complete checkpoint (saves are atomic, so a
    death mid-save leaves the previous one whole). The exit status."""
    last = checkpoint.latest(run_dir)
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    what = "stalled" if isinstance(exc, ActorStalled) else "died"
    print(f"error: an actor {what} during the RL loop ({type(exc).__name__}: {first_line}); the run stops. "
          f"Last checkpoint: {last or 'none written yet'}" + (" (continue with run.resume=latest)" if last else ""),
          file=sys.stderr, flush=True)
    return EXIT_ACTOR_DIED


def main(argv: list[str] | None = None) -> int:
    cfg, args = parse_cli(argv, description=__doc__, checks=CHECKS)
    cfg = checkpoint.resolve_resume(cfg)
    start_step = checkpoint.resume_step(cfg)
    run_dir = Path(cfg.run.dir)
    model_path = checkpoint.model_dir(cfg, args.dry_run, build=embedded_builder(cfg.data))
    cfg = prepare_reward_config(cfg)  # a bad custom reward, route or reward model stops the run here
    try:  # dataset rows of a domain no reward scores are bad rows
        train_rows, heldout_rows = load_prompts(cfg, routed=set(resolve_routes(cfg.reward.routes)))
    except DatasetError as exc:
        sys.exit(f"error: {exc}")
    check_placement(cfg)
    if args.dry_run:  # writes nothing, not even into run.dir
        print(describe_plan(cfg, model_path, len(train_rows), len(heldout_rows), start_step), flush=True)
        return 0
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    start_ray(cfg)
    actors, miner, start_step = setup_run(cfg, model_path, train_rows)
    log = MetricsLog(run_dir, cfg.run.steps, cfg.monitor, domains={r["domain"] for r in train_rows},
                     start_step=start_step)  # a fresh start (step 0) drops what an earlier start logged here
    summary: dict = {"model": model_path}
    if cfg.eval.before and cfg.run.resume:
        print("held-out evaluation before RL skipped: a resumed run's policy is no longer the starting one", flush=True)
    elif cfg.eval.before:
        summary["heldout_before"] = evaluate(actors, heldout_rows, cfg)
        print(f"held-out sampled pass rate before RL: {format_rates(summary['heldout_before'])}", flush=True)
    start = time.time()
    if cfg.mining.enabled and cfg.mining.offline_pass and not cfg.run.resume:
        offline_pass(cfg, actors, miner)
    deadline = start + cfg.run.max_seconds if cfg.run.max_seconds else None
    stop = RunStop(cfg.train.max_skipped_steps)
    try:
        with frozen_gc(), stop.signals():
            steps, data = run_steps(cfg, actors, miner, log, run_dir, deadline, start_step, stop)
    except (ray.exceptions.RayActorError, ActorStalled, ActorLost) as exc:
        log.close()
        ray.shutdown()
        return actor_died(run_dir, exc)
    log.close()
    if stop.requested():
        code = stop_early(cfg, actors, miner, data, run_dir, stop, steps)
        ray.shutdown()
        return code
    finish_run(cfg, actors, data, run_dir, heldout_rows, {**summary, "steps": steps})
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
