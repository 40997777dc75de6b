import asyncio

import pytest

from rewards.math import arithmetic_correct, extract_integer
from rewards.pool import score_samples
from rewards.registry import (
    DEFAULT_DOMAIN_REWARDS,
    REWARDS,
    RewardResult,
    batch_limit,
    parse_route,
    resolve_routes,
    reward,
    score_sample,
)
from rl.types import Sample


def _sample(completion: str, answer: str = "42", domain: str = "math") -> Sample:
    return Sample("p1", domain, "40+2=", [1], reference={"answer": answer}, completion=completion)


@pytest.mark.parametrize(
    "text,value", [("42", 42), (" -7", -7), ("103abc", 103), ("x1", None), ("", None)]
)
def test_extract_integer(text, value):
    assert extract_integer(text) == value


def test_arithmetic_correct():
    assert arithmetic_correct("42", "42")
    assert not arithmetic_correct("421", "42")
    assert arithmetic_correct("-3", "-3")
    assert not arithmetic_correct("", "0")


def test_math_reward_scores_and_passes():
    good = score_sample(_sample("42"))
    bad = score_sample(_sample("41"))
    assert (good.score, good.passed) == (1.0, True)
    assert (bad.score, bad.passed) == (0.0, False)
    assert good.components == {"math": 1.0, "math/correct": 1.0}


def test_unknown_domain_is_an_error_that_names_it():
    with pytest.raises(KeyError, match="cooking"):
        score_sample(_sample("42", domain="cooking"))


def test_duplicate_registration_rejected():
    with pytest.raises(ValueError, match="already registered"):
        reward("math")(lambda s: RewardResult(0.0))


def test_failing_reward_scores_zero_and_is_counted(capsys):
    @reward("always_fails")
    def always_fails(sample):
        raise RuntimeError("boom")

    try:
        samples = [_sample("42", domain="math"), _sample("42", domain="broken")]
        from rewards import registry

        registry.DEFAULT_DOMAIN_REWARDS["broken"] = [("always_fails", 1.0)]
        scored, stats = score_samples(samples)
        assert scored[0].reward == 1.0 and scored[0].passed
        assert scored[1].reward == 0.0 and not scored[1].passed
        assert stats["reward/errors/broken"] == 1.0
        assert "boom" in capsys.readouterr().out
    finally:
        REWARDS.pop("always_fails", None)
        registry.DEFAULT_DOMAIN_REWARDS.pop("broken", None)


def test_parse_route():
    assert parse_route(" math = math, format:0.1") == ("math", [("math", 1.0), ("format", 0.1)])
    assert parse_route("x=a:-0.5") == ("x", [("a", -0.5)])
    for bad, message in [("math", "expected DOMAIN="), ("=math", "expected DOMAIN="), ("math=", "expected DOMAIN="),
                         ("math=math:heavy", "weight 'heavy' is not a number"), ("math=a,,b", "empty reward name")]:
        with pytest.raises(ValueError, match=message):
            parse_route(bad)


def test_resolve_routes_lays_given_routes_over_builtins():
    table = resolve_routes()
    assert table["math"] == [("math", 1.0)] and table["instruction"] == [("instruction", 1.0)]
    # A built-in route to a reward nobody registered (no reward model configured) is left out.
    assert "reward_model" not in REWARDS and "general" not in table
    table = resolve_routes(["math=math,format:0.1", "chat=format"])
    assert table["math"] == [("math", 1.0), ("format", 0.1)] and table["chat"] == [("format", 1.0)]
    assert table["instruction"] == DEFAULT_DOMAIN_REWARDS["instruction"]
    with pytest.raises(ValueError, match=r"domain 'math' names unknown reward\(s\) \['nope'\]"):
        resolve_routes(["math=math,nope"])


def test_weights_combine_and_inapplicable_rewards_are_skipped():
    reward("t_half")(lambda s: RewardResult(0.5, {"n": 2.0}, passed=True))
    reward("t_none")(lambda s: None)
    routes = {"math": [("math", 1.0), ("t_half", -0.2), ("t_none", 5.0)]}
    result = score_sample(_sample("42"), routes)
    assert result.score == pytest.approx(1.0 - 0.1)
    assert result.components == {"math": 1.0, "math/correct": 1.0, "t_half": 0.5, "t_half/n": 2.0}
    assert result.passed is True
    with pytest.raises(ValueError, match="no reward applies"):
        score_sample(_sample("42"), {"math": [("t_none", 1.0)]})


def test_score_sample_calls_async_and_batched_rewards():
    @reward("t_async")
    async def later(sample):
        await asyncio.sleep(0)
        return RewardResult(0.25)

    @reward("t_batched", batched=True, max_batch=4)
    def many(samples):
        return [RewardResult(float(len(samples))) for _ in samples]

    assert batch_limit(many) == 4 and batch_limit(later) is None
    result = score_sample(_sample("42"), {"math": [("t_async", 1.0), ("t_batched", 1.0)]})
    assert result.score == 1.25
