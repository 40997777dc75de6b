import asyncio
import threading

import pytest

from rewards.custom import RewardLoadError
from rewards.pool import RewardPool, RewardWorker, score_samples, setup_rewards
from rewards.registry import RewardResult, batched, reward
from rl.config import RewardConfig
from rl.types import Sample


def _s(domain: str, completion: str, i: int = 0) -> Sample:
    return Sample(f"p{i}", domain, "q", [1], completion=completion)


def test_sync_async_and_batched_rewards_combine_in_order():
    calls: list[list[str]] = []

    @reward("t_len")
    def length(sample):
        return RewardResult(len(sample.completion) / 10)

    @reward("t_async")
    async def shouty(sample):
        await asyncio.sleep(0.01)
        return RewardResult(float(sample.completion.isupper()))

    @reward("t_batch", batched=True, max_batch=3)
    def exclaims(samples):
        calls.append([s.completion for s in samples])
        return [RewardResult(float(s.completion.endswith("!"))) if s.completion else None for s in samples]

    routes = {"x": [("t_len", 1.0), ("t_async", 0.5)], "y": [("t_batch", 1.0)]}
    samples = [_s("x", "AB", 0), _s("y", "hi!", 1), _s("x", "abcd", 2), _s("y", "no", 3),
               _s("y", "yes!", 4), _s("y", "ok!", 5), _s("y", "", 6)]
    scored, stats = score_samples(samples, routes, timeout_s=5.0, threads=2)
    assert [s.reward for s in scored] == [0.2 + 0.5, 1.0, 0.4, 0.0, 1.0, 1.0, 0.0]
    assert scored[0].reward_components == {"t_len": 0.2, "t_async": 1.0}
    assert [s.passed for s in scored] == [False, True, False, False, True, True, False]
    # Batched calls get at most max_batch samples each, in input order.
    assert sorted(calls) == sorted([["hi!", "no", "yes!"], ["ok!", ""]])
    # A batched reward answering None for a sample that no other reward scores is an error.
    assert scored[6].reward_components == {"error": 1.0}
    assert stats["reward/errors/x"] == 0.0 and stats["reward/errors/y"] == 1.0
    assert stats["time/reward/x"] > 0 and "time/reward_compute" in stats


def test_hanging_reward_times_out_scores_zero_and_run_goes_on(capsys):
    release = threading.Event()  # the hanging calls block until the end of the test
    entered, left = [], []

    @reward("t_hang")
    def hang(sample):
        if sample.completion == "hang":
            entered.append(sample.prompt_id)
            release.wait(60)
            left.append(sample.prompt_id)
        return RewardResult(1.0)

    try:
        with RewardPool({"h": [("t_hang", 1.0)]}, timeout_s=0.3, threads=2) as pool:
            scored, stats = pool.score([_s("h", "hang", 0), _s("h", "ok", 1), _s("h", "hang", 2), _s("h", "ok", 3)])
            # score returned while both hanging calls were still blocked: it did not wait for them.
            assert sorted(entered) == ["p0", "p2"] and left == []
            assert [s.reward for s in scored] == [0.0, 1.0, 0.0, 1.0]
            assert stats["reward/errors/h"] == 2.0
            assert stats["time/reward/h"] >= 0.6  # two timed-out calls count their full timeout
            out = capsys.readouterr().out
            assert out.count("[reward]") == 1  # one line per domain, with the first message
            assert "2 error(s) in domain 'h'; first: prompt p0: reward 't_hang': RewardTimeout" in out
            # Both stuck workers were replaced: the next batch runs on fresh threads.
            assert pool.abandoned_threads == 2
            scored, stats = pool.score([_s("h", "ok", i) for i in range(4)])
            assert [s.reward for s in scored] == [1.0] * 4 and stats["reward/errors/h"] == 0.0
            assert left == []
    finally:
        release.set()


