"""The timeout clock of the reward call running in this thread.

The reward pool (`rewards.pool`) runs each call on a worker thread and marks it here; a reward that
waits on a worker pool shared with other calls (the code reward's sandbox pool) pauses the clock
meanwhile. Both import this module, so neither imports the other for it.
"""

from __future__ import annotations

import threading
from typing import Protocol


class PausableCall(Protocol):
    def pause(self, paused: bool) -> None: ...


_running = threading.local()  # `.call`: the call this worker thread is running, or None


def set_running(call: PausableCall | None) -> None:
    """Mark `call` as the one running in this thread (None: no call)."""
    _running.call = call


def pause_clock(paused: bool) -> None:
    """From inside a reward call: stop (True) or restart (False) the call's timeout clock.

    For time the call spends queued behind other calls' work in a worker pool they share (the code
    sandbox): the timeout bounds a call's own work, so one call must not run out of time because
    another call's jobs went first. Does nothing outside a pool's worker thread.
    """
    call = getattr(_running, "call", None)
    if call is not None:
        call.pause(paused)
