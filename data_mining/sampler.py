"""Prompt sampler: draws each step's prompts from the train pool, an epoch at a time."""

from __future__ import annotations

import random
from typing import Any


def rng_state(rng: random.Random) -> list:
    """`rng`'s state as JSON-able lists; `set_rng_state` restores it exactly."""
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def set_rng_state(rng: random.Random, state: list) -> None:
    version, internal, gauss = state
    rng.setstate((version, tuple(internal), gauss))


class EpochSampler:
    """Shuffled passes over the pool; every prompt is used once per epoch. Deterministic for a seed.

    With per-row `weights` (datasets mixed with explicit weights), each batch is instead a weighted
    draw without repeats inside the batch (Efraimidis-Spirakis keys u**(1/w)), so a dataset's share
    of the prompts follows its weight rather than its size.
    """

    def __init__(self, rows: list[dict[str, Any]], seed: int = 0, weights: list[float] | None = None) -> None:
        if not rows:
            raise ValueError("the train prompt pool is empty")
        self.rows = rows
        self.weights = weights
        self.rng = random.Random(seed)
        self.order: list[int] = []
        self.epoch = 0

    def next(self, n: int) -> list[dict[str, Any]]:
        if self.weights is not None:
            keys = [self.rng.random() ** (1.0 / w) if w > 0 else -1.0 for w in self.weights]
            top = sorted(range(len(keys)), key=keys.__getitem__, reverse=True)[:n]
            return [self.rows[i] for i in top]
        batch = []
        while len(batch) < n:
            if not self.order:
                self.order = list(range(len(self.rows)))
                self.rng.shuffle(self.order)
                self.epoch += 1
            batch.append(self.rows[self.order.pop()])
        return batch

    def state(self) -> dict[str, Any]:
        return {"order": list(self.order), "epoch": self.epoch, "rng": rng_state(self.rng)}

    def load_state(self, state: dict[str, Any]) -> None:
        self.order, self.epoch = list(state["order"]), state["epoch"]
        set_rng_state(self.rng, state["rng"])
