import threading

import pytest

from rewards.math import answers_equivalent, extract_answer, math_reward
from rewards.registry import score_sample
from rl.types import Sample


def _sample(completion: str, answer) -> Sample:
    return Sample("p1", "math", "q", [1], reference={"answer": answer}, completion=completion)


# (reference, model answer, equivalent)
EQUIVALENCE = [
    ("42", "42", True),
    ("42", "43", False),
    ("1000", "1,000", True),
    ("-3", "-3", True),
    ("-3", "3", False),
    ("-\\frac{1}{2}", "-0.5", True),
    ("3.5", "3.50", True),
    ("5", "5.0", True),
    ("5", "5.01", False),
    ("0.5", "\\frac{1}{2}", True),
    ("\\frac{1}{2}", "1/2", True),
    ("\\frac{2}{4}", "\\frac12", True),
    ("\\frac{1}{3}", "0.34", False),
    ("\\sqrt{2}", "2^{1/2}", True),
    ("2\\sqrt{2}", "\\sqrt{8}", True),
    ("\\sqrt{2}", "1.41", False),
    ("\\frac{\\sqrt{3}}{2}", "\\sin(\\pi/3)", True),
    ("2\\pi", "2\\pi", True),
    ("\\pi", "3.14159265", True),
    ("\\pi", "3.14", False),
    # Percentages: a written percent sign matches both readings; bare numbers are never rescaled.
    ("20\\%", "20", True),
    ("20\\%", "0.2", True),
    ("0.2", "20\\%", True),
    ("20", "0.2", False),
    ("20\\%", "25\\%", False),
    ("\\{1, 2\\}", "\\{2, 1\\}", True),
    ("\\{1, 2\\}", "\\{1, 3\\}", False),
    ("(0, 1]", "(0,1]", True),
    ("[0, 1)", "(0, 1)", False),
    ("(-\\infty, 2)", "(-\\infty,2)", True),
    ("(x+1)^2", "x^2+2x+1", True),
    ("3", "x = 3", True),
]


@pytest.mark.parametrize("reference,answer,expected", EQUIVALENCE)
def test_answers_equivalent(reference, answer, expected):
    assert answers_equivalent(answer, reference) is expected


@pytest.mark.parametrize(
    "completion,expected",
    [
        ("\\boxed{\\{1, \\{2\\}\\}}", "\\{1, \\{2\\}\\}"),  # nested braces
        ("first \\boxed{5} then a truncated \\boxed{6", "5"),  # unbalanced box skipped
        ("\\boxed{ }", None),
        ("The answer is 3.5. Done.", "3.5"),
        ("Answer: $\\frac12$", "\\frac{1}{2}"),
        ("the answer is **42**.", "42"),
        ("The answer is 1. No wait, the answer is 2.", "2"),
        ("\\boxed{7} so the answer is 8", "7"),  # a box beats a stated answer
        ("pages 3-5, item x2, then 1,000 items", "1000"),  # last number, not glued to a word
        ("it drops by \u22127", "-7"),  # Unicode minus
        ("that is 20% of 3/4", "3/4"),
        ("So the slope is $-\\frac{5}{2}$.", "-\\frac{5}{2}"),  # inline LaTeX ending a sentence
        ("The total is 1{,}234.", "1234"),
        ("The point is (3, -4).", "(3, -4)"),
        ("no numbers here", None),
        ("", None),
    ],
)
def test_extract_answer(completion, expected):
    assert extract_answer(completion) == expected


