"""The code reward: extraction, strict tests, forgeries of a pass, the CLI, and the code tasks."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import rewards.code as code
from data_mining.tasks import code_task, iter_code_tasks
from rewards.code import build_test_program, code_reward, extract_program, run_tests
from rewards.pool import score_samples
from rewards.registry import DEFAULT_DOMAIN_REWARDS, batch_limit, score_sample
from rewards.sandbox import ExecResult, Limits, SandboxPool, cgroup_layout, isolation_report
from rl.config import RewardConfig, SandboxConfig
from rl.types import Sample

REPO = Path(__file__).resolve().parents[2]
LIMITS = Limits(wall_s=2.0, cpu_s=1.0, memory_bytes=512 << 20)
ASSERTS = ["assert f(2) == 5", "assert f(-3) == 0", "assert f(0) == 3"]
HUMANEVAL = '''
METADATA = {"author": "jt", "dataset": "test"}


def check(candidate):
    assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3) == True
    assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.05) == False
    assert candidate([1.0, 2.0, 5.9, 4.0, 5.0], 0.95) == True
    assert candidate([1.1, 2.2, 3.1, 4.1, 5.1], 1.0) == True
    assert candidate([1.1, 2.2, 3.1, 4.1, 5.1], 0.5) == False
'''
CLOSE = '''from typing import List


def has_close_elements(numbers: List[float], threshold: float) -> bool:
    for i, a in enumerate(numbers):
        for j, b in enumerate(numbers):
            if i != j and abs(a - b) < threshold:
                return True
    return False
'''


def passes(program, tests=ASSERTS, entry_point=None):
    return run_tests(program, tests, entry_point, LIMITS)[:2]


def test_extract_program():
    assert extract_program("def f(x): return x+3") == "def f(x): return x+3"
    text = "Try:\n```python\ndef f(x):\n    return x\n```\nthen\n```python\ndef f(x):\n    return x + 3\n```\nDone."
    assert extract_program(text) == "def f(x):\n    return x + 3\n"
    assert extract_program("```\ndef f(x): return 1\n```") == "def f(x): return 1\n"
    assert extract_program("```py\ndef f(x): return 2\n```\n```text\nnot code\n```") == "def f(x): return 2\n"
    assert extract_program("```python\ndef f(x): return 4") == "def f(x): return 4"  # truncated, no closing fence


def test_build_test_program():
    assert build_test_program(["assert f(1) == 2"]) == "assert __sbx_truth__(__sbx_cmp__(('==',), f(1), 2))"
    program = build_test_program(HUMANEVAL, "has_close_elements")
    assert program.rstrip().endswith("check(has_close_elements)")
    assert build_test_program(HUMANEVAL + "\ncheck(g)\n", "f").count("check(") == 2  # def + the given call
    assert "__sbx_cmp__(('<=', '<'), 0, f(1), 3)" in build_test_program("assert 0 <= f(1) < 3")
    for bad, message in [("assert (", "do not parse"), (HUMANEVAL, "no entry_point"), ([1], "strings"), ("", "non-empty")]:
        with pytest.raises(ValueError, match=message):
            build_test_program(bad)


@pytest.mark.parametrize(
    "program, tests, entry_point, expected",
    [
        ("def f(x): return x+3", ASSERTS, None, (True, "pass")),
        ("def f(x): return x+2", ASSERTS, None, (False, "assertion")),
        ("def f(x) return x+3", ASSERTS, None, (False, "syntax")),
        ("def f(x): return y", ASSERTS, None, (False, "test_error")),
        ("raise RuntimeError('no')", ASSERTS, None, (False, "candidate_error")),
        ("def g(x): return x+3", ASSERTS, None, (False, "test_error")),
        (CLOSE, HUMANEVAL, "has_close_elements", (True, "pass")),
        (CLOSE.replace("i != j and ", ""), HUMANEVAL, "has_close_elements", (False, "assertion")),
        # Plain values of another form than the expected one keep Python's own equality.
        ("from collections import Counter\ndef f(s): return Counter(s)", ["assert f('aab') == {'a': 2, 'b': 1}"], None, (True, "pass")),
        ("from collections import namedtuple\nP = namedtuple('P', 'x y')\ndef f(): return P(1, 2)", ["assert f() == (1, 2)"], None, (True, "pass")),
        ("def f(): return True", ["assert f() == 1", "assert f()"], None, (True, "pass")),
        ("def f(): return {1: 2}.keys()", ["assert f() == {1}", "assert 1 in f()"], None, (True, "pass")),
        ("def f(x): return x / 3", ["assert abs(f(1) - 0.3333333) < 1e-6", "import math", "assert math.isclose(f(3), 1)"], None, (True, "pass")),
    ],
)
def test_correct_and_buggy(program, tests, entry_point, expected):
    assert passes(program, tests, entry_point) == expected


# Programs that try to be scored as passing without being right, each with tests a plain
# "run it and look at the exit status / stdout / ==" check would wrongly pass.
EQ5 = ["assert f(2) == 5"]
FORGERIES = {
    "os._exit(0) before the tests": ("import os\nos._exit(0)", EQ5),
    "sys.exit(0) before the tests": ("import sys\nsys.exit(0)", EQ5),
    "atexit exit 0": ("import atexit, os\natexit.register(lambda: os._exit(0))\ndef f(x): raise ValueError", EQ5),
    "exit during a test": ("import os\ndef f(x): os._exit(0)", EQ5),
    "SystemExit during a test": ("def f(x): raise SystemExit(0)", EQ5),
    "print a pass": ("print('PASS ' + '0' * 32)\nprint('passed')\ndef f(x): return 0", EQ5),
    "write a guessed marker": (
        "import os\nfor fd in range(3, 20):\n    try:\n        os.write(fd, b'PASS ' + b'0' * 32)\n"
        "    except OSError:\n        pass\nos._exit(0)", EQ5),
    "__eq__ always true": ("class A:\n    def __eq__(self, o): return True\n    def __ne__(self, o): return False\n"
                           "def f(x): return A()", EQ5),
    "int subclass with forged __eq__": ("class I(int):\n    def __eq__(self, o): return True\n"
                                        "    __hash__ = int.__hash__\ndef f(x): return I(0)", EQ5),
    "forged __lt__ behind abs": ("class A:\n    def __sub__(self, o): return self\n    def __abs__(self): return self\n"
                                 "    def __lt__(self, o): return True\ndef f(x): return A()",
                                 ["assert abs(f(2) - 5) < 1e-9"]),
    "forged __contains__": ("class C:\n    def __contains__(self, o): return True\ndef f(x): return C()",
                            ["assert 5 in f(2)"]),
    "always truthy": ("class T:\n    def __bool__(self): return True\ndef f(x): return T()", ["assert f(2)"]),
    "patched builtins": ("import builtins\nbuiltins.abs = lambda x: 0\ndef f(x): return 0",
                         ["assert abs(f(2) - 5) < 1e-9"]),
    "shadowing builtins": ("def abs(x): return 0\ndef f(x): return 0", ["assert abs(f(2) - 5) < 1e-9"]),
    "patched module": ("import math\nmath.isclose = lambda *a, **k: True\ndef f(x): return 0",
                       ["import math", "assert math.isclose(f(2), 5)"]),
    "trace that skips the asserts": (
        "import sys\n"
        "def tracer(frame, event, arg):\n"
        "    if frame.f_code.co_filename == '<tests>':\n"
        "        def jump(frame, event, arg):\n"
        "            if event == 'line' and frame.f_lineno == 1:\n"
        "                frame.f_lineno = 2\n"
        "            return jump\n"
        "        return jump\n"
        "sys.settrace(tracer)\n"
        "def f(x): return 0", EQ5 + ["pass"]),
    "signal handler exits 0": ("import os, signal\nsignal.signal(signal.SIGALRM, lambda *a: os._exit(0))\n"
                               "signal.setitimer(signal.ITIMER_REAL, 0.01)\ndef f(x):\n    import time\n"
                               "    time.sleep(0.5)\n    return 0", EQ5),
    "kill the harness": ("import os, signal\ndef f(x): os.kill(os.getpid(), signal.SIGKILL)", EQ5),
}


def as_check_program(tests):
    return "def check(candidate):\n" + "".join(f"    {t.replace('f(', 'candidate(')}\n" for t in tests)


@pytest.mark.parametrize("name", list(FORGERIES))
def test_forged_passes_fail(name):
    program, tests = FORGERIES[name]
    assert not passes(program, tests)[0]
    if name != "trace that skips the asserts":  # its jump targets line numbers of the assert list
        assert not passes(program, as_check_program(tests), "f")[0]


def test_int_subclass_is_judged_by_its_value():
    program = "class I(int):\n    def __eq__(self, o): return True\n    __hash__ = int.__hash__\ndef f(x): return I(x + 3)"
    tests = ["assert f(2) == 5", "assert abs(f(1) - 4) < 1e-9", "import math", "assert math.isclose(f(0), 3)",
             "assert f(1)", "assert 4 in [f(1)]"]
    assert passes(program, tests) == (True, "pass")
    assert passes(program, as_check_program(tests), "f") == (True, "pass")


def sample(completion, tests=ASSERTS, **reference):
    return Sample(prompt_id="p", domain="code", prompt="Write f.", prompt_ids=[], completion=completion,
                  reference={"tests": tests, **reference})


def test_code_reward_scores_and_components(monkeypatch):
    monkeypatch.setattr(code, "LIMITS", LIMITS)
    good = sample("Here you go:\n```python\ndef f(x):\n    return x + 3\n```")
    results = code_reward([good, sample("def f(x): return x"), sample("while True: pass"),
                           sample("def f(x): return x+3", tests="assert (")])
    assert [r.score for r in results] == [1.0, 0.0, 0.0, 0.0]
    assert results[0].components == {"passed_tests": 1.0, "timeout": 0.0, "memory_limit": 0.0, "error": 0.0}
    assert results[0].passed is True and results[1].passed is False
    assert results[1].components == {"passed_tests": 0.0, "timeout": 0.0, "memory_limit": 0.0, "error": 0.0}
    assert results[2].components == {"passed_tests": 0.0, "timeout": 1.0, "memory_limit": 0.0, "error": 0.0}
    assert results[3].components == {"passed_tests": 0.0, "timeout": 0.0, "memory_limit": 0.0, "error": 1.0}  # bad row, in a batch
    with pytest.raises(ValueError, match="do not parse"):
        code_reward([sample("def f(x): return x+3", tests="assert (")])  # alone: the error surfaces
    assert DEFAULT_DOMAIN_REWARDS["code"] == [("code", 1.0)]
    assert score_sample(good).score == 1.0


def test_cli_scores_code_rows(tmp_path):
    rows = [
        {"id": "good", "domain": "code", "prompt": "f", "completion": "def f(x): return x+3", "tests": ASSERTS},
        {"id": "buggy", "domain": "code", "prompt": "f", "completion": "def f(x): return x+2", "tests": ASSERTS},
        {"id": "exit", "domain": "code", "prompt": "f", "completion": "import os\nos._exit(0)", "tests": ASSERTS},
        {"id": "eq", "domain": "code", "prompt": "f", "completion": FORGERIES["__eq__ always true"][0], "tests": ASSERTS},
        {"id": "he", "domain": "code", "prompt": "f", "completion": f"```python\n{CLOSE}```",
         "tests": HUMANEVAL, "entry_point": "has_close_elements"},
        {"id": "no-tests", "domain": "code", "prompt": "f", "completion": "def f(x): return x+3"},
    ]
    src, dst = tmp_path / "rows.jsonl", tmp_path / "scored.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = subprocess.run([sys.executable, "-m", "rewards", "score", "--input", str(src), "--output", str(dst)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = [json.loads(line) for line in dst.read_text().splitlines()]
    assert [(r["id"], r["score"]) for r in out] == [
        ("good", 1.0), ("buggy", 0.0), ("exit", 0.0), ("eq", 0.0), ("he", 1.0), ("no-tests", 0.0)]
    assert out[0]["components"]["code/passed_tests"] == 1.0
    assert out[2]["components"]["code/error"] == 1.0
    assert "missing field 'tests'" in out[5]["error"]


def test_code_tasks_are_stable_and_solvable():
    rows = list(iter_code_tasks(seed=3))
    assert [r.id for r in rows] == [r.id for r in iter_code_tasks(seed=3)]
    assert len({r.id for r in rows}) == len(rows) > 100
    assert {r.difficulty for r in rows} == {1, 2, 3}
    assert {r.domain for r in rows} == {"code"}
    task = code_task("add", (3,))
    assert task.id == "code:add:3" and task.prompt == "Write a Python function f(x) that returns x plus 3."
    assert task.reference["solution"] == "def f(x): return x+3"
    assert task.reference["tests"] == code_task("add", (3,)).reference["tests"]  # seeded by the id
    picks = [next(r for r in rows if r.difficulty == d) for d in (1, 2, 3)]
    batch = [sample(r.reference["solution"], r.reference["tests"]) for r in picks]
    batch += [sample("def f(x): return x", r.reference["tests"]) for r in picks]
    assert [r.score for r in code_reward(batch)] == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]


class CountingPool(SandboxPool):
    """A real sandbox pool that counts the programs submitted to it."""

    def __init__(self):
        super().__init__()
        self.submitted = 0

    def submit(self, *args, **kwargs):
        self.submitted += 1
        return super().submit(*args, **kwargs)


@pytest.fixture
def counting_pool(monkeypatch):
    pool = CountingPool()
    monkeypatch.setattr(code, "default_pool", lambda: pool)
    monkeypatch.setattr(code, "LIMITS", LIMITS)
    code.configure_cache(100, dedup=True)
    yield pool
    code.configure_cache()
    pool.shutdown()


def test_identical_jobs_run_once_and_repeats_come_from_the_cache(counting_pool):
    right, wrong = "def f(x): return x + 3", "def f(x): return x + 2"
    batch = [sample(right), sample(f"```python\n{right}\n```"), sample(f"Sure:\n```\n{right}\n```"),
             sample(wrong), sample(wrong), sample(right, tests=ASSERTS[:1]), sample("def f(x) return")]
    first = code_reward(batch)
    assert [r.score for r in first] == [1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0]
    assert counting_pool.submitted == 4  # right, wrong, right with other tests, syntax error
    assert code.cache_stats() == {"lookups": 7, "hits": 0, "shared": 3, "executions": 4, "entries": 4}
    again = code_reward(batch)
    assert counting_pool.submitted == 4
    assert [(r.score, r.components, r.passed) for r in again] == [(r.score, r.components, r.passed) for r in first]
    assert code.cache_stats()["hits"] == 7


def test_timeouts_are_not_cached_and_the_cache_can_be_turned_off(counting_pool):
    loop = sample("def f(x):\n    while True:\n        pass")
    results = code_reward([loop, loop])  # one run, shared
    assert [r.components["timeout"] for r in results] == [1.0, 1.0] and counting_pool.submitted == 1
    assert code_reward([loop])[0].components["timeout"] == 1.0
    assert counting_pool.submitted == 2 and code.cache_stats()["entries"] == 0
    code.configure_cache(0, dedup=False)
    good = sample("def f(x): return x + 3")
    assert [r.score for r in code_reward([good, good])] == [1.0, 1.0]
    assert [r.score for r in code_reward([good])] == [1.0]
    assert counting_pool.submitted == 5 and code.cache_stats()["entries"] == 0


def test_reward_pool_reports_code_job_counts(counting_pool):
    good = sample("def f(x): return x + 3")
    _, stats = score_samples([good, good, sample("def f(x): return 0")], timeout_s=30.0)
    assert (stats["reward/code/lookups"], stats["reward/code/shared"], stats["reward/code/executions"]) == (3, 1, 2)
    _, stats = score_samples([good], timeout_s=30.0)
    assert stats["reward/code/cache_hits"] == 1.0 and stats["reward/code/executions"] == 0.0
    assert batch_limit(code.code_reward) == code.MAX_BATCH


def test_the_reward_config_sets_the_sandbox_limits_and_settings():
    from rewards.pool import setup_rewards
    from rewards.sandbox import default_pool, isolation_report

    try:
        setup_rewards(RewardConfig(sandbox=SandboxConfig(isolation="session", cgroup=False)), load_models=False)
        report = isolation_report()
        assert (report["isolation"], report["cgroup"]) == ("session", "off")
        config = RewardConfig(code_cache=0, sandbox=SandboxConfig(output_bytes=1000, workers=1, dedup=False))
        setup_rewards(config, load_models=False)
        assert code.LIMITS == Limits(output_bytes=1000) and default_pool().workers == 1
        loud = "print('x' * 5000)\ndef f(x): return x + 3"
        assert run_tests(loud, ASSERTS)[:2] == (False, "output_limit")
        good = sample("def f(x): return x + 3")
        results = code_reward([sample(loud), good, good])
        assert [r.score for r in results] == [0.0, 1.0, 1.0] and results[0].components["error"] == 1.0
        assert code.cache_stats() == {"lookups": 3, "hits": 0, "shared": 0, "executions": 3, "entries": 0}
    finally:
        setup_rewards(RewardConfig(), load_models=False)
    assert code.LIMITS == Limits() and default_pool().workers == len(os.sched_getaffinity(0))


# The child holds 200 MiB (under the per-process cap), the parent 100 MiB and then waits for the
# child's answer on a pipe whose write end it still holds: when the 256 MiB tree cap kills the
# child, the parent waits until the wall limit, as a program on multiprocessing would.
CHILD_KILLED_AT_THE_TREE_CAP = """
import os
def f(x):
    r, w = os.pipe()
    if os.fork() == 0:
        block = b"x" * (200 << 20)
        os.write(w, b"done")
        os._exit(0)
    block = b"y" * (100 << 20)
    return os.read(r, 4) and x + 3
