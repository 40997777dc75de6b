"""Mining benchmarks: where each mode spends its rollouts, side by side at equal generated tokens.

    python bench/bench_mining.py scripted [--rollouts 400000] [--seed 0] [--modes mining epochs previous] [KEY=VALUE ...]
    python bench/bench_mining.py real --budget-s 600 [--out runs/bench_mining] [KEY=VALUE ...]

`scripted` (no vLLM, no Ray, a few minutes of CPU): the default config's train and held-out prompts
and three data sides, each run until it has generated `--rollouts` completions (completions of a
toy policy all have the same length, so equal rollouts are equal generated tokens):

* mining: this miner (Beta ledger, usefulness draws, re-mining schedule, frontier refills);
* epochs: mining off (shuffled epochs, zero-variance groups dropped);
* previous: the miner and ledger of commit PREVIOUS (decayed pass rate, 4 p (1 - p) draws, 64
  random re-estimates every 20 steps), read from git, on the same prompts and policy.

The toy policy (`ToyPolicy`) is a stated model, not a measurement of a language model: a prompt
passes with probability sigmoid(skill[domain] - difficulty + jitter + practice), where difficulty
grows with the task's level, jitter is a fixed per-prompt offset ~ N(0, 1.5) (some prompts of every
level are out of reach, some trivial), skill grows with every trained group in proportion to its
reward variance 4 p (1 - p), and practice (memorisation of that one prompt) grows faster, so trained
prompts become solved and a fixed pool drains as in the real runs. Held-out prompts get no practice:
their expected pass rate measures the skill. It prints per quarter of the rollouts the share of
generated groups with reward variance (re-estimates included), short batches (fewer than
prompts_per_step useful groups), rollouts per trained useful group, and the final held-out pass
rate per domain.

`real`: runs `run_rl.py` twice (each in its own process, with a fresh Ray), identical but for
`mining.enabled`, for the same RL wall-clock budget (`run.max_seconds`), and prints steps, held-out
pass rate after RL and rollouts per useful group for both (the previous miner is not wired into the
driver, so only on/off there).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import subprocess
import sys
import time
import types
from dataclasses import fields, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data_mining.miner import Miner  # noqa: E402
from data_mining.tasks import make_task_split  # noqa: E402
from rl.config import Config, load_config  # noqa: E402
from rl.jsonl import non_finite_floats  # noqa: E402  (summary.json writes NaN as "nan")
from rl.types import Sample  # noqa: E402

PREVIOUS = "f6d5f97"  # the last commit with the decayed-pass-rate ledger
START_SKILL = {"math": 0.0, "code": -0.5, "instruction": 0.5}
LEVEL_STEP = {"math": 1.5, "code": 1.0, "instruction": 1.0}  # difficulty per level, in logits
SKILL_RATE = 0.003  # skill gained per step's worth (prompts_per_step) of fully informative groups
PRACTICE_RATE = 0.5  # logits a prompt gains each time it is trained on with full variance
PHASES = 4


class ToyPolicy:
    """generate_and_score for a scripted run, and the update it learns from (module docstring)."""

    def __init__(self, seed: int) -> None:
        self.skill, self.practice = dict(START_SKILL), {}
        self.rng, self.version, self.rollouts = random.Random(seed), 0, 0
        self.groups = self.useful = 0
        self.seconds = 0.0  # spent generating (the rest of a step is the data side's)
        self.rows: dict[str, dict] = {}

    def p(self, row: dict) -> float:
        jitter = random.Random(row["id"]).gauss(0.0, 1.5)
        x = self.skill[row["domain"]] - LEVEL_STEP[row["domain"]] * (row["difficulty"] - 2) + jitter
        return 1.0 / (1.0 + math.exp(-(x + self.practice.get(row["id"], 0.0))))

    def __call__(self, rows: list[dict], n: int) -> list[Sample]:
        start = time.perf_counter()
        out = []
        for row in rows:
            self.rows[row["id"]] = row
            p = self.p(row)
            passes = [self.rng.random() < p for _ in range(n)]
            out += [Sample(row["id"], row["domain"], row["prompt"], [1], group_index=k, reward=float(ok),
                           passed=ok, policy_version=self.version) for k, ok in enumerate(passes)]
            self.groups += 1
            self.useful += 0 < sum(passes) < n
        self.rollouts += len(out)
        self.seconds += time.perf_counter() - start
        return out

    def learn(self, train: list[Sample], per_step: int) -> None:
        for pid in dict.fromkeys(s.prompt_id for s in train):
            row = self.rows[pid]
            gain = 4 * self.p(row) * (1 - self.p(row))
            self.skill[row["domain"]] += SKILL_RATE * gain / per_step
            self.practice[pid] = self.practice.get(pid, 0.0) + PRACTICE_RATE * gain
        self.version += 1

    def heldout(self, rows: list[dict]) -> dict[str, float]:
        by_domain: dict[str, list[float]] = {}
        for row in rows:
            by_domain.setdefault(row["domain"], []).append(self.p(row))
        return {d: sum(ps) / len(ps) for d, ps in sorted(by_domain.items())}


def previous_miner_class(commit: str = PREVIOUS) -> type:
    """The Miner of `commit`, with that commit's ledger, loaded from git under other module names."""
    def load(name: str, path: str, replace_from: str = "", replace_to: str = "") -> types.ModuleType:
        source = subprocess.run(["git", "show", f"{commit}:{path}"], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout
        module = types.ModuleType(name)
        sys.modules[name] = module  # dataclasses look their module up while the class is built
        exec(compile(source.replace(replace_from, replace_to), f"{commit}:{path}", "exec"), module.__dict__)
        return module

    load("previous_ledger", "data_mining/ledger.py")
    return load("previous_miner", "data_mining/miner.py", "from data_mining.ledger", "from previous_ledger").Miner


def make_miner(mode: str, cfg: Config, rows: list[dict]) -> object:
    if mode == "mining":
        return Miner.from_config(cfg, rows)
    if mode == "epochs":
        return Miner.from_config(replace(cfg, mining=replace(cfg.mining, enabled=False)), rows)
    # That commit's defaults for the keys it had and this one lacks (or reads differently).
    old = types.SimpleNamespace(**{**{f.name: getattr(cfg.mining, f.name) for f in fields(cfg.mining)},
                                   "decay": 0.5, "remine_every": 20, "remine_prompts": 64})
    return previous_miner_class()(rows, old, cfg.train.prompts_per_step, cfg.rollout.samples_per_prompt,
                                  seed=cfg.run.seed, drop_zero_variance=cfg.train.drop_zero_variance_groups)


def run_scripted(mode: str, cfg: Config, rows: list[dict], heldout: list[dict], budget: int) -> dict:
    """One data side until `budget` rollouts: per-phase measures and the final held-out pass rates."""
    policy, miner = ToyPolicy(cfg.run.seed), make_miner(mode, cfg, rows)
    per_step = cfg.train.prompts_per_step
    phases = [{"groups": 0, "useful": 0, "rollouts": 0, "trained": 0, "short": 0, "steps": 0} for _ in range(PHASES)]
    step, miner_s = 0, 0.0
    while policy.rollouts < budget:
        phase = phases[min(PHASES - 1, PHASES * policy.rollouts // budget)]
        before = (policy.groups, policy.useful, policy.rollouts)
        policy.version = step
        t0, gen0 = time.perf_counter(), policy.seconds
        batch = miner.next_batch(step, policy)
        miner_s += time.perf_counter() - t0 - (policy.seconds - gen0)
        trained = len({s.prompt_id for s in batch.train})
        policy.learn(batch.train, per_step)
        phase["groups"] += policy.groups - before[0]
        phase["useful"] += policy.useful - before[1]
        phase["rollouts"] += policy.rollouts - before[2]
        phase["trained"] += trained
        phase["short"] += trained < per_step
        phase["steps"] += 1
        step += 1
    return {"phases": phases, "heldout": policy.heldout(heldout), "steps": step,
            "pool": len(getattr(miner, "rows", rows)), "miner_ms_per_step": 1000 * miner_s / max(1, step)}


def print_scripted(results: dict[str, dict], budget: int) -> None:
    print(f"\nscripted mining benchmark: {budget} rollouts per mode (equal generated tokens), toy policy")
    print(f"{'mode':<10}{'phase':>6}{'steps':>7}{'useful groups':>15}{'short batches':>15}{'rollouts/useful':>17}")
    for mode, r in results.items():
        for i, ph in enumerate(r["phases"]):
            print(f"{mode:<10}{i + 1:>6}{ph['steps']:>7}{ph['useful'] / max(1, ph['groups']):>15.1%}"
                  f"{ph['short']:>15}{ph['rollouts'] / max(1, ph['trained']):>17.1f}")
        total = {k: sum(ph[k] for ph in r["phases"]) for k in r["phases"][0]}
        print(f"{mode:<10}{'all':>6}{total['steps']:>7}{total['useful'] / max(1, total['groups']):>15.1%}"
              f"{total['short']:>15}{total['rollouts'] / max(1, total['trained']):>17.1f}"
              f"   pool {r['pool']}, data side {r['miner_ms_per_step']:.0f} ms/step, held-out "
              + ", ".join(f"{d} {v:.3f}" for d, v in r["heldout"].items()))


def scripted(args: argparse.Namespace) -> int:
    cfg = load_config(None, [f"run.seed={args.seed}", *args.overrides])
    rows, heldout = make_task_split(list(cfg.data.tasks), list(cfg.data.task_weights), cfg.data.train_prompts,
                                    cfg.data.heldout_prompts, seed=cfg.run.seed, min_digits=cfg.data.min_digits,
                                    max_digits=cfg.data.max_digits)
    results = {mode: run_scripted(mode, cfg, rows, heldout, args.rollouts) for mode in args.modes}
    print_scripted(results, args.rollouts)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


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
    return non_finite_floats(json.loads((run_dir / "summary.json").read_text()))


def real(args: argparse.Namespace) -> int:
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("scripted", help="three data sides on a toy policy at equal rollouts (no vLLM)")
    s.add_argument("--rollouts", type=int, default=400_000, help="completions generated per mode")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", help="also write the numbers as JSON here")
    s.add_argument("--modes", nargs="+", default=["mining", "epochs", "previous"], choices=["mining", "epochs", "previous"])
    s.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides (mining.* for this miner)")
    r = sub.add_parser("real", help="run_rl.py with mining on and off for the same RL time")
    r.add_argument("--budget-s", type=float, required=True, help="seconds of RL per run")
    r.add_argument("--out", default="runs/bench_mining", help="parent of the two run directories")
    r.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides for both runs")
    args = parser.parse_args(argv)
    return scripted(args) if args.mode == "scripted" else real(args)


if __name__ == "__main__":
    sys.exit(main())
