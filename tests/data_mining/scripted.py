"""A scripted policy for the miner's tests: each prompt passes with a fixed probability."""

from __future__ import annotations

import random

from data_mining.miner import Miner
from rl.types import Sample

GROUP = 8
PER_STEP = 8


def pool(n_each: int = 30) -> tuple[list[dict], dict[str, float]]:
    """One third solved (p=1), one third impossible (p=0), one third learnable (p=0.5)."""
    rows, truth = [], {}
    for kind, p in (("solved", 1.0), ("impossible", 0.0), ("learnable", 0.5)):
        for i in range(n_each):
            pid = f"{kind}:{i}"
            rows.append({"id": pid, "domain": "math", "prompt": pid, "reference": {}})
            truth[pid] = p
    return rows, truth


class ScriptedPolicy:
    """generate_and_score: n Samples per row, each passing with the prompt's probability, stamped
    with policy version `version` (set it to move the policy)."""

    def __init__(self, truth: dict[str, float], seed: int = 0, version: int = 0) -> None:
        self.truth, self.rng, self.rollouts, self.version = truth, random.Random(seed), 0, version

    def __call__(self, rows: list[dict], n: int) -> list[Sample]:
        out = []
        for row in rows:
            for k in range(n):
                passed = self.rng.random() < self.truth[row["id"]]
                out.append(Sample(row["id"], row["domain"], row["prompt"], [1], group_index=k,
                                  reward=float(passed), passed=passed,
                                  policy_version=self.version))
        self.rollouts += len(out)
        return out


class LevelPolicy(ScriptedPolicy):
    """A policy whose pass rate on a fresh prompt falls with its difficulty, `curve[difficulty]`,
    and rises by `practice` each time it generates for that prompt (up to 1)."""

    def __init__(self, curve: dict[int, float], seed: int = 0, practice: float = 0.0) -> None:
        super().__init__({}, seed)
        self.curve, self.practice = curve, practice

    def __call__(self, rows: list[dict], n: int) -> list[Sample]:
        for r in rows:
            fresh = self.curve[r["difficulty"]]
            self.truth[r["id"]] = min(1.0, self.truth[r["id"]] + self.practice) if r["id"] in self.truth else fresh
        return super().__call__(rows, n)


def run(miner: Miner, policy: ScriptedPolicy, steps: int, start: int = 0, moving: bool = False) -> list[list[Sample]]:
    """The train samples of `steps` steps; `moving`: the policy's version is the step (one update a step)."""
    batches = []
    for step in range(start, start + steps):
        policy.version = step if moving else policy.version
        batches.append(miner.next_batch(step, policy).train)
    return batches
