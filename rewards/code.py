"""Code reward: run the completion's program against the row's tests in the sandbox.

Reference fields: `tests`, either a list of assert statements or a test program (HumanEval style,
`def check(candidate): ...` followed by `check(<entry_point>)`, the call being added when the row
gives `entry_point` and the program does not make it); optional `entry_point`.

A completion passes only if the tests ran to their end. Exit status and stdout can be forged by
the program (`os._exit(0)`, `atexit`, printing "passed"), so the harness reports a pass by writing
a per-run random nonce to a private pipe (fd 4) after the last test; the nonce reaches the sandbox
through an anonymous memory file and is never in the program's globals, files, argv or output.
Equality can be forged too (an object whose `__eq__` is always true, patched builtins), so:

- builtins, and the attributes of every module already imported, are restored after the
  candidate's top-level code ran, and the tests get their own copy of the builtins;
  names the candidate defines that shadow builtins are not visible to the tests;
- every comparison (`== != < <= > >= in, not in`) and every `assert` condition in the tests is
  rewritten to a strict form: values are first reduced to plain builtin data (subclasses of int,
  str, list, dict, ... are read through the base type's own methods, so `class F(int)` with a
  forged `__eq__` compares as its int value; numpy values through `tolist()`); comparing plain
  data with anything else raises, and an `assert` on a non-plain value fails.

What this does not stop: a program that inspects the harness's own frames to read the nonce. That
needs knowledge of this harness, not a generic trick, and the sandbox still contains its effects.

Repeats are cheap: a GRPO group of a small policy often holds identical programs, and the same
program meets the same tests again in later steps. Jobs are keyed by sha256(program, test program,
entry point, limits); a job identical to one still running waits for that run (dedup, also across
concurrent calls), and a bounded LRU cache keeps deterministic verdicts (`CACHEABLE`; never
timeouts, output or resource kills, which depend on load). A program whose result is random keeps
the verdict of its first run while cached. `configure` applies the reward config (`reward.code_cache`
and `reward.sandbox`: cache size, dedup, the sandbox's limits and settings); `configure_cache` sets
the cache alone; `cache_stats` counts lookups, cache hits, shared runs and executions (the reward
pool reports them through the registry's `stats` hook).

The harness that runs the tests in the sandbox is the module `rewards.sandbox.harness`; its source
file is the program sent to every run.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import marshal
import re
import secrets
import signal
import threading
from collections import OrderedDict
from concurrent.futures import FIRST_COMPLETED, Future, wait
from pathlib import Path

from rewards.clock import pause_clock
from rewards.registry import RewardResult, reward
from rewards.sandbox import ExecResult, Limits, Settings, default_pool, harness, run_python
from rewards.sandbox import configure as configure_sandbox
from rl.config import RewardConfig, SandboxConfig
from rl.types import Sample


def limits_for(config: SandboxConfig) -> Limits:
    """The per-run limits of `reward.sandbox` (the fields of `Limits`, by the same names)."""
    return Limits(**{f.name: getattr(config, f.name) for f in dataclasses.fields(Limits)})


LIMITS = limits_for(SandboxConfig())
HARNESS = Path(harness.__file__).read_text()
# Samples per reward call. The pool times each call as a whole, less the time its jobs wait queued
# behind other calls' jobs (`_await`): a chunk whose programs all run to the wall limit takes about
# ceil(8 / workers) * (wall_s + 1 s) = 24 s on 2 sandbox workers, inside the default 30 s reward
# timeout, and a slow chunk zeros only its own samples; its jobs still queued are then dropped.
MAX_BATCH = 8
# Outcomes that depend only on (program, tests, entry point, limits), not on machine load.
CACHEABLE = frozenset({"pass", "assertion", "syntax", "candidate_error", "test_error", "exit"})

_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_COMPARE_OPS = {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=",
                ast.In: "in", ast.NotIn: "not in"}


def extract_program(completion: str) -> str:
    """The last ```python (or ```py) block; else the last unlabelled fenced block; else the text."""
    blocks = _FENCE.findall(completion)
    python = [body for lang, body in blocks if lang.lower() in ("python", "py", "python3")]
    plain = [body for lang, body in blocks if not lang]
    if python:
        return python[-1]
    if plain:
        return plain[-1]
    return completion


class _Strict(ast.NodeTransformer):
    """Rewrites comparisons to `__sbx_cmp__(ops, *operands)` and assert conditions to
    `__sbx_truth__(cond)` (also the operands of `and`/`or`/`not` inside them)."""

    def visit_Compare(self, node: ast.Compare) -> ast.AST:
        self.generic_visit(node)
        if not all(type(op) in _COMPARE_OPS for op in node.ops):
            return node
        ops = ast.Tuple([ast.Constant(_COMPARE_OPS[type(op)]) for op in node.ops], ast.Load())
        return ast.Call(ast.Name("__sbx_cmp__", ast.Load()), [ops, node.left, *node.comparators], [])

    def visit_Assert(self, node: ast.Assert) -> ast.AST:
        self.generic_visit(node)
        node.test = _truth(node.test)
        return node


def _truth(node: ast.expr) -> ast.expr:
    if isinstance(node, ast.BoolOp):
        return ast.BoolOp(node.op, [_truth(v) for v in node.values])
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return ast.UnaryOp(ast.Not(), _truth(node.operand))
    return ast.Call(ast.Name("__sbx_truth__", ast.Load()), [node], [])


def build_test_program(tests, entry_point: str | None = None) -> str:
    """The strict test program for a row's `tests`; ValueError if they are malformed."""
    if isinstance(tests, list):
        if not all(isinstance(t, str) for t in tests):
            raise ValueError("tests: a list must hold assert statements as strings")
        tests = "\n".join(tests)
    if not isinstance(tests, str) or not tests.strip():
        raise ValueError(f"tests must be a non-empty string or list of strings, got {type(tests).__name__}")
    try:
        tree = ast.parse(tests)
    except SyntaxError as exc:
        raise ValueError(f"tests do not parse: {exc}") from None
    defines_check = any(isinstance(n, ast.FunctionDef) and n.name == "check" for n in tree.body)
    calls_check = any(
        isinstance(n, ast.Expr) and isinstance(n.value, ast.Call)
        and isinstance(n.value.func, ast.Name) and n.value.func.id == "check"
        for n in tree.body
    )
    if defines_check and not calls_check:
        if not entry_point:
            raise ValueError("tests define check(candidate) but never call it, and there is no entry_point")
        if not entry_point.isidentifier():
            raise ValueError(f"entry_point {entry_point!r} is not an identifier")
        tree.body.append(ast.parse(f"check({entry_point})").body[0])
    tree = ast.fix_missing_locations(_Strict().visit(tree))
    return ast.unparse(tree)