# (completion, reference, correct): each form of a correct answer, with its near misses.
COMPLETIONS = [
    # inline LaTeX at the end of a sentence is the answer, not its last digit
    ("So the slope is $-\\frac{5}{2}$.", "-\\frac{5}{2}", True),
    ("So the slope is $-\\frac{5}{2}$.", "2", False),
    ("So the slope is $-\\frac{5}{2}$.", "\\frac{5}{2}", False),
    ("Thus the root is \\(\\sqrt{3}\\).", "\\sqrt{3}", True),
    ("We get\n\\[ x = \\frac{7}{3} \\]", "7/3", True),
    # equivalent fraction forms
    ("\\boxed{\\frac{-5}{2}}", "-\\frac{5}{2}", True),
    ("\\boxed{\\frac{5}{-2}}", "-\\frac{5}{2}", True),
    ("\\boxed{\\frac{-5}{-2}}", "-\\frac{5}{2}", False),
    ("The answer is $-\\frac{3}{2}$.", "-1.5", True),
    ("The answer is $-\\frac{3}{2}$.", "1.5", False),
    ("\\boxed{-1.5}", "-\\frac{3}{2}", True),
    # thousands separators
    ("The total is $1{,}234$.", "1234", True),
    ("The total is 1{,}234 people.", "1234", True),
    ("\\boxed{1\\,234}", "1234", True),
    ("The answer is 1,234.", "1234", True),
    ("The total is $1{,}243$.", "1234", False),
    # percentages and currency inside a box against a bare number
    ("\\boxed{25\\%}", "25", True),
    ("\\boxed{25\\%}", "0.25", True),
    ("\\boxed{25\\%}", "2.5", False),
    ("\\boxed{\\$1,234}", "1234", True),
    ("\\boxed{\\$12.50}", "12.5", True),
    ("\\boxed{\\$12.50}", "125", False),
    ("It costs $5.", "5", True),
    # a tuple written with a space
    ("The point is (3, -4).", "(3,-4)", True),
    ("\\boxed{(3, -4)}", "(3,-4)", True),
    ("The point is (3, -4).", "(-4,3)", False),
    ("The point is (3, -4).", "-4", False),
    # the answer runs on past the number
    ("the answer is 7, since 10 - 3 = 7", "7", True),
    ("The answer is 7 because 10 - 3 = 7.", "7", True),
    ("the answer is 7, since 10 - 3 = 7", "3", False),
    # hedging: several different final answers score 0
    ("\\boxed{3} or \\boxed{5}", "5", False),
    ("\\boxed{3} or \\boxed{5}", "3", False),
    ("The answer is 3 or 5.", "3", False),
    ("So x = 2 or x = 3.", "3", False),
    ("\\boxed{3}, that is \\boxed{3.0}", "3", True),  # the same value twice is no hedge
    ("\\boxed{2} and \\boxed{3}", "\\{2, 3\\}", True),  # both roots asked for
    ("x = 3 or x = -3 fail the check, so the answer is 3.", "3", True),
    ("To find the answer, we check whether x is 3 or 4.\nTesting shows x = 4.", "4", True),  # no anchor
    ("We check whether x is 3 or 4. Testing shows x = 4.", "4", True),  # weighing options is no hedge
    # percentages with a decimal part, currency and math dollar signs
    ("So the discount is \\boxed{12.5\\%}.", "12.5", True),
    ("So the discount is \\boxed{12.5\\%}.", "0.125", True),
    ("So the discount is \\boxed{12.5\\%}.", "1.25", False),
    ("The area is $12\\pi$ square units.", "12\\pi", True),
    ("The area is $12\\pi$ square units.", "12", False),
    ("She pays $5 and $7 more, so $12 in all.", "12", True),
    ("The answer is 0.5%.", "0.5", True),
    ("The answer is 0.5%.", "5", False),
    # units, text and empty boxes
    ("\\boxed{\\text{12 apples}}", "12", True),
    ("\\boxed{2 x}", "2", False),
    ("The answer is \\boxed{3}\\boxed{}", "3", True),
    ("\\boxed{5 \\text{ cm}}", "5", True),
]


@pytest.mark.parametrize("completion,reference,correct", COMPLETIONS)
def test_completion_forms(completion, reference, correct):
    assert math_reward(_sample(completion, reference)).score == float(correct)


def test_general_path_components():
    good = math_reward(_sample("We compute... so \\boxed{\\frac{1}{2}}", "0.5"))
    assert (good.score, good.passed, good.components) == (1.0, True, {"correct": 1.0, "extracted": 1.0, "hedged": 0.0})
    none = math_reward(_sample("I cannot say", "0.5"))
    assert (none.score, none.passed, none.components) == (0.0, False, {"correct": 0.0, "extracted": 0.0, "hedged": 0.0})
    hedge = math_reward(_sample("\\boxed{1} or \\boxed{2}", "2"))
    assert (hedge.score, hedge.components["hedged"]) == (0.0, 1.0)


@pytest.mark.parametrize(
    "completion,answer,correct",
    [("37-8=29", "29", True), ("37-8=29", "37", False), ("29\n12+3=15", "29", False), ("498-601", "-103", False),
     ("3-5", "5", True), (" 1,000 ", "1000", True)],
)
def test_arithmetic_completions_keep_the_last_number(completion, answer, correct):
    # Numbers and operators only: the last number is the answer; an echoed question is not evaluated.
    assert math_reward(_sample(completion, answer)).score == float(correct)


def test_integer_fast_path_and_fallback():
    assert math_reward(_sample(" 42\n", 42)).components == {"correct": 1.0}
    # Not a bare integer: the final number is the answer, not the leading one.
    assert math_reward(_sample("2 + 40 = 42", "42")).score == 1.0
    assert math_reward(_sample("42 no, 41", "42")).score == 0.0


def test_not_applicable_without_answer():
    assert math_reward(Sample("p1", "math", "q", [1], reference={}, completion="42")) is None


def test_unparseable_reference_is_an_error_naming_it():
    with pytest.raises(ValueError, match="reference answer ''"):
        math_reward(_sample("\\boxed{1}", ""))


def test_overlong_answer_is_wrong_not_parsed():
    assert math_reward(_sample("\\boxed{" + "1+" * 400 + "1}", "401")).score == 0.0


def test_works_outside_the_main_thread():
    # Math-Verify's SIGALRM timeouts raise in other threads; the reward must switch them off there.
    results = []
    thread = threading.Thread(target=lambda: results.append(score_sample(_sample("\\boxed{\\frac{2}{4}}", "0.5"))))
    thread.start()
    thread.join()
    assert results and results[0].score == 1.0
