"""RunStop: the non-finite guard's count and the preemption signals."""

from __future__ import annotations

import os
import signal

import pytest

from rl.stop import EXIT_NON_FINITE, EXIT_RESUMABLE, RunStop


def test_only_skipped_steps_in_a_row_stop_the_run():
    stop = RunStop(max_skipped_steps=2)
    for step, skipped in enumerate([1.0, 0.0, 1.0, 0.0, 1.0]):
        stop.observe(step, {"train/skipped_steps": skipped})
    stop.observe(5, {})  # a step without training breaks the series too
    assert not stop.requested()
    stop.observe(6, {"train/skipped_steps": 1.0})
    stop.observe(7, {"train/skipped_steps": 2.0})
    assert stop.requested() and stop.exit_code == EXIT_NON_FINITE
    assert "2 steps in a row (up to step 7)" in stop.reason and "train.max_skipped_steps=2" in stop.reason


def test_first_signal_requests_a_resumable_stop_second_exits_at_once(capsys):
    stop = RunStop(max_skipped_steps=3)
    before = signal.getsignal(signal.SIGTERM)
    with stop.signals():
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested() and stop.exit_code == EXIT_RESUMABLE and stop.reason == "SIGTERM received"
        with pytest.raises(SystemExit) as exc:
            os.kill(os.getpid(), signal.SIGINT)
        assert exc.value.code == 128 + signal.SIGINT
    assert signal.getsignal(signal.SIGTERM) is before  # handlers restored on the way out
    err = capsys.readouterr().err
    assert "finishing the current step" in err and "exiting now" in err
