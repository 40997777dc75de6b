"""Mining on vs off on the embedded default, for the same wall-clock budget of RL.

    python bench/bench_mining.py --budget-s 600 [--out runs/bench_mining] [KEY=VALUE ...]

Runs `run_rl.py` twice (each in its own process, so each gets a fresh Ray), identical but for
`mining.enabled`, with `run.max_seconds=BUDGET`: the budget covers the RL steps (and mining's
offline pass, when on), not start-up or evaluation. Extra KEY=VALUE overrides go to both runs.
Prints, for both: steps run, held-out sampled pass rate after RL, and rollouts spent per useful
group (a group with reward variance used for an update; re-mining rollouts are counted too).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_mode(mining: bool, budget_s: float, out: Path, overrides: list[str], eval_before: bool) -> dict:
    run_dir = out / ("mining_on" if mining else "mining_off")
    cmd = [
        sys.executable, str(ROOT / "run_rl.py"), f"run.dir={run_dir}", f"run.max_seconds={budget_s}",
        f"mining.enabled={str(mining).lower()}", f"eval.before={str(eval_before).lower()}",
        "monitor.progress=lines", "monitor.tensorboard=false", *overrides,
    ]
    print("$ " + " ".join(cmd), flush=True)
    (run_dir / "summary.json").unlink(missing_ok=True)
    code = subprocess.run(cmd, cwd=ROOT).returncode
    if not (run_dir / "summary.json").exists():
        raise SystemExit(f"error: the {run_dir.name} run failed (exit {code}) before writing its summary")
    if code:  # what follows the summary (the report) failed; the numbers are already written
        print(f"warning: the {run_dir.name} run exited {code} after writing its summary", flush=True)
    return json.loads((run_dir / "summary.json").read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-s", type=float, required=True, help="seconds of RL per run")
    parser.add_argument("--out", default="runs/bench_mining", help="parent of the two run directories")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides for both runs")
    args = parser.parse_args(argv)
    out = Path(args.out)
    results = {}
    for mining in (False, True):
        results[mining] = run_mode(mining, args.budget_s, out, args.overrides, eval_before=not mining)
    before = results[False].get("heldout_before", {}).get("pass_rate")
    print(f"\nmining benchmark: {args.budget_s:.0f} s of RL each; held-out pass rate before RL: {before}")
    print(f"{'mining':<8}{'steps':>7}{'held-out pass rate':>20}{'rollouts per useful group':>28}")
    for mining, summary in results.items():
        rate = summary.get("heldout_after", {}).get("pass_rate", float("nan"))
        cost = summary["mining"]["rollouts_per_useful_group"]
        print(f"{'on' if mining else 'off':<8}{summary['steps']:>7}{rate:>20.3f}{cost:>28.2f}")
    (out / "bench.json").write_text(json.dumps({"budget_s": args.budget_s, "heldout_before": before,
                                                "off": results[False], "on": results[True]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
