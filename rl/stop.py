"""Ending a run early at a step boundary, so that what it leaves behind is consistent.

`RunStop` is shared by the driver and the step loops (`run_rl.rl_loop`, `rl.pipeline.run_async`):
the loops ask `stop.requested()` before each step and return when it is set; the driver then
says why and exits with the matching status. Two things set it:

* the non-finite guard (`observe`): `train.max_skipped_steps` RL steps in a row whose trainer
  skipped an optimiser step for a NaN or infinite loss or gradient norm. The weights were never
  touched, but the run is not learning; it stops with `EXIT_NON_FINITE` and the last checkpoint
  on disk is the one to go back to.
* a preemption signal (`signals`): SIGTERM (what schedulers send before they kill) or SIGINT
  (Ctrl-C). The current step finishes, the driver writes a checkpoint and exits with
  `EXIT_RESUMABLE`; a second signal exits at once.

An engine or reward actor that dies or stalls is replaced and its work redone (`rl.supervise`); a
trainer that does, or a role replaced more than `run.max_restarts` times, ends the run at once
with `EXIT_ACTOR_DIED`, naming the newest complete checkpoint to resume from.
"""

from __future__ import annotations

import contextlib
import signal
import sys
from typing import Any, Iterator

EXIT_NON_FINITE = 3
EXIT_ACTOR_DIED = 4
# 75 is EX_TEMPFAIL in sysexits.h ("temporary failure, try again later"): a scheduler or wrapper
# script can tell a preempted run, which a rerun with run.resume continues, from a failed one.
EXIT_RESUMABLE = 75


class RunStop:
    """Why the run is to stop at the next step boundary (`reason`, None while it goes on)."""

    def __init__(self, max_skipped_steps: int) -> None:
        self.max_skipped_steps = max_skipped_steps
        self.skipped_in_a_row = 0
        self.reason: str | None = None
        self.exit_code = 0
        self.signals_received = 0

    def requested(self) -> bool:
        return self.reason is not None

    def request(self, reason: str, exit_code: int) -> None:
        if self.reason is None:  # the first reason wins: a signal after a non-finite stop changes nothing
            self.reason, self.exit_code = reason, exit_code

    def observe(self, step: int, metrics: dict[str, Any]) -> dict[str, Any]:
        """Count `step`'s skipped optimiser steps (`train/skipped_steps`); returns `metrics` unchanged."""
        if metrics.get("train/skipped_steps"):
            self.skipped_in_a_row += 1
            if self.skipped_in_a_row >= self.max_skipped_steps:
                self.request(f"{self.skipped_in_a_row} steps in a row (up to step {step}) skipped their optimiser "
                             "step for a non-finite loss or gradient norm (train.max_skipped_steps="
                             f"{self.max_skipped_steps}); the weights were left untouched", EXIT_NON_FINITE)
        else:
            self.skipped_in_a_row = 0
        return metrics

    @contextlib.contextmanager
    def signals(self) -> Iterator[None]:
        """SIGTERM and SIGINT request a resumable stop while inside; a second one exits at once."""
        def handle(signum: int, _frame: Any) -> None:
            name = signal.Signals(signum).name
            self.signals_received += 1
            if self.signals_received > 1:
                print(f"\n{name} again: exiting now, without a checkpoint", file=sys.stderr, flush=True)
                raise SystemExit(128 + signum)
            self.request(f"{name} received", EXIT_RESUMABLE)
            print(f"\n{name}: finishing the current step, then writing a checkpoint "
                  f"(send it again to exit at once)", file=sys.stderr, flush=True)

        previous = {s: signal.signal(s, handle) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
