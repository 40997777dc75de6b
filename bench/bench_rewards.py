"""Reward throughput on this machine (a benchmark, not a test).

    python bench/bench_rewards.py [--seconds 5]

Prints code-sandbox executions per second (a trivial program and a typical test run: a code
task's solution with its five hidden asserts, through the harness), one at a time and on the
sandbox pool (one worker per usable CPU), and reward-pool throughput (samples per second through
`rewards.pool.score_samples`) for math, instruction and code rows and a mix of the three.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_mining.tasks import iter_arithmetic, iter_code_tasks  # noqa: E402
from rewards.code import HARNESS, LIMITS, _prepare  # noqa: E402
from rewards.pool import score_samples  # noqa: E402
from rewards.sandbox import SandboxPool, isolation, run_python  # noqa: E402
from rl.types import Sample  # noqa: E402


def rate(fn, seconds: float) -> float:
    """Calls of `fn` per second over at least `seconds` (fn returns how many items it did)."""
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        done += fn()
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="time per measurement")
    args = parser.parse_args()
    cpus = len(os.sched_getaffinity(0))
    print(f"CPUs usable: {cpus}; sandbox isolation: {isolation()}; limits: {LIMITS}")

    task = next(iter_code_tasks(seed=0))
    solution, tests = task.reference["solution"], task.reference["tests"]
    pool = SandboxPool(cpus)
    jobs = {
        "trivial program": lambda: ("pass", LIMITS, b""),
        "typical test run": lambda: (HARNESS, LIMITS, _prepare(solution, tests, "f")[0]),
    }
    for name, job in jobs.items():
        sequential = rate(lambda: run_python(*job()).ok and 1, args.seconds)
        pooled = rate(lambda: len(pool.map([job() for _ in range(4 * cpus)])), args.seconds)
        print(f"sandbox {name:17s}: {sequential:6.1f} exec/s one at a time, {pooled:6.1f} exec/s on {cpus} workers")
    pool.shutdown()

    math_rows = [Sample(prompt_id=r.id, domain="math", prompt=r.prompt, prompt_ids=[], reference=r.reference,
                        completion=f"The answer is \\boxed{{{r.reference['answer']}}}.")
                 for r, _ in zip(iter_arithmetic(seed=0, max_digits=3), range(64))]
    constraints = {"instruction_id_list": ["punctuation:no_comma", "change_case:english_lowercase",
                                           "length_constraints:number_words"],
                   "kwargs": [{}, {}, {"num_words": 5, "relation": "at least"}]}
    instruction_rows = [Sample(prompt_id=f"if{i}", domain="instruction", prompt="Describe rain.", prompt_ids=[],
                               reference={"constraints": constraints},
                               completion="rain falls softly on the quiet town " * (1 + i % 3))
                        for i in range(64)]
    code_rows = [Sample(prompt_id=r.id, domain="code", prompt=r.prompt, prompt_ids=[], reference=r.reference,
                        completion=r.reference["solution"] if i % 2 else "def f(x): return x")
                 for i, r in zip(range(64), iter_code_tasks(seed=0))]
    batches = {"math": math_rows, "instruction": instruction_rows, "code": code_rows,
               "mixed": [row for triple in zip(math_rows, instruction_rows, code_rows) for row in triple][:64]}
    for name, batch in batches.items():
        score_samples(batch)  # warm-up: imports, math-verify parser, sandbox probe
        per_s = rate(lambda: len(score_samples(batch)[0]), args.seconds)
        print(f"reward pool {name:11s}: {per_s:8.1f} samples/s (batches of {len(batch)})")


if __name__ == "__main__":
    main()
