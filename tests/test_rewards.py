import pytest

from rewards.math import arithmetic_correct, extract_integer
from rewards.pool import score_samples
from rewards.registry import REWARDS, RewardResult, reward, score_sample
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