"""


@pytest.mark.skipif(cgroup_layout() is None, reason=f"no writable cgroups here: {isolation_report()['cgroup_detail']}")
def test_a_child_killed_at_the_memory_cap_is_out_of_memory_not_a_timeout(monkeypatch):
    limits = Limits(wall_s=2.0, cpu_s=2.0, memory_bytes=256 << 20)
    passed, outcome, result = run_tests(CHILD_KILLED_AT_THE_TREE_CAP, ASSERTS, limits=limits)
    assert (passed, outcome) == (False, "memory_limit") and result.oom_killed and result.timed_out, result
    monkeypatch.setattr(code, "LIMITS", limits)
    components = code_reward([sample(CHILD_KILLED_AT_THE_TREE_CAP)])[0].components
    assert components == {"passed_tests": 0.0, "timeout": 0.0, "memory_limit": 1.0, "error": 0.0}


def test_the_memory_cap_outranks_the_wall_limit_in_the_verdict():
    token = b"PASS nonce"
    assert code._verdict(ExecResult(None, timed_out=True, oom_killed=True), token) == (False, "memory_limit")
    assert code._verdict(ExecResult(None, signal=9, oom_killed=True), token) == (False, "memory_limit")
    assert code._verdict(ExecResult(None, timed_out=True), token) == (False, "timeout")
    assert code._verdict(ExecResult(0, channel=token, oom_killed=True), token) == (True, "pass")
