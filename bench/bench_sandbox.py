"""How quickly the sandbox and the reward pool stop, time out and overlap work (a benchmark, not a
test: the tests assert what happens, this prints how long it took).

    python bench/bench_sandbox.py [--repeats 3]

Each line is a ratio of two times measured here, side by side, so it reads the same on a fast and
on a loaded machine:
- sandbox stop: a hostile program's wall time over its wall limit (about 1 when the kill is
  prompt; the host's backup kill comes at the limit + 1 s);
- sandbox pool: 4 sleeping jobs on 2 workers over the same jobs one at a time (0.5 = full overlap);
- reward pool: a scoring call with hanging, slow or loop-blocking rewards over its timeout (about
  1 when the timeout is kept; the loop-blocking call adds the 1 s check that the event loop still
  answers, so about 3 at 0.5 s), and parallel calls over the same calls' sequential time;
- code reward: a call queued behind another call's job, its wall time over its timeout (more than
  1 means the queued time was not charged, as it should be).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rewards import code  # noqa: E402
from rewards.pool import RewardPool  # noqa: E402
from rewards.registry import RewardResult, reward  # noqa: E402
from rewards.sandbox import Limits, SandboxPool, isolation, run_python  # noqa: E402
from rl.types import Sample  # noqa: E402

LIMITS = Limits(wall_s=2.0, cpu_s=1.0, memory_bytes=512 << 20, processes=16, output_bytes=64 << 10)
HOSTILE = {
    "busy loop": "while True:\n    pass",
    "sleep in C": "import time\ntime.sleep(1000)",
    "fork bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
    "print gigabytes": "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)",
}


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median_of(repeats: int, fn) -> float:
    return statistics.median(seconds(fn) for _ in range(repeats))


def _s(domain: str, completion: str, i: int = 0) -> Sample:
    return Sample(f"p{i}", domain, "q", [1], completion=completion)


def sandbox_lines(repeats: int) -> None:
    for name, source in HOSTILE.items():
        wall = median_of(repeats, lambda: run_python(source, LIMITS))
        print(f"sandbox stop  {name:18s}: {wall / LIMITS.wall_s:5.2f} x its wall limit ({LIMITS.wall_s:g} s)")
    jobs = [("import time\ntime.sleep(0.5)", LIMITS, b"")] * 4
    pool = SandboxPool(workers=2)
    try:
        pooled = median_of(repeats, lambda: pool.map(jobs))
    finally:
        pool.shutdown()
    alone = median_of(repeats, lambda: [run_python(*job) for job in jobs])
    print(f"sandbox pool  4 jobs on 2 workers : {pooled / alone:5.2f} x one at a time")


@reward("bench_hang")
def _hang(sample: Sample) -> RewardResult:
    if sample.completion == "hang":
        time.sleep(30)
    return RewardResult(1.0)


@reward("bench_chunks", batched=True, max_batch=2)
def _chunks(samples: list[Sample]) -> list[RewardResult]:
    if any(s.completion == "slow" for s in samples):
        time.sleep(3)
    return [RewardResult(1.0) for _ in samples]


@reward("bench_block")
async def _block(sample: Sample) -> RewardResult:
    if sample.completion == "block":
        time.sleep(3)  # blocks the event loop
    return RewardResult(1.0)


@reward("bench_io")
def _io(sample: Sample) -> RewardResult:
    time.sleep(0.2)
    return RewardResult(1.0)


@reward("bench_aio")
async def _aio(sample: Sample) -> RewardResult:
    await asyncio.sleep(0.2)
    return RewardResult(1.0)


def reward_pool_lines(repeats: int) -> None:
    timeout = 0.5
    cases = {
        "hanging calls": ({"h": [("bench_hang", 1.0)]}, [_s("h", "hang", 0), _s("h", "ok", 1), _s("h", "hang", 2)], 2),
        "slow chunk": ({"c": [("bench_chunks", 1.0)]}, [_s("c", "ok", i) for i in range(2)] + [_s("c", "slow", 2)], 3),
        "loop-blocking call": ({"a": [("bench_block", 1.0)]}, [_s("a", "block")], 1),
    }
    for name, (routes, batch, threads) in cases.items():
        def run() -> None:
            with RewardPool(routes, timeout_s=timeout, threads=threads) as pool:
                pool.score(batch)

        print(f"reward pool   {name:18s}: {median_of(repeats, run) / timeout:5.2f} x the call timeout ({timeout:g} s)")
    routes = {"io": [("bench_io", 1.0)], "aio": [("bench_aio", 1.0)]}
    batch = [_s("io", "x", i) for i in range(8)] + [_s("aio", "x", i) for i in range(50)]

    def parallel() -> None:
        with RewardPool(routes, timeout_s=5.0, threads=4) as pool:
            pool.score(batch)

    ratio = median_of(repeats, parallel) / (58 * 0.2)
    print(f"reward pool   8 sync + 50 async  : {ratio:5.3f} x their sequential time")


def code_queue_line(repeats: int) -> None:
    pool, default_pool = SandboxPool(workers=1), code.default_pool
    code.default_pool = lambda: pool  # one worker: the second call's job queues behind the first's
    code.configure_cache(0, dedup=False)
    timeout, ratios, errors = 1.0, [], 0.0
    try:
        for i in range(repeats):
            slow = _s("code", f"import time\ntime.sleep(2.5)\ndef f(x): return x + 3  # {i}")
            quick = _s("code", f"def f(x): return x + 3  # {i}")
            for s in (slow, quick):
                s.reference = {"tests": ["assert f(2) == 5"]}
            with RewardPool(timeout_s=None) as patient, RewardPool(timeout_s=timeout) as strict:
                thread = threading.Thread(target=patient.score, args=([slow],))
                thread.start()
                time.sleep(0.3)
                start = time.perf_counter()
                _, stats = strict.score([quick])
                ratios.append((time.perf_counter() - start) / timeout)
                errors += stats["reward/errors/code"]
                thread.join()
    finally:
        code.default_pool = default_pool
        pool.shutdown()
        code.configure_cache()
    print(f"code reward   queued behind a job : {statistics.median(ratios):5.2f} x the call timeout ({timeout:g} s), "
          f"{errors:g} of {repeats} calls timed out")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement (the median is printed)")
    args = parser.parse_args()
    print(f"CPUs usable: {len(os.sched_getaffinity(0))}; sandbox isolation: {isolation()}")
    sandbox_lines(args.repeats)
    reward_pool_lines(args.repeats)
    code_queue_line(args.repeats)


if __name__ == "__main__":
    main()