def _prepare(program: str, tests, entry_point: str | None) -> tuple[bytes, bytes]:
    """The harness payload and the channel bytes that mean "passed" (it holds a fresh nonce)."""
    return _payload(program, build_test_program(tests, entry_point), entry_point)


def _payload(program: str, test_program: str, entry_point: str | None) -> tuple[bytes, bytes]:
    nonce = secrets.token_hex(16)
    data = marshal.dumps({"program": program, "tests": test_program, "entry_point": entry_point, "nonce": nonce})
    return data, b"PASS " + nonce.encode()


def _verdict(result: ExecResult, pass_token: bytes) -> tuple[bool, str]:
    if result.channel == pass_token and result.exit_code == 0:
        return True, "pass"
    if result.oom_killed:  # before timeout: a process waiting on a child the cap killed runs into the wall limit
        return False, "memory_limit"
    if result.timed_out or result.signal == signal.SIGXCPU:
        return False, "timeout"
    if result.output_exceeded:
        return False, "output_limit"
    if result.channel.startswith(b"FAIL "):
        return False, result.channel[5:].decode("ascii", "replace")
    return False, "crash"


def run_tests(program: str, tests, entry_point: str | None = None,
              limits: Limits | None = None) -> tuple[bool, str, ExecResult]:
    """Run `program` then the strict form of `tests`; return (passed, outcome, sandbox result).

    outcome: "pass", "assertion" (a test failed), "syntax", "candidate_error" (the program raised),
    "test_error" (a test raised something else), "exit" (SystemExit), "memory_limit" (the kernel
    killed a process of the run at the process tree's memory cap, a cgroup's; a single process past
    its own cap gets a MemoryError instead), "timeout", "output_limit", "crash" (ended without a
    verdict: os._exit, a signal). ValueError for malformed tests.
    `limits`: None = the configured `LIMITS`."""
    data, pass_token = _prepare(program, tests, entry_point)
    result = run_python(HARNESS, limits or LIMITS, data)
    return (*_verdict(result, pass_token), result)


