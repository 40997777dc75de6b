"""End-to-end speed, side by side in one invocation: this pipeline synchronous (max_staleness 0) and
asynchronous (max_staleness 1 and 2), TRL's GRPOTrainer at equal settings, and the bare vLLM engine.

    python bench/bench_e2e.py [--steps 60] [--only sync,async1,async2,trl,engine,sync_alone] [--rounds 1]
                              [--eval-every 15] [--target 0.45] [--out runs/bench_e2e] [KEY=VALUE ...]

Every run starts from the same checkpoint (`model.path` of the config, bootstrapped if missing), the
same prompts (the config's train split), group size, lengths, sampling settings and learning rate;
KEY=VALUE overrides go to every pipeline run and set the same things for TRL. Runs are interleaved
(sync, async1, async2, trl, engine, then again with --rounds > 1), each in a fresh process.

Measured per run, steady state (the first quarter of the steps is warm-up and left out):
- seconds per RL step (median) and steps/s; generated tokens/s over the whole step;
- in-pipeline generation tokens/s against the bare engine on the same prompts with the same threads
  (`engine`): synchronous, tokens over the generate phase, mining's refill draws included (`sync`
  scores while it generates; `sync_alone` scores afterwards, so its engines have the cores alone, as
  the bare engine does); asynchronous, tokens over the seconds the engines had work;
- weight sync as a share of the step; the cores' busy fraction;
- held-out sampled pass rate after the same number of steps, and the time to a target held-out pass
  rate: every run writes a checkpoint every --eval-every steps, and one evaluator (a vLLM engine and
  the project's rewards, the same seed for every checkpoint) scores them all afterwards. The time of
  a checkpoint is the run's summed step seconds up to it. The target defaults to the lowest of the
  runs' best held-out pass rates, so every run reaches it.

Prints the table and the ratios, and writes `<out>/bench_e2e.json`. Timing is only meaningful on an
otherwise idle machine; the CPU model is printed with the results.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rl.jsonl import non_finite_floats  # noqa: E402  (metrics.jsonl writes NaN as "nan")

# Pipeline runs: rollout.max_staleness and extra overrides. `sync_alone` scores after generating
# (reward.overlap=false), so its generate phase measures the engines inside the pipeline alone, as
# the bare engine benchmark does; on 2 cores the overlapped code sandbox otherwise takes CPU from them.
MODES = {"sync": (0, []), "async1": (1, []), "async2": (2, []), "sync_alone": (0, ["reward.overlap=false"])}
# Ray starts its workers niced; TRL and the engine benchmark run at normal priority. Equal priority
# keeps the comparison fair on a machine where anything else runs.
ENV = {**os.environ, "RAY_worker_niceness": "0", "PYTHONPATH": str(ROOT)}


def cpu_model() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip() + f", {os.cpu_count()} cores"
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def load_cfg(extra: list[str]):
    from rl.config import load_config

    return load_config(str(ROOT / "configs" / "tiny_cpu.yaml"), extra)


# ---- the pipeline ----------------------------------------------------------------------------------


def run_pipeline(name: str, args: argparse.Namespace, out: Path) -> dict:
    run_dir = out / name
    k, extra = MODES[name]
    cmd = [sys.executable, str(ROOT / "run_rl.py"), f"run.dir={run_dir}", f"run.steps={args.steps}",
           f"rollout.max_staleness={k}", f"run.save_every={args.eval_every}", "run.save_every_minutes=0",
           "run.keep_checkpoints=0", "eval.before=false", "eval.after=false", "monitor.progress=lines",
           "monitor.tensorboard=false", "monitor.ray_metrics=false", *extra, *args.overrides]
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, env=ENV)
    rows = [non_finite_floats(json.loads(line)) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    engines = load_cfg(args.overrides).rollout.num_actors
    res = summarize_steps(rows, sync_key="time/sync" if k == 0 else "time/weight_sync_engine", engines=engines)
    res["wall_seconds"] = time.perf_counter() - t0
    res["checkpoints"] = {int(p.name.split("-")[1]): str(p) for p in run_dir.glob("checkpoint-*")}
    res["elapsed_at"] = _elapsed(rows)
    return res


def _elapsed(rows: list[dict]) -> dict[int, float]:
    """Summed step seconds after each step (the 1-based step count -> seconds)."""
    total, out = 0.0, {}
    for r in rows:
        total += r["time/step"]
        out[int(r["step"]) + 1] = total
    return out


def summarize_steps(rows: list[dict], sync_key: str, engines: int) -> dict:
    steady = rows[len(rows) // 4:] or rows
    step_s = [r["time/step"] for r in steady]
    tokens = [r["perf/generated_tokens"] for r in steady]
    gen_s = [r.get("time/generate", 0.0) for r in steady]
    res = {"steps": len(rows), "step_s_median": statistics.median(step_s),
           "steps_per_s": len(steady) / sum(step_s), "tokens_per_s": sum(tokens) / sum(step_s),
           "sync_share": sum(r.get(sync_key, 0.0) for r in steady) / sum(step_s),
           "busy": statistics.mean(r.get("perf/cores_busy_fraction", float("nan")) for r in steady),
           "stale_dropped": sum(r.get("rollout/stale_dropped_groups", 0.0) for r in rows),
           "staleness_mean": statistics.mean(r.get("rollout/staleness_mean", 0.0) for r in steady),
           "reward_mean_last": statistics.mean(r["reward/mean"] for r in rows[-max(1, len(rows) // 5):])}
    if any(gen_s):
        res["generate_tokens_per_s"] = sum(tokens) / sum(gen_s)
    else:  # asynchronous: tokens over the seconds the engines had work (idle is summed over engines)
        busy = sum(step_s) - sum(r.get("time/engine_idle", 0.0) for r in steady) / engines
        res["generate_tokens_per_s"] = sum(tokens) / busy
    return res


# ---- TRL ---------------------------------------------------------------------------------------------


def trl_worker(args: argparse.Namespace, out: Path) -> None:
    """TRL's GRPOTrainer on the same checkpoint, prompts and settings (its own generation path:
    transformers `generate`), scored by the project's rewards; writes per-step seconds."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from data_mining.prompts import load_prompts
    from rewards.pool import score_samples, setup_rewards
    from rl.types import Sample

    cfg = load_cfg(args.overrides)
    torch.manual_seed(cfg.run.seed)
    torch.set_num_threads(os.cpu_count() or 1)
    routes = setup_rewards(cfg.reward)
    train, _ = load_prompts(cfg)
    by_id = {r["id"]: r for r in train}

    def reward(prompts, completions, row_id, **_):
        samples = [Sample(i, by_id[i]["domain"], p, [], reference=dict(by_id[i].get("reference", {})), completion=c)
                   for p, c, i in zip(prompts, completions, row_id)]
        return [s.reward for s in score_samples(samples, routes)[0]]

    g, p = cfg.rollout.samples_per_prompt, cfg.train.prompts_per_step
    steps_dir = out / "trl"
    conf = GRPOConfig(
        output_dir=str(steps_dir), max_steps=args.steps, per_device_train_batch_size=g * p, num_generations=g,
        generation_batch_size=g * p, max_completion_length=cfg.rollout.max_new_tokens,
        temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p, learning_rate=cfg.train.lr,
        lr_scheduler_type="cosine", beta=0.0, epsilon=cfg.train.clip_low, loss_type="dapo",
        max_grad_norm=cfg.train.grad_clip, logging_steps=1, save_strategy="steps", save_steps=args.eval_every,
        report_to=[], use_cpu=True, bf16=False, seed=cfg.run.seed, dataloader_num_workers=0,
        gradient_accumulation_steps=1, disable_tqdm=True)
    stamps: list[tuple[float, float]] = []  # (begin, end) of each step: checkpoint saves fall between steps

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            stamps.append((time.perf_counter(), float("nan")))

        def on_step_end(self, *a, **k):
            stamps[-1] = (stamps[-1][0], time.perf_counter())

    data = Dataset.from_list([{"prompt": r["prompt"], "row_id": r["id"]} for r in train])
    tok = AutoTokenizer.from_pretrained(cfg.model.path)
    model = AutoModelForCausalLM.from_pretrained(cfg.model.path, dtype=torch.float32)
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=conf, train_dataset=data,
                          processing_class=tok, callbacks=[Clock()])
    trainer.train()
    step_s = [end - begin for begin, end in stamps]
    (steps_dir / "steps.json").write_text(json.dumps({"step_seconds": step_s, "log": trainer.state.log_history}))


