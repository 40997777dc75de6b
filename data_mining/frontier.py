"""Refill at the frontier: new procedural prompts where the policy's pass rate is near 0.5.

When a domain's learnable and unseen prompts run low, the miner asks its task generator
(`data_mining.tasks.TaskGenerator`) for `mining.refill_prompts` new prompts. The difficulty knob
x is steered from the pass rate of fresh prompts per difficulty level (`Ledger.level_rates`, the
first group of every prompt, discounted by policy versions):

    x = k0 + (r(k0) - 0.5) / (r(k0) - r(k1)) (k1 - k0)     at the first adjacent measured levels
                                                           with r(k0) >= 0.5 > r(k1)

one level past the hardest measured level when every measured level is above 0.5 (below: one
level under the easiest), clamped to the generator's levels. A fractional x splits the refill
between floor(x) and floor(x) + 1 in proportion, so the expected pass rate of a refill follows x
smoothly. As the policy improves, the levels' rates rise and x moves up with them.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

from data_mining.ledger import Ledger
from data_mining.tasks import TaskGenerator
from rl.config import MiningConfig

TARGET = 0.5  # a pass rate of 0.5 maximises a group's reward variance p (1 - p)


def frontier_level(rates: dict[int, float], lo: int, hi: int, start: float) -> float:
    """The difficulty where the pass rate crosses TARGET (see the module docstring); `start` when
    no level is measured; always within [lo, hi]."""
    levels = sorted(rates)
    if not levels:
        x = start
    elif all(rates[k] >= TARGET for k in levels):
        x = levels[-1] + 1
    elif all(rates[k] < TARGET for k in levels):
        x = levels[0] - 1
    else:
        crossings = [(k0, k1) for k0, k1 in zip(levels, levels[1:]) if rates[k0] >= TARGET > rates[k1]]
        if crossings:
            k0, k1 = crossings[0]
            x = k0 + (rates[k0] - TARGET) / (rates[k0] - rates[k1]) * (k1 - k0)
        else:  # rates rise with difficulty somewhere: the level nearest the target
            x = min(levels, key=lambda k: abs(rates[k] - TARGET))
    return float(min(max(x, lo), hi))


def split_levels(x: float, n: int) -> dict[int, int]:
    """n prompts split between floor(x) and floor(x) + 1 in proportion to x's fraction."""
    low = math.floor(x)
    upper = round(n * (x - low))
    return {k: m for k, m in ((low, n - upper), (low + 1, upper)) if m > 0}


class Frontier:
    """The miner's task generators (one per domain), their difficulty knobs, and what they made."""

    def __init__(self, generators: dict[str, TaskGenerator], cfg: MiningConfig) -> None:
        self.generators, self.cfg = generators, cfg
        self.knobs: dict[str, float] = {}
        self.generated: list[dict[str, Any]] = []  # every generated row, in order (a resume re-adds them)
        self.dry: set[str] = set()  # domains whose generator found nothing new at or above its frontier: not asked again

    def steer(self, ledger: Ledger, starts: dict[str, float]) -> None:
        """Every generator's knob to its domain's frontier (`starts`: the knob before any level is measured)."""
        for domain, gen in self.generators.items():
            start = self.knobs.get(domain, starts.get(domain, 1.0))
            self.knobs[domain] = frontier_level(ledger.level_rates(domain), 1, gen.max_level, start)

    def refill(self, domain: str, seen: set[str]) -> list[dict[str, Any]]:
        """New rows for `domain` at its knob (none without a generator, past refill_max_prompts, or
        once a refill found nothing new). A level with nothing new left (every one of its prompts
        already in the pool: a small family's easy levels) hands its share to the next level up, so a
        knob between an exhausted level and a fresh one still refills in full."""
        gen = self.generators.get(domain)
        room = self.cfg.refill_max_prompts - len(self.generated)
        if gen is None or room <= 0 or domain in self.dry:
            return []
        shares = split_levels(self.knobs[domain], min(self.cfg.refill_prompts, room))
        taken, rows, short = set(seen), [], 0
        level = min(shares)
        while level <= gen.max_level and (level in shares or short):
            made = gen.make(level, shares.get(level, 0) + short, taken)
            short = shares.get(level, 0) + short - len(made)
            taken.update(row.id for row in made)
            rows += [asdict(row) for row in made]
            level += 1
        self.generated += rows
        if not rows:
            self.dry.add(domain)
        return rows

    def state(self) -> dict[str, Any]:
        return {"generators": {d: g.state() for d, g in self.generators.items()}, "knobs": dict(self.knobs),
                "generated": list(self.generated), "dry": sorted(self.dry)}

    def load_state(self, state: dict[str, Any]) -> None:
        for domain, rng in state["generators"].items():
            self.generators[domain].load_state(rng)
        self.knobs, self.generated, self.dry = dict(state["knobs"]), list(state["generated"]), set(state["dry"])
