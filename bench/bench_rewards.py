"""Reward throughput on this machine (a benchmark, not a test).

    python bench/bench_rewards.py [--seconds 5]

Prints code-sandbox executions per second (a trivial program and a typical test run: a code
task's solution with its five hidden asserts, through the harness), one at a time and on the
sandbox pool (one worker per usable CPU), and reward-pool throughput (samples per second through
`rewards.pool.score_samples`) for math, instruction and code rows and a mix of the three. Then the
code reward's verdict cache and dedup on duplicate-heavy GRPO steps (groups of 8 completions drawn
from a few programs, prompts re-drawn across steps): hit rate and samples/s with and without.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_mining.tasks import iter_arithmetic, iter_code_tasks  # noqa: E402
import rewards.code as code  # noqa: E402
from rewards.code import HARNESS, LIMITS, _prepare  # noqa: E402
from rewards.pool import score_samples  # noqa: E402
from rewards.sandbox import SandboxPool, isolation, isolation_report, run_python  # noqa: E402
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
    parser.add_argument("--steps", type=int, default=4, help="GRPO steps of code rows for the cache benchmark")
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
    code.configure_cache(0, dedup=False)  # every code row runs: this measures the sandbox path
    for name, batch in batches.items():
        score_samples(batch)  # warm-up: imports, math-verify parser, sandbox probe
        per_s = rate(lambda: len(score_samples(batch)[0]), args.seconds)
        print(f"reward pool {name:11s}: {per_s:8.1f} samples/s (batches of {len(batch)})")
    cache_benchmark(args.steps)


def grpo_code_steps(steps: int, prompts: int = 16, group: int = 8, pool_size: int = 48) -> list[list[Sample]]:
    """`steps` batches of `prompts` code prompts x `group` completions, prompts drawn from a pool of
    `pool_size` tasks (so they recur across steps). Each completion is the solution (45%), an
    identity function (20%), the solution with its last character dropped (10%, usually a syntax
    or wrong-value error) or a solution with a unique comment (25%, distinct text every time)."""
    rng = random.Random(0)
    tasks = [r for r, _ in zip(iter_code_tasks(seed=1), range(pool_size))]
    batches = []
    for _ in range(steps):
        batch = []
        for task in rng.sample(tasks, prompts):
            solution = task.reference["solution"]
            for _ in range(group):
                program = rng.choices([solution, "def f(x): return x", solution[:-1], None], [45, 20, 10, 25])[0]
                program = program or f"{solution}  # {rng.getrandbits(48):x}"
                batch.append(Sample(prompt_id=task.id, domain="code", prompt=task.prompt, prompt_ids=[],
                                    reference=task.reference, completion=f"```python\n{program}\n```"))
        batches.append(batch)
    return batches


def cache_benchmark(steps: int) -> None:
    report = isolation_report()
    print(f"sandbox memory cap: {report['memory_cap']} (cgroup {report['cgroup_detail']})")
    batches = grpo_code_steps(steps)
    for name, size, dedup in (("no cache, no dedup", 0, False), ("dedup only", 0, True), ("cache + dedup", 100_000, True)):
        code.configure_cache(size, dedup)
        start, rates = time.perf_counter(), []
        for batch in batches:
            before = code.cache_stats()
            score_samples(batch)
            after = code.cache_stats()
            rates.append(1 - (after["executions"] - before["executions"]) / len(batch))
        wall = time.perf_counter() - start
        stats = code.cache_stats()
        print(f"code reward {name:18s}: {steps * len(batches[0]) / wall:6.1f} samples/s, "
              f"{stats['executions']} runs for {stats['lookups']} samples; "
              f"runs saved per step: {' '.join(f'{r:.0%}' for r in rates)}")
    code.configure_cache()


if __name__ == "__main__":
    main()
