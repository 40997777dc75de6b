"""Prompt sampler: draws each step's prompts from the train pool, an epoch at a time."""

from __future__ import annotations

import random
from typing import Any


class EpochSampler:
    """Shuffled passes over the pool; every prompt is used once per epoch. Deterministic for a seed."""

    def __init__(self, rows: list[dict[str, Any]], seed: int = 0) -> None:
        if not rows:
            raise ValueError("the train prompt pool is empty")
        self.rows = rows
        self.rng = random.Random(seed)
        self.order: list[int] = []
        self.epoch = 0

    def next(self, n: int) -> list[dict[str, Any]]:
        batch = []
        while len(batch) < n:
            if not self.order:
                self.order = list(range(len(self.rows)))
                self.rng.shuffle(self.order)
                self.epoch += 1
            batch.append(self.rows[self.order.pop()])
        return batch

    def state(self) -> dict[str, Any]:
        return {"order": list(self.order), "epoch": self.epoch, "rng": self.rng.getstate()}
