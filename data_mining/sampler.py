"""Prompt sampler: draws each step's prompts from the train pool, an epoch at a time."""

from __future__ import annotations

import heapq
import random
from collections.abc import Hashable, Iterable
from typing import Any, TypeVar

Label = TypeVar("Label", bound=Hashable)


def rng_state(rng: random.Random) -> list:
    """`rng`'s state as JSON-able lists; `set_rng_state` restores it exactly."""
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def set_rng_state(rng: random.Random, state: list) -> None:
    version, internal, gauss = state
    rng.setstate((version, tuple(internal), gauss))


def weighted_sample(rng: random.Random, items: Iterable[tuple[Label, float]], k: int) -> list[Label]:
    """Up to k distinct labels drawn without replacement, each next with probability proportional
    to its weight (Efraimidis & Spirakis 2006): every item with w > 0, in order, draws
    u ~ U[0, 1) and gets the key u ** (1 / w); the labels of the k largest keys come back, largest
    first. Items with w <= 0 draw nothing and are never picked; equal keys go to the larger label.
    """
    keyed = ((rng.random() ** (1.0 / w), label) for label, w in items if w > 0)
    return [label for _, label in heapq.nlargest(k, keyed)]


class EpochSampler:
    """Shuffled passes over the pool; every prompt is used once per epoch. Deterministic for a seed.

    With per-row `weights` (datasets mixed with explicit weights), each batch is instead a weighted
    draw without repeats inside the batch (Efraimidis-Spirakis keys u**(1/w)), so a dataset's share
    of the prompts follows its weight rather than its size.
    """

    def __init__(self, rows: list[dict[str, Any]], seed: int = 0, weights: list[float] | None = None) -> None:
        if not rows:
            raise ValueError("the train prompt pool is empty")
        if weights is not None and (len(weights) != len(rows) or any(w <= 0 for w in weights)):
            raise ValueError(f"sampler weights must be one value > 0 per row ({len(rows)} rows), "
                             f"got {len(weights)} with minimum {min(weights, default=None)}")
        self.rows = rows
        self.weights = weights
        self.rng = random.Random(seed)
        self.order: list[int] = []
        self.epoch = 0

    def next(self, n: int) -> list[dict[str, Any]]:
        if self.weights is not None:
            # Labelled -i so that equal keys go to the earlier row.
            top = weighted_sample(self.rng, ((-i, w) for i, w in enumerate(self.weights)), n)
            return [self.rows[-j] for j in top]
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
