"""Reward actors: score Samples in a Ray actor, never letting one bad reward stop the run."""

from __future__ import annotations

import time
from collections import defaultdict

from rewards.registry import score_sample
from rl.types import Sample

# Imported for their registrations: the built-in rewards.
import rewards.instruction  # noqa: F401
import rewards.math  # noqa: F401
import rewards.shaping  # noqa: F401


def score_samples(samples: list[Sample]) -> tuple[list[Sample], dict[str, float]]:
    """Fill reward fields in place; an exception scores 0 and is counted per domain."""
    errors: dict[str, int] = defaultdict(int)
    first_error: dict[str, str] = {}
    t0 = time.perf_counter()
    for s in samples:
        try:
            result = score_sample(s)
            s.reward, s.reward_components, s.passed = result.score, result.components, bool(result.passed)
        except Exception as exc:  # a reward bug must cost one sample, not the run
            s.reward, s.reward_components, s.passed = 0.0, {"error": 1.0}, False
            errors[s.domain] += 1
            first_error.setdefault(s.domain, f"{type(exc).__name__}: {exc}")
    stats = {f"reward/errors/{d}": float(n) for d, n in errors.items()}
    stats["time/reward_compute"] = time.perf_counter() - t0
    for domain, msg in first_error.items():
        print(f"[reward] {errors[domain]} error(s) in domain {domain!r}; first: {msg}", flush=True)
    return samples, stats


class RewardWorker:
    """Ray actor body (wrapped with ray.remote by the driver)."""

    def score(self, samples: list[Sample]) -> tuple[list[Sample], dict[str, float]]:
        return score_samples(samples)
