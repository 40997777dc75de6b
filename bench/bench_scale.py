"""How weight sync and step time grow with the number of engines and trainers, side by side in one run.

    python bench/bench_scale.py [--steps 5] [--engines 1 2 4] [--trainers 1 2] [--out runs/bench_scale] \
        [KEY=VALUE ...]

Runs `run_rl.py` once per layout (each in its own process with a fresh local Ray of `--cpus`
logical CPUs): every engine count with one trainer, then every trainer count with one engine. The
engines share `--engine-cpus` logical CPUs (fractional CPUs: 4 engines get 0.25 each of 1.0), each
trainer reserves 1. Every step trains (`train.drop_zero_variance_groups=false`), the first step is
left out as warm-up, and the medians of the rest are printed: seconds until rank 0 has published
its weights in the object store, seconds per engine per sync (fetch from
the object store + load into vLLM), the slowest engine's fetch, the whole sync phase, the bytes each
engine received, train and step seconds (between two steps' records), each also as a ratio to the
first layout. Extra KEY=VALUE overrides go to every run (e.g. model.path=...).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rl.jsonl import non_finite_floats  # noqa: E402  (metrics.jsonl writes NaN as "nan")
SMALL = ["data.tasks=[arithmetic]", "data.task_weights=[1]", "data.max_digits=1", "data.train_prompts=256",
         "data.heldout_prompts=8", "train.prompts_per_step=8", "rollout.samples_per_prompt=4",
         "rollout.max_new_tokens=8", "train.drop_zero_variance_groups=false", "eval.before=false",
         "eval.after=false", "monitor.ray_metrics=false", "monitor.tensorboard=false", "monitor.progress=lines"]


def run_layout(engines: int, trainers: int, args: argparse.Namespace) -> dict[str, float]:
    """One run with `engines` engines and `trainers` trainers; the medians of its steps after the first."""
    run_dir = Path(args.out) / f"e{engines}_t{trainers}"
    cmd = [sys.executable, str(ROOT / "run_rl.py"), f"run.dir={run_dir}", f"run.steps={args.steps}",
           f"run.num_cpus={args.cpus}", f"rollout.num_actors={engines}",
           f"rollout.cpus_per_actor={args.engine_cpus / engines:g}", f"train.num_actors={trainers}", "train.cpus=1",
           *SMALL, *args.overrides]
    print("$ " + " ".join(cmd), flush=True)
    (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    code = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL).returncode
    if code:
        raise SystemExit(f"error: the run with {engines} engines and {trainers} trainers exited {code}")
    records = [non_finite_floats(json.loads(line)) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = records[1:]
    per_engine = [s[f"sync/seconds/engine{i}"] for s in steps for i in range(engines)]
    return {"sync_s_per_engine": statistics.median(per_engine),
            "publish_s": statistics.median(s["sync/publish_seconds"] for s in steps),
            "fetch_s": statistics.median(s["sync/fetch_seconds_max"] for s in steps),
            "sync_s": statistics.median(s["time/sync"] for s in steps),
            "bytes": steps[-1]["sync/bytes_per_engine"],
            "train_s": statistics.median(s["time/train"] for s in steps),
            # A step's seconds: from the previous step's record to its own (every phase, logging included).
            "step_s": statistics.median(b["wall_time"] - a["wall_time"] for a, b in zip(records, steps))}


def table(results: dict[tuple[int, int], dict[str, float]]) -> str:
    """A markdown table; ratios are to the first layout."""
    base = next(iter(results.values()))
    rows = ["| engines | trainers | publish s | ratio | sync s per engine | ratio | of which fetch (slowest) | ratio "
            "| sync phase s | ratio | MB per engine | train s | ratio | step s | ratio |", "|---:" * 15 + "|"]
    for (engines, trainers), r in results.items():
        cells = [f"{engines}", f"{trainers}"]
        for key in ("publish_s", "sync_s_per_engine", "fetch_s", "sync_s"):
            cells += [f"{r[key]:.3f}", f"{r[key] / base[key]:.2f}"]
        cells.append(f"{r['bytes'] / 2**20:.1f}")
        for key in ("train_s", "step_s"):
            cells += [f"{r[key]:.3f}", f"{r[key] / base[key]:.2f}"]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5, help="RL steps per run (the first is warm-up)")
    parser.add_argument("--engines", type=int, nargs="+", default=[1, 2, 4], help="engine counts (1 trainer)")
    parser.add_argument("--trainers", type=int, nargs="+", default=[1, 2], help="trainer counts (1 engine)")
    parser.add_argument("--cpus", type=int, default=4, help="logical CPUs of each run's local Ray")
    parser.add_argument("--engine-cpus", type=float, default=1.0, help="logical CPUs the engines share")
    parser.add_argument("--out", default="runs/bench_scale", help="parent of the run directories")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides for every run")
    args = parser.parse_args(argv)
    layouts = [(e, 1) for e in args.engines] + [(1, t) for t in args.trainers if t != 1]
    results = {layout: run_layout(*layout, args) for layout in layouts}
    print(f"\nscale benchmark: {args.steps} steps per layout, medians of steps 2..{args.steps}\n")
    print(table(results))
    Path(args.out, "bench.json").write_text(json.dumps({f"e{e}_t{t}": r for (e, t), r in results.items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
