"""Math answer checking: an integer fast path for the arithmetic family, math-verify for the rest.

The registered `math` reward extracts the completion's final answer (`extract_answer`) and checks
it against the row's `answer` reference field with Hugging Face's Math-Verify
(https://github.com/huggingface/Math-Verify), which compares parsed SymPy objects: integers,
decimals, fractions, `\\frac`/`\\sqrt`/`\\pi` expressions, sets, intervals and equations.

Percentages follow Math-Verify: a value written with a percent sign matches both its number and
its fraction (`20\\%` == `20` == `0.2`), because datasets and models disagree on whether "what
percent" is answered as 20 or 0.2; numbers written without `%` are never rescaled (`20` != `0.2`).
"""

from __future__ import annotations

import re
import threading

from rewards.registry import RewardResult, reward
from rl.types import Sample

_FIRST_INT = re.compile(r"\s*(-?\d+)")
_INTEGER = re.compile(r"\s*-?\d+\s*")

_BOXED = "\\boxed{"
# "the answer is X", "Answer: X": X runs to the end of its sentence (a period followed by space or
# the end of the text, so decimals survive) or of its line.
_ANSWER_IS = re.compile(r"\banswer\s*(?:is\s*:?|:)\s*(.+?)\s*(?:\.(?=\s|$)|$)", re.IGNORECASE | re.MULTILINE)
# A number not glued to a word ("x2") or to a preceding digit ("3-5" gives 5, not -5); thousands
# separators, a decimal part, a simple fraction and a percent sign stay part of it.
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:,\d{3})*(?:\.\d+)?(?:/\d+)?%?")
_THIN_SPACE_IN_NUMBER = re.compile(r"(?<=\d)\\[,!](?=\d{3})")  # 1\,000 (Math-Verify reads 1*0)

# Math-Verify's own timeouts use SIGALRM, which only the main thread may set: elsewhere (a Ray actor
# with threads, a thread pool) they run without one, and answers are capped in length instead so
# that SymPy is never handed a pathological expression.
_TIMEOUT_S = 5
_MAX_ANSWER_CHARS = 512


def extract_integer(text: str) -> int | None:
    """The integer the completion starts with, or None."""
    match = _FIRST_INT.match(text)
    return int(match.group(1)) if match else None


def arithmetic_correct(completion: str, answer: str) -> bool:
    """True when the completion's leading integer equals the reference answer."""
    value = extract_integer(completion)
    return value is not None and value == int(answer)


def _last_boxed(text: str) -> str | None:
    """Content of the last complete `\\boxed{...}` (nested braces allowed); None if there is none."""
    start = text.rfind(_BOXED)
    while start != -1:
        depth, i = 1, start + len(_BOXED)
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            return text[start + len(_BOXED) : i - 1]
        # Unbalanced (e.g. the completion was truncated inside it): an earlier box may be complete.
        start = text.rfind(_BOXED, 0, start)
    return None


def _clean(answer: str) -> str:
    """Strip the markup a model puts around an answer: whitespace, markdown bold, a final period."""
    return answer.strip().strip("*").strip().rstrip(".").strip()


def extract_answer(completion: str) -> str | None:
    """The completion's final answer: the last `\\boxed{}`, else the last "the answer is X", else
    the last number in the text; None when there is none (or it is empty)."""
    text = completion.replace("\u2212", "-")  # Unicode minus sign
    boxed = _last_boxed(text)
    if boxed is not None:
        return _clean(boxed) or None
    stated = list(_ANSWER_IS.finditer(text))
    if stated:
        return _clean(stated[-1].group(1)) or None
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def _timeout_s() -> int | None:
    return _TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


def _parse(answer: str) -> list:
    """Math-Verify's parse of one answer; bare LaTeX is wrapped in `$...$` so that sets and
    intervals parse as such (unwrapped, `\\{1, 2\\}` parses as 2)."""
    from math_verify import parse  # imported on first use: the arithmetic path never needs SymPy

    answer = _THIN_SPACE_IN_NUMBER.sub("", answer)
    has_math_env = "$" in answer or "\\(" in answer or "\\[" in answer
    return parse(answer if has_math_env else f"${answer}$", parsing_timeout=_timeout_s())


def answers_equivalent(answer: str, reference: str) -> bool:
    """True when `answer` is mathematically equal to `reference` according to Math-Verify.

    Raises ValueError when the reference itself cannot be parsed (a data error, not a wrong answer).
    """
    from math_verify import verify

    if len(answer) > _MAX_ANSWER_CHARS:
        return False
    gold = _parse(reference)
    if not gold:
        raise ValueError(f"reference answer {reference!r} could not be parsed")
    predicted = _parse(answer)
    # verify is not symmetric: the reference goes first.
    return bool(predicted) and verify(gold, predicted, timeout_seconds=_timeout_s())


@reward("math")
def math_reward(sample: Sample) -> RewardResult | None:
    """1.0 when the completion's final answer equals the row's `answer` reference field, else 0.0.

    Components: `correct` and `extracted` (1 when a final answer was found). A completion that is
    a bare integer, checked against an integer answer (the arithmetic task family), takes the fast
    path: integer comparison, no parsing, and only the `correct` component.
    """
    answer = sample.reference.get("answer")
    if answer is None:
        return None
    reference = str(answer)
    if _INTEGER.fullmatch(sample.completion) and _INTEGER.fullmatch(reference):
        correct = arithmetic_correct(sample.completion, reference)
        return RewardResult(float(correct), {"correct": float(correct)}, passed=correct)
    extracted = extract_answer(sample.completion)
    correct = extracted is not None and answers_equivalent(extracted, reference)
    return RewardResult(
        float(correct), {"correct": float(correct), "extracted": float(extracted is not None)}, passed=correct
    )
