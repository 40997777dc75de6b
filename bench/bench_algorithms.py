"""Each registered algorithm variant on the embedded default: does it still train?

    python bench/bench_algorithms.py --steps 150 [--only grpo,gspo] [--out runs/bench_algorithms] [KEY=VALUE ...]

Runs `run_rl.py` once per variant (each in its own process with a fresh Ray), identical but for the
variant's overrides, for `--steps` RL steps from the same starting checkpoint and seed. Every run
measures the held-out pass rate before RL as well (the same number each time, and the same use of the
engine's sampler, so the runs differ only by their variant). Prints one row per variant: held-out sampled pass rate
before and after, its change, and the mean train reward over the last 20% of steps. Extra
KEY=VALUE overrides go to every run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rl.jsonl import non_finite_floats  # noqa: E402  (metrics.jsonl writes NaN as "nan")

# name -> overrides; the first is the reference (the default config). With one optimiser step per
# batch (the default) the importance ratio is exactly 1, so every policy loss reduces to the same
# gradient; the policy-loss variants therefore take two optimiser steps per batch, where their
# clipping acts (compare them with "grpo+ppo_clip x2").
TWO_UPDATES = "train.updates_per_step=2"
VARIANTS: dict[str, list[str]] = {
    "grpo+ppo_clip": [],
    "dr_grpo": ["train.advantage=dr_grpo", "train.loss_agg=seq-mean-token-sum-norm"],
    "rloo": ["train.advantage=rloo"],
    "reinforce_pp_baseline": ["train.advantage=reinforce_pp_baseline"],
    "grpo+ppo_clip x2": [TWO_UPDATES],
    "clip_higher x2": [TWO_UPDATES, "train.clip_high=0.28"],
    "dual_clip x2": [TWO_UPDATES, "train.dual_clip=3.0"],
    "gspo x2": [TWO_UPDATES, "train.policy_loss=gspo", "train.clip_low=0.0003", "train.clip_high=0.0004"],
    "cispo x2": [TWO_UPDATES, "train.policy_loss=cispo", "train.clip_low=1.0", "train.clip_high=2.0"],
    "kl_k3": ["train.kl_coef=0.01", "train.kl_estimator=k3"],
    "seq_mean_token_mean": ["train.loss_agg=seq-mean-token-mean"],
}


def run_variant(name: str, overrides: list[str], steps: int, out: Path, extra: list[str], eval_before: bool) -> dict:
    run_dir = out / name.replace(" ", "_")
    cmd = [
        sys.executable, str(ROOT / "run_rl.py"), f"run.dir={run_dir}", f"run.steps={steps}",
        f"eval.before={str(eval_before).lower()}", "monitor.progress=lines", "monitor.tensorboard=false",
        *overrides, *extra,
    ]
    print("$ " + " ".join(cmd), flush=True)
    (run_dir / "summary.json").unlink(missing_ok=True)
    code = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL).returncode
    if not (run_dir / "summary.json").exists():
        return {"error": f"exit {code} before writing a summary"}
    summary = non_finite_floats(json.loads((run_dir / "summary.json").read_text()))
    rows = [non_finite_floats(json.loads(line)) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    tail = rows[-max(1, len(rows) // 5):]
    summary["train_reward_tail"] = sum(r.get("reward/mean", 0.0) for r in tail) / len(tail)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=150, help="RL steps per variant")
    parser.add_argument("--only", default="", help="comma-separated variant names (default: all)")
    parser.add_argument("--out", default="runs/bench_algorithms", help="parent of the run directories")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides for every run")
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; known: {list(VARIANTS)}")
    out = Path(args.out)
    results: dict[str, dict] = {}
    before = None
    for name in names:
        # Every run evaluates before RL too: the evaluation draws from the engine's sampler, so skipping
        # it in some runs would give them different rollouts than the others.
        results[name] = run_variant(name, VARIANTS[name], args.steps, out, args.overrides, eval_before=True)
        before = before or results[name].get("heldout_before")
        after = results[name].get("heldout_after", {}).get("pass_rate")
        print(f"  {name}: held-out after {after}", flush=True)
    print(f"\nalgorithm benchmark: {args.steps} RL steps each; held-out pass rate before RL: "
          f"{before['pass_rate'] if before else float('nan'):.3f}")
    domains = sorted(k.split("/", 1)[1] for k in (before or {}) if "/" in k)
    header = f"{'variant':<24}{'after':>8}{'change':>9}" + "".join(f"{d:>13}" for d in domains) + f"{'train reward':>14}"
    print(header)
    for name, summary in results.items():
        if "error" in summary:
            print(f"{name:<24}  failed: {summary['error']}")
            continue
        after = summary["heldout_after"]
        cells = "".join(f"{after.get(f'pass_rate/{d}', float('nan')):>13.3f}" for d in domains)
        change = after["pass_rate"] - before["pass_rate"] if before else float("nan")
        print(f"{name:<24}{after['pass_rate']:>8.3f}{change:>+9.3f}{cells}{summary['train_reward_tail']:>14.3f}")
    (out / "bench.json").write_text(json.dumps({"steps": args.steps, "heldout_before": before, "runs": results},
                                               indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
