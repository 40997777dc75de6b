import pytest

import rewards.pool  # noqa: F401  (registers the built-in rewards)
from rewards.registry import score_sample
from rewards.shaping import check_format, format_reward, make_overlong, overlong_penalty, overlong_reward
from rl.types import Sample


@pytest.mark.parametrize(
    "length,penalty",
    [(0, 0.0), (80, 0.0), (81, -0.05), (90, -0.5), (99, -0.95), (100, -1.0), (101, -1.0), (10_000, -1.0)],
)
def test_overlong_closed_form(length, penalty):
    # L_max = 100, L_cache = 20: zero up to 80 tokens, (80 - len) / 20 up to 100, then -1.
    assert overlong_penalty(length, 100, 20) == pytest.approx(penalty)


def test_overlong_without_buffer_is_a_step():
    assert (overlong_penalty(100, 100, 0), overlong_penalty(101, 100, 0)) == (0.0, -1.0)


@pytest.mark.parametrize(
    "max_tokens,buffer_tokens,message",
    [(0, 0, "max_tokens"), ("100", 10, "max_tokens"), (100, 101, "buffer_tokens"), (100, -1, "buffer_tokens")],
)
def test_overlong_rejects_bad_limits(max_tokens, buffer_tokens, message):
    with pytest.raises(ValueError, match=message):
        make_overlong(max_tokens, buffer_tokens)


def _sample(n_tokens: int, **reference) -> Sample:
    return Sample("p1", "math", "q", [1], reference=reference, completion="x", completion_ids=[7] * n_tokens)


def test_make_overlong_scores_token_length():
    reward_fn = make_overlong(100, 20)
    result = reward_fn(_sample(90))
    assert (result.score, result.components, result.passed) == (-0.5, {"length": 90.0}, True)
    assert reward_fn(_sample(0)) is None  # no token ids (e.g. the offline CLI): not applicable


def test_registered_overlong_reads_the_row():
    assert overlong_reward(_sample(90)) is None
    assert overlong_reward(_sample(90, max_tokens=100)).score == pytest.approx(-0.5)  # default buffer 20
    assert overlong_reward(_sample(90, max_tokens=100, overlong_buffer=50)).score == pytest.approx(-0.8)


def test_overlong_does_not_fail_a_solved_sample():
    sample = _sample(100, answer="x", max_tokens=100)
    sample.completion = "\\boxed{x}"
    result = score_sample(sample, {"math": [("math", 1.0), ("overlong", 1.0)]})
    assert (result.score, result.passed) == (0.0, True)


@pytest.mark.parametrize(
    "completion,ok",
    [
        ("<think>add them</think>\nThe answer is 4.", True),
        ("  <think>\nstep\n</think>4", True),
        ("<think>add them</think>", False),  # no answer after the block
        ("<think>  </think> 4", False),  # empty reasoning
        ("4 <think>late</think> 4", False),  # block does not open the completion
        ("<think>a</think> 4 <think>b</think> 4", False),  # twice
        ("The answer is 4.", False),
    ],
)
def test_think_format(completion, ok):
    assert check_format(completion, {"think": True}) is ok


def test_format_tag_order_and_forbidden_tags():
    tags = {"think": True, "plan": True, "tool": False}
    assert check_format("<think>a</think><plan>b</plan> done", tags)
    assert not check_format("<plan>b</plan><think>a</think> done", tags)
    assert not check_format("<think>a</think><plan>b</plan> <tool>x</tool>", tags)
    assert check_format("4", {"think": False})
    assert not check_format("<think>a</think> 4", {"think": False})


def test_format_reward():
    sample = Sample("p1", "math", "q", [1], reference={"format": {"think": True}}, completion="<think>a</think> 4")
    result = format_reward(sample)
    assert (result.score, result.passed, result.components) == (1.0, True, {"formatted": 1.0})
    sample.reference = {}
    assert format_reward(sample) is None
    sample.reference = {"format": ["think"]}
    with pytest.raises(ValueError, match="'format' must be an object"):
        format_reward(sample)
    with pytest.raises(ValueError, match="'th ink'"):
        check_format("x", {"th ink": True})