def test_slow_chunk_of_a_batched_reward_zeros_only_its_own_samples(capsys):
    release = threading.Event()
    slow_done = []

    @reward("t_chunks", batched=True, max_batch=2)
    def chunks(samples):
        if any(s.completion == "slow" for s in samples):
            release.wait(60)
            slow_done.append(True)
        return [RewardResult(1.0) for _ in samples]

    samples = [_s("c", "ok", 0), _s("c", "ok", 1), _s("c", "slow", 2), _s("c", "ok", 3), _s("c", "ok", 4)]
    try:
        with RewardPool({"c": [("t_chunks", 1.0)]}, timeout_s=0.5, threads=3) as pool:
            scored, stats = pool.score(samples)
            assert slow_done == []  # the result came at the slow chunk's timeout, not at its end
    finally:
        release.set()
    # Chunks [0, 1], [2, 3], [4]: only the one holding the slow sample times out.
    assert [s.reward for s in scored] == [1.0, 1.0, 0.0, 0.0, 1.0]
    assert stats["reward/errors/c"] == 2.0
    assert "2 error(s) in domain 'c'; first: prompt p2: reward 't_chunks': RewardTimeout" in capsys.readouterr().out


def test_pure_python_infinite_loop_is_stopped_after_its_timeout():
    ended = threading.Event()

    @reward("t_spin")
    def spin(sample):
        try:
            while True:
                pass
        finally:
            ended.set()  # reached only through the RewardTimeout raised into the loop

    before = threading.active_count()
    scored, stats = score_samples([_s("s", "x")], {"s": [("t_spin", 1.0)]}, timeout_s=0.2, threads=1)
    assert scored[0].reward == 0.0 and stats["reward/errors/s"] == 1.0
    assert ended.wait(60)  # the loop got RewardTimeout and ended
    for thread in [t for t in threading.enumerate() if t.name == "reward-worker"]:
        thread.join(60)  # the retired worker and the pool's idle ones exit
    assert threading.active_count() <= before


def test_hanging_coroutine_is_cancelled_and_later_calls_work():
    cancelled, got_cancelled = [], threading.Event()

    @reward("t_ahang")
    async def ahang(sample):
        try:
            await asyncio.sleep(60 if sample.completion == "hang" else 0)
        except asyncio.CancelledError:
            cancelled.append(sample.prompt_id)
            got_cancelled.set()
            raise
        return RewardResult(1.0)

    with RewardPool({"a": [("t_ahang", 1.0)]}, timeout_s=0.3, threads=1) as pool:
        scored, stats = pool.score([_s("a", "hang", 0), _s("a", "ok", 1)])
        assert [s.reward for s in scored] == [0.0, 1.0] and stats["reward/errors/a"] == 1.0
        assert got_cancelled.wait(60) and cancelled == ["p0"]
        scored, _ = pool.score([_s("a", "ok", 2)])
        assert scored[0].reward == 1.0


def test_coroutine_blocking_the_loop_gets_a_fresh_loop_for_later_calls():
    release = threading.Event()

    @reward("t_ablock")
    async def ablock(sample):
        if sample.completion == "block":
            release.wait(60)  # blocks the event loop itself, not just this coroutine
        return RewardResult(1.0)

    try:
        with RewardPool({"a": [("t_ablock", 1.0)]}, timeout_s=0.3, threads=1) as pool:
            scored, stats = pool.score([_s("a", "block", 0)])
            assert scored[0].reward == 0.0 and stats["reward/errors/a"] == 1.0
            scored, stats = pool.score([_s("a", "ok", 1)])
            assert scored[0].reward == 1.0 and stats["reward/errors/a"] == 0.0
            assert not release.is_set()  # the old loop is still blocked: the call ran on a fresh one
    finally:
        release.set()


