"""The engines' CPU priority: lower than the trainer's while generation overlaps training."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

from rl.config import RolloutConfig
from rl.rollout import _lower_priority, engine_nice

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="per-thread niceness is Linux's")


@pytest.mark.parametrize(
    ("nice", "staleness", "expected"),
    [(None, 0, 0), (None, 1, 4), (None, 2, 4), (0, 2, 0), (7, 0, 7), (3, 1, 3)],
)
def test_engine_nice_is_the_setting_or_4_only_when_overlapping(nice, staleness, expected):
    assert engine_nice(RolloutConfig(nice=nice, max_staleness=staleness)) == expected


@linux_only
def test_lower_priority_sets_only_the_calling_thread():
    main_before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    seen = {}

    def body():
        _lower_priority(main_before + 3)
        seen["after"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        _lower_priority(main_before + 1)  # never raises a priority back
        seen["again"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert seen == {"after": min(19, main_before + 3), "again": min(19, main_before + 3)}
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == main_before


@linux_only
def test_lower_priority_of_every_thread_reaches_threads_started_before_and_after():
    # In a child process: raising the niceness of every thread cannot be undone without privileges.
    code = """
import os, threading
from rl.rollout import _lower_priority
base = os.getpriority(os.PRIO_PROCESS, 0)
ready, done, seen = threading.Event(), threading.Event(), {}
def early():
    ready.set(); done.wait()
    seen["early"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
t = threading.Thread(target=early); t.start(); ready.wait()
_lower_priority(min(19, base + 2), every_thread=True)
def late():
    seen["late"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
u = threading.Thread(target=late); u.start(); u.join()
done.set(); t.join()
seen["main"] = os.getpriority(os.PRIO_PROCESS, 0)
assert set(seen.values()) == {min(19, base + 2)}, (base, seen)
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