def run_trl(args: argparse.Namespace, out: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", "trl", "--out", str(out), "--steps", str(args.steps),
           "--eval-every", str(args.eval_every), *args.overrides]
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT, env=ENV)
    data = json.loads((out / "trl" / "steps.json").read_text())
    step_s = data["step_seconds"]
    steady = step_s[len(step_s) // 4:] or step_s
    cfg = load_cfg(args.overrides)
    tokens = [r["num_tokens"] for r in data["log"] if "num_tokens" in r]
    lengths = [r["completions/mean_length"] for r in data["log"] if "completions/mean_length" in r]
    per_step_tokens = statistics.mean(lengths) * cfg.rollout.samples_per_prompt * cfg.train.prompts_per_step
    rewards = [r["reward"] for r in data["log"] if "reward" in r]
    res = {"steps": len(step_s), "step_s_median": statistics.median(steady),
           "steps_per_s": len(steady) / sum(steady), "tokens_per_s": per_step_tokens / statistics.mean(steady),
           "num_tokens_logged": tokens[-1] if tokens else None,
           "reward_mean_last": statistics.mean(rewards[-max(1, len(rewards) // 5):]) if rewards else float("nan")}
    res["checkpoints"] = {int(p.name.split("-")[1]): str(p) for p in (out / "trl").glob("checkpoint-*")}
    total, res["elapsed_at"] = 0.0, {}
    for i, s in enumerate(step_s):
        total += s
        res["elapsed_at"][i + 1] = total
    return res


# ---- the bare engine -----------------------------------------------------------------------------


def engine_worker(args: argparse.Namespace, out: Path, threads: int, part: int, parts: int) -> None:
    """vLLM's `LLM.generate` alone on the pipeline's prompts (every `parts`-th prompt from `part`),
    `prompts_per_step` prompts x `samples_per_prompt` a call, same sampling; writes tokens and seconds."""
    from data_mining.prompts import load_prompts
    from rl.config import RolloutConfig
    from rl.rollout import RolloutWorker, sampling_params

    cfg = load_cfg(args.overrides)
    train, _ = load_prompts(cfg)
    rc = RolloutConfig(**{**cfg.rollout.__dict__, "threads": threads, "record_routing": False})
    worker = RolloutWorker(cfg.model.path, rc, seed=cfg.run.seed + part,
                           max_model_len=cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens)
    params = sampling_params(cfg.rollout.samples_per_prompt, cfg.rollout.temperature, cfg.rollout.top_p,
                             cfg.rollout.max_new_tokens)  # the pipeline's own settings
    per_call = max(1, cfg.train.prompts_per_step // parts)
    mine = train[part::parts]
    tokens, seconds = 0, 0.0
    for call in range(args.engine_calls + 1):
        rows = mine[call * per_call:(call + 1) * per_call]
        prompts = [{"prompt_token_ids": worker.tokenizer(r["prompt"], add_special_tokens=False)["input_ids"]}
                   for r in rows]
        t0 = time.perf_counter()
        outs = worker.llm.generate(prompts, params, use_tqdm=False)
        if call:  # the first call warms the engine up
            seconds += time.perf_counter() - t0
            tokens += sum(len(c.token_ids) for o in outs for c in o.outputs)
    (out / f"engine-{threads}t-{part}of{parts}.json").write_text(json.dumps({"tokens": tokens, "seconds": seconds}))


def run_engine(args: argparse.Namespace, out: Path) -> dict:
    """Tokens/s of one engine with every core's thread, and of one 1-thread engine per core at once."""
    cores = os.cpu_count() or 1
    res = {}
    for threads, parts in ((cores, 1), (1, cores)):
        procs = [subprocess.Popen([sys.executable, __file__, "--worker", "engine", "--out", str(out),
                                   "--threads", str(threads), "--part", str(p), "--parts", str(parts),
                                   "--engine-calls", str(args.engine_calls), *args.overrides], cwd=ROOT, env=ENV)
                 for p in range(parts)]
        if any(p.wait() for p in procs):
            raise RuntimeError("an engine benchmark process failed")
        runs = [json.loads((out / f"engine-{threads}t-{p}of{parts}.json").read_text()) for p in range(parts)]
        # Parallel engines: total tokens over the slowest engine's seconds.
        res[f"{parts}x{threads}t_tokens_per_s"] = sum(r["tokens"] for r in runs) / max(r["seconds"] for r in runs)
    res["best_tokens_per_s"] = max(res.values())
    return res


# ---- one evaluator for every checkpoint ----------------------------------------------------------


def eval_worker(args: argparse.Namespace, out: Path) -> None:
    """Held-out sampled pass rate of each checkpoint listed in <out>/to_eval.json, same engine seed."""
    from data_mining.prompts import load_prompts
    from rewards.pool import score_samples, setup_rewards
    from rl.config import RolloutConfig
    from rl.rollout import RolloutWorker

    cfg = load_cfg(args.overrides)
    routes = setup_rewards(cfg.reward)
    _, heldout = load_prompts(cfg)
    paths = json.loads((out / "to_eval.json").read_text())
    rc = RolloutConfig(**{**cfg.rollout.__dict__, "threads": os.cpu_count() or 1, "record_routing": False})
    results = {}
    for path in paths:
        worker = RolloutWorker(path, rc, seed=cfg.run.seed,
                               max_model_len=cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens)
        samples = worker.generate(heldout, n=cfg.eval.samples_per_prompt, temperature=cfg.eval.temperature,
                                  max_new_tokens=cfg.eval.max_new_tokens or cfg.rollout.max_new_tokens,
                                  record_routing=False)
        scored, _ = score_samples(samples, routes)
        results[path] = sum(s.passed for s in scored) / len(scored)
        print(f"[eval] {path}: {results[path]:.3f}", flush=True)
        del worker
    (out / "evaluated.json").write_text(json.dumps(results))


def evaluate_all(runs: dict[str, dict], args: argparse.Namespace, out: Path) -> float:
    """Held-out pass rate per checkpoint of every run ('heldout': {step: rate}); returns the start's rate."""
    start = str(Path(load_cfg(args.overrides).model.path).resolve())
    paths = [start] + [p for r in runs.values() for p in r.get("checkpoints", {}).values()]
    (out / "to_eval.json").write_text(json.dumps(paths))
    subprocess.run([sys.executable, __file__, "--worker", "eval", "--out", str(out), *args.overrides],
                   check=True, cwd=ROOT, env=ENV)
    rates = json.loads((out / "evaluated.json").read_text())
    for r in runs.values():
        if "checkpoints" in r:
            r["heldout"] = {step: rates[p] for step, p in sorted(r["checkpoints"].items())}
    return rates[start]


def time_to(run: dict, target: float) -> float | None:
    for step, rate in sorted(run.get("heldout", {}).items()):
        if rate >= target:
            return run["elapsed_at"][step]
    return None


# ---- the report ------------------------------------------------------------------------------------


def report(runs: dict[str, dict], start_rate: float, target: float | None, cpu: str) -> dict:
    finals = {n: max(r["heldout"].items())[1] for n, r in runs.items() if r.get("heldout")}
    bests = [max(r["heldout"].values()) for r in runs.values() if r.get("heldout")]
    target = target if target is not None else (min(bests) if bests else None)
    print(f"\nCPU: {cpu}; held-out pass rate of the starting checkpoint {start_rate:.3f}; target {target}")
    print(f"{'run':8} {'s/step':>7} {'steps/s':>8} {'tok/s':>7} {'gen tok/s':>9} {'sync %':>6} {'busy':>5} "
          f"{'held-out':>8} {'to target s':>11}")
    for name, r in runs.items():
        if "steps_per_s" not in r:
            continue
        r["time_to_target"] = time_to(r, target) if target is not None else None
        gen = r.get("generate_tokens_per_s")
        print(f"{name:8} {r['step_s_median']:7.2f} {r['steps_per_s']:8.3f} {r['tokens_per_s']:7.0f} "
              f"{gen or float('nan'):9.0f} {100 * r.get('sync_share', float('nan')):6.1f} "
              f"{r.get('busy', float('nan')):5.2f} {finals.get(name, float('nan')):8.3f} "
              f"{r['time_to_target'] if r['time_to_target'] is not None else float('nan'):11.1f}")
    ratios = {}
    sync = runs.get("sync", {})
    for name in ("async1", "async2"):
        if "steps_per_s" in runs.get(name, {}) and sync:
            ratios[f"{name}/sync steps_per_s"] = runs[name]["steps_per_s"] / sync["steps_per_s"]
            if name in finals and "sync" in finals:
                ratios[f"{name}-sync held-out points"] = 100 * (finals[name] - finals["sync"])
            if runs[name].get("time_to_target") and sync.get("time_to_target"):
                ratios[f"{name}/sync time to target"] = runs[name]["time_to_target"] / sync["time_to_target"]
    for name in MODES:
        if "steps_per_s" in runs.get(name, {}) and "steps_per_s" in runs.get("trl", {}):
            ratios[f"{name}/trl steps_per_s"] = runs[name]["steps_per_s"] / runs["trl"]["steps_per_s"]
    if "engine" in runs:
        print("bare engine tokens/s: " + ", ".join(f"{k} {v:.0f}" for k, v in runs["engine"].items()))
        for name in MODES:
            if "generate_tokens_per_s" in runs.get(name, {}):
                ratios[f"{name} generation / bare engine tokens_per_s"] = (
                    runs[name]["generate_tokens_per_s"] / runs["engine"]["best_tokens_per_s"])
    for key, value in ratios.items():
        print(f"  {key}: {value:.2f}")
    return {"cpu": cpu, "start_heldout": start_rate, "target": target, "runs": runs, "ratios": ratios}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--only", default="sync,async1,async2,trl,engine,sync_alone")
    ap.add_argument("--rounds", type=int, default=1, help="repeat the interleaved set; the medians are reported")
    ap.add_argument("--eval-every", type=int, default=15, help="checkpoint (and evaluate) every this many steps")
    ap.add_argument("--target", type=float, default=None, help="held-out pass rate to time; default: see above")
    ap.add_argument("--engine-calls", type=int, default=8, help="timed generate calls of the bare engine")
    ap.add_argument("--out", default="runs/bench_e2e")
    ap.add_argument("--worker", choices=["trl", "engine", "eval"], help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--part", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--parts", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.worker:
        {"trl": lambda: trl_worker(args, out), "eval": lambda: eval_worker(args, out),
         "engine": lambda: engine_worker(args, out, args.threads, args.part, args.parts)}[args.worker]()
        return
    runs = run_all(args, out)
    start_rate = evaluate_all(runs, args, out)
    result = report(runs, start_rate, args.target, cpu_model())
    (out / "bench_e2e.json").write_text(json.dumps(result, indent=1, default=str))
    print(f"wrote {out / 'bench_e2e.json'}")


def run_all(args: argparse.Namespace, out: Path) -> dict[str, dict]:
    """Every selected run, interleaved over --rounds; each run's numbers from its median round."""
    only = [n for n in args.only.split(",") if n]
    rounds: dict[str, list[dict]] = {n: [] for n in only}
    for r in range(args.rounds):
        sub = out / f"round{r}"
        for name in only:
            if name in MODES:
                rounds[name].append(run_pipeline(name, args, sub))
            elif name == "trl":
                rounds[name].append(run_trl(args, sub))
            elif name == "engine":
                rounds[name].append(run_engine(args, sub))
    key = {"engine": "best_tokens_per_s"}
    return {n: sorted(rs, key=lambda x: x[key.get(n, "steps_per_s")])[len(rs) // 2] for n, rs in rounds.items()}


if __name__ == "__main__":
    main()