def test_calls_run_in_parallel():
    # Each sync call waits for 4 at once (the worker threads), each async call for all 50 on the
    # event loop; run one at a time, the waits would time out and the calls score 0.
    four = threading.Barrier(4, timeout=60)
    in_flight = [0, 0]  # now, most

    @reward("t_io")
    def io_bound(sample):
        four.wait()
        return RewardResult(1.0)

    @reward("t_aio")
    async def aio_bound(sample):
        in_flight[0] += 1
        in_flight[1] = max(in_flight)
        try:
            for _ in range(6000):  # at most 60 s
                if in_flight[1] == 50:
                    return RewardResult(1.0)
                await asyncio.sleep(0.01)
            return RewardResult(0.0)
        finally:
            in_flight[0] -= 1

    routes = {"io": [("t_io", 1.0)], "aio": [("t_aio", 1.0)]}
    scored, _ = score_samples([_s("io", "x", i) for i in range(8)] + [_s("aio", "x", i) for i in range(50)],
                              routes, timeout_s=120.0, threads=4)
    assert [s.reward for s in scored] == [1.0] * 58
    assert in_flight == [0, 50]


@pytest.mark.parametrize(
    "body,message",
    [
        ("raise RuntimeError('boom')", "RuntimeError: boom"),
        ("return [RewardResult(1.0)]", "TypeError: batched reward returned a list of 1 for 2 samples"),
        ("return RewardResult(1.0)", "TypeError: batched reward returned RewardResult for 2 samples"),
    ],
)
def test_failing_batched_call_fails_its_samples_only(body, message, capsys):
    namespace = {"RewardResult": RewardResult}
    exec(f"def bad(samples):\n    {body}\n", namespace)
    reward("t_bad", batched=True)(namespace["bad"])

    @reward("t_good")
    def good(sample):
        return RewardResult(1.0)

    scored, stats = score_samples([_s("b", "1"), _s("g", "2"), _s("b", "3")],
                                  {"b": [("t_bad", 1.0)], "g": [("t_good", 1.0)]})
    assert [s.reward for s in scored] == [0.0, 1.0, 0.0]
    assert (stats["reward/errors/b"], stats["reward/errors/g"]) == (2.0, 0.0)
    assert message in capsys.readouterr().out


def test_unrouted_domain_and_wrong_result_type_are_errors(capsys):
    @reward("t_wrong")
    def wrong(sample):
        return 1.0

    scored, stats = score_samples([_s("w", "x"), _s("cooking", "y")], {"w": [("t_wrong", 1.0)]})
    assert [s.reward for s in scored] == [0.0, 0.0]
    out = capsys.readouterr().out
    assert "reward 't_wrong' returned float, expected RewardResult or None" in out
    assert "no reward configured for domain 'cooking'" in out


def test_pool_argument_checks():
    with pytest.raises(ValueError, match="threads"):
        RewardPool({}, threads=0)
    with pytest.raises(ValueError, match="timeout_s"):
        RewardPool({}, timeout_s=0)


CUSTOM = """
from rewards.registry import RewardResult, batched

def shouty(sample):
    return RewardResult(float(sample.completion.isupper()))

@batched(max_batch=2)
def lengths(samples):
    return [RewardResult(min(1.0, len(s.completion) / 4)) for s in samples]
"""


def test_reward_worker_sets_up_custom_rewards_and_routes(tmp_path):
    path = tmp_path / "my_rewards.py"
    path.write_text(CUSTOM)
    worker = RewardWorker(RewardConfig(
        custom=(f"{path}:shouty", f"{path}:lengths"),
        routes=("chat=shouty:1.0,lengths:0.5",),
        timeout_s=5.0,
        threads=2,
    ))
    assert worker.info()["chat"] == [("shouty", 1.0), ("lengths", 0.5)]
    assert worker.info()["math"] == [("math", 1.0)]  # built-in routes stay
    scored, stats = worker.score([_s("chat", "HI"), _s("chat", "hello"), _s("math", "")])
    assert [s.reward for s in scored[:2]] == [1.0 + 0.25, 0.0 + 0.5]
    assert stats["reward/errors/math"] == 1.0  # no `answer`: no reward applies


