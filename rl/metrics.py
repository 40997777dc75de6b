"""The one place that records metrics: `metrics.jsonl` (the canonical record) and a progress line."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any, Iterator


class PhaseTimer:
    """Named, timed phases of one step: `with timer("generate"): ...` -> `time/generate`."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[f"time/{name}"] = self.seconds.get(f"time/{name}", 0.0) + time.perf_counter() - t0


class MetricsLog:
    def __init__(self, run_dir: str | Path, total_steps: int) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.total_steps = total_steps
        self.start = time.time()
        self._file = self.path.open("a")

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        record = {"step": step, "wall_time": round(time.time() - self.start, 3), **metrics}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        self._progress(step, metrics)

    def _progress(self, step: int, m: dict[str, Any]) -> None:
        elapsed = time.time() - self.start
        eta = elapsed / (step + 1) * (self.total_steps - step - 1)
        phases = " ".join(
            f"{k[5:]}={m[k]:.1f}s" for k in ("time/generate", "time/reward", "time/train", "time/sync") if k in m
        )
        print(
            f"step {step + 1}/{self.total_steps} | reward {m.get('reward/mean', 0):.3f} "
            f"pass {m.get('reward/pass_rate', 0):.3f} | gap {m.get('rollout/logprob_abs_diff_max', 0):.1e} "
            f"| {m.get('perf/tokens_per_second', 0):.0f} tok/s | {phases} | eta {eta:.0f}s",
            file=sys.stdout,
            flush=True,
        )

    def close(self) -> None:
        self._file.close()


def sample_metrics(samples: list, prefix: str = "reward") -> dict[str, float]:
    """Reward mean and pass rate, overall and per domain, plus completion length and truncation."""
    out: dict[str, float] = {}
    if not samples:
        return out
    groups: dict[str, list] = {"": samples}
    for s in samples:
        groups.setdefault(s.domain, []).append(s)
    for domain, items in groups.items():
        suffix = f"/{domain}" if domain else ""
        out[f"{prefix}/mean{suffix}"] = sum(s.reward for s in items) / len(items)
        out[f"{prefix}/pass_rate{suffix}"] = sum(s.passed for s in items) / len(items)
    out["response/length_mean"] = sum(len(s.completion_ids) for s in samples) / len(samples)
    out["response/truncated_fraction"] = sum(s.truncated for s in samples) / len(samples)
    return out