def _result(passed: bool, outcome: str) -> RewardResult:
    return RewardResult(
        float(passed),
        {
            "passed_tests": float(passed),
            "timeout": float(outcome == "timeout"),
            "memory_limit": float(outcome == "memory_limit"),
            "error": float(outcome not in ("pass", "assertion", "timeout", "memory_limit")),
        },
        passed,
    )


class _Run:
    """One job's verdict, as a call sees it: a cache hit (already done) or a sandbox run in flight,
    with the calls waiting for it (`waiters`, more than one when identical jobs are shared)."""

    def __init__(self, key: str, value: tuple[bool, str] | None = None) -> None:
        self.key = key
        self.verdict: Future = Future()
        self.job: Future | None = None  # the sandbox pool's job
        self.waiters = 1
        if value is not None:
            self.verdict.set_result(value)

    def started(self) -> bool:
        """Whether the sandbox pool has begun the run (or it needs none)."""
        job = self.job
        return self.verdict.done() or (job is not None and (job.running() or job.done()))


class _Verdicts:
    """Deterministic verdicts (LRU, at most `max_entries`), runs in flight by key, and counters."""

    def __init__(self, max_entries: int, dedup: bool) -> None:
        self.lock = threading.Lock()
        # Held while a call submits its jobs, so they sit together in the sandbox pool's FIFO queue.
        self.submitting = threading.Lock()
        self.configure(max_entries, dedup)

    def configure(self, max_entries: int, dedup: bool) -> None:
        if max_entries < 0:
            raise ValueError(f"cache size must be >= 0, got {max_entries}")
        with self.lock:
            self.max_entries, self.dedup = max_entries, dedup
            self.cache: OrderedDict[str, tuple[bool, str]] = OrderedDict()
            self.running: dict[str, _Run] = {}
            self.counts = {"lookups": 0, "hits": 0, "shared": 0, "executions": 0}

    def submit(self, program: str, test_program: str, entry_point: str | None) -> _Run:
        """The job's verdict (passed, outcome): from the cache, a run in flight, or a new sandbox run."""
        # Trailing whitespace never changes what a program does: `f` and a fenced `f\n` share a key.
        key = hashlib.sha256(json.dumps([program.rstrip(), test_program, entry_point, repr(LIMITS)]).encode()).hexdigest()
        with self.lock:
            self.counts["lookups"] += 1
            if key in self.cache:
                self.cache.move_to_end(key)
                self.counts["hits"] += 1
                return _Run(key, self.cache[key])
            if key in self.running:
                self.counts["shared"] += 1
                run = self.running[key]
                run.waiters += 1
                return run
            self.counts["executions"] += 1
            run = _Run(key)
            if self.dedup:
                self.running[key] = run
        data, pass_token = _payload(program, test_program, entry_point)
        try:
            run.job = default_pool().submit(HARNESS, LIMITS, data)
        except BaseException as exc:
            self._settle(run, exc=exc)
            raise
        run.job.add_done_callback(lambda job: self._finish(run, job, pass_token))
        return run

    def release(self, runs: list[_Run]) -> None:
        """A call stops waiting for `runs` (its reward call timed out): a run that no other call
        waits for and that has not started in the sandbox pool is cancelled, so that it does not
        delay the jobs queued behind it."""
        for run in runs:
            with self.lock:
                if run.verdict.done():
                    continue
                run.waiters -= 1
                if run.waiters > 0:
                    continue
                if self.running.get(run.key) is run:  # no new call may join a run about to be cancelled
                    del self.running[run.key]
            if run.job is not None:
                run.job.cancel()  # only a job still queued cancels; `_finish` then settles the verdict

    def _finish(self, run: _Run, job: Future, pass_token: bytes) -> None:
        try:
            result = job.result()
            value = _verdict(result, pass_token)
        except BaseException as exc:  # noqa: BLE001 - SandboxError or cancellation: every waiter sees it
            self._settle(run, exc=exc)
            return
        # A process of the run killed at the tree's memory cap may have changed any verdict.
        self._settle(run, value, cacheable=value[1] in CACHEABLE and not result.oom_killed)

    def _settle(self, run: _Run, value=None, exc: BaseException | None = None, cacheable: bool = False) -> None:
        with self.lock:
            if self.running.get(run.key) is run:
                del self.running[run.key]
            if cacheable and self.max_entries:
                self.cache[run.key] = value
                self.cache.move_to_end(run.key)
                while len(self.cache) > self.max_entries:
                    self.cache.popitem(last=False)
        run.verdict.set_exception(exc) if exc is not None else run.verdict.set_result(value)