@pytest.mark.parametrize(
    "config,message",
    [
        (RewardConfig(custom=("nowhere_xyz:fn",)), "custom reward 'nowhere_xyz:fn': module 'nowhere_xyz' not found"),
        (RewardConfig(routes=("math=math,nope:0.5",)), "route for domain 'math' names unknown reward(s) ['nope']"),
        (RewardConfig(reward_model_path="/no/such/rm"), "reward.reward_model_path '/no/such/rm': "),
    ],
)
def test_setup_errors_name_the_setting(config, message):
    with pytest.raises(RewardLoadError, match=re_escape(message)):
        setup_rewards(config, load_models=False)


def re_escape(text: str) -> str:
    import re

    return re.escape(text)


def test_batched_marker_validates():
    with pytest.raises(ValueError, match="max_batch"):
        batched(lambda samples: [], max_batch=0)


def test_a_reward_reports_its_own_counters_through_its_stats_hook():
    counts = {"seen": 0, "kept": 5}

    def counters():
        return dict(counts)

    @reward("t_counted", stats=counters)
    def counted(sample):
        counts["seen"] += 1
        return RewardResult(1.0)

    with RewardPool({"n": [("t_counted", 1.0)]}, timeout_s=5.0, threads=1) as pool:
        _, stats = pool.score([_s("n", "a", 0), _s("n", "b", 1)])
        assert (stats["reward/t_counted/seen"], stats["reward/t_counted/kept"]) == (2.0, 0.0)
        _, stats = pool.score([_s("other", "c")])  # nothing grew: no counters reported
        assert not any(key.startswith("reward/t_counted/") for key in stats)


def test_the_code_reward_does_not_import_the_reward_pool():
    # One way only: the pool imports the rewards it registers; a reward reaches the pool's clock
    # through rewards.clock.
    import subprocess
    import sys
    from pathlib import Path

    probe = "import sys, rewards.code\nprint(sorted(m for m in sys.modules if m.startswith('rewards')))"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[2])
    loaded = eval(proc.stdout)
    assert "rewards.code" in loaded and "rewards.pool" not in loaded, proc.stderr


@pytest.mark.parametrize("score, message", [
    (float("nan"), "non-finite score (nan)"),
    (float("inf"), "non-finite score (inf)"),
    ("1.0", "score '1.0' (str), expected a number"),
])
def test_non_finite_or_non_numeric_score_is_a_reward_error(score, message, capsys):
    @reward(f"t_bad_{score!s}")
    def bad(sample):
        return RewardResult(score if sample.completion == "bad" else 1.0)

    samples = [_s("d", "bad", 0), _s("d", "good", 1), _s("d", "bad", 2)]
    scored, stats = score_samples(samples, {"d": [(f"t_bad_{score!s}", 1.0)]})
    assert [s.reward for s in scored] == [0.0, 1.0, 0.0]
    assert [s.passed for s in scored] == [False, True, False]  # inf never counts as a pass
    assert scored[0].reward_components == {"error": 1.0}
    assert stats["reward/errors/d"] == 2.0
    out = capsys.readouterr().out
    assert "2 error(s) in domain 'd'" in out and message in out


def test_non_finite_component_is_a_reward_error():
    @reward("t_nan_component")
    def bad(sample):
        return RewardResult(1.0, {"x": float("-inf")})

    scored, stats = score_samples([_s("d", "x")], {"d": [("t_nan_component", 1.0)]})
    assert scored[0].reward == 0.0 and stats["reward/errors/d"] == 1.0


def test_a_weighted_sum_that_overflows_is_a_reward_error(capsys):
    @reward("t_big")
    def big(sample):
        return RewardResult(10.0)

    scored, stats = score_samples([_s("d", "x")], {"d": [("t_big", 1e308)]})
    assert scored[0].reward == 0.0 and stats["reward/errors/d"] == 1.0
    assert "weighted sum of the rewards of domain 'd' is inf" in capsys.readouterr().out