def _await(runs: list[_Run]) -> None:
    """Wait until every run has its verdict.

    The reward pool's timeout bounds a call's own work, so the call's clock is stopped while none of
    its unfinished runs has started: they are queued behind other calls' jobs in the shared sandbox
    pool. Waits in short slices, so that the pool's timeout (an exception raised asynchronously in
    this thread) lands within 50 ms and `code_reward` can release the runs still queued.
    """
    pending = runs
    try:
        while pending:
            pause_clock(not any(run.started() for run in pending))
            wait([run.verdict for run in pending], timeout=0.05, return_when=FIRST_COMPLETED)
            pending = [run for run in pending if not run.verdict.done()]
    finally:
        pause_clock(False)


_verdicts = _Verdicts(RewardConfig().code_cache, SandboxConfig().dedup)


def configure(cache_entries: int, config: SandboxConfig) -> None:
    """Apply the reward config to this process: the verdict cache (`reward.code_cache` entries,
    `reward.sandbox.dedup`; emptied, counters reset), the limits of every run, and the sandbox's
    process-wide isolation, cgroup and worker settings."""
    global LIMITS
    LIMITS = limits_for(config)
    configure_sandbox(Settings(isolation=config.isolation, cgroup=config.cgroup, workers=config.workers))
    configure_cache(cache_entries, config.dedup)


def configure_cache(max_entries: int = RewardConfig().code_cache, dedup: bool = SandboxConfig().dedup) -> None:
    """Set the verdict cache size (0 = no cache) and whether identical jobs in flight share one run;
    empties the cache and resets the counters."""
    _verdicts.configure(max_entries, dedup)


def cache_stats() -> dict[str, int]:
    """Counters since the last `configure_cache`: `lookups` (jobs asked for), `hits` (answered from
    the cache), `shared` (joined an identical run in flight), `executions` (sandbox runs started);
    and `entries` now cached. Hit rate = (hits + shared) / lookups."""
    with _verdicts.lock:
        return {**_verdicts.counts, "entries": len(_verdicts.cache)}


def _counters() -> dict[str, int]:
    """The counters the reward pool reports as `reward/code/<name>` (see `cache_stats`)."""
    counts = cache_stats()
    return {"lookups": counts["lookups"], "cache_hits": counts["hits"], "shared": counts["shared"],
            "executions": counts["executions"]}


@reward("code", batched=True, max_batch=MAX_BATCH, stats=_counters)
def code_reward(samples: list[Sample]) -> list[RewardResult]:
    """1.0 when the completion's program passes every test of its row, else 0.0; the batch runs
    concurrently on the sandbox pool (one worker per usable CPU), each distinct job once.

    A row without valid `tests` raises when scored alone; inside a batch it scores 0 with
    `error` 1 and a printed warning, so that one bad row does not cost the whole batch."""
    runs: list[_Run | None] = []
    try:
        with _verdicts.submitting:
            for sample in samples:
                try:
                    if "tests" not in sample.reference:
                        raise ValueError("code row has no 'tests' reference field")
                    entry_point = sample.reference.get("entry_point")
                    test_program = build_test_program(sample.reference["tests"], entry_point)
                except ValueError as exc:
                    if len(samples) == 1:
                        raise
                    print(f"[reward] code: prompt {sample.prompt_id}: {exc}", flush=True)
                    runs.append(None)
                    continue
                runs.append(_verdicts.submit(extract_program(sample.completion), test_program, entry_point))
        _await([run for run in runs if run is not None])
        return [_result(False, "bad_tests") if run is None else _result(*run.verdict.result()) for run in runs]
    finally:  # after a timeout, the jobs still queued are dropped
        _verdicts.release([run for run in runs if run is not None])
