"""Math answer checking: an integer fast path for the arithmetic family, math-verify for the rest.

The registered `math` reward finds the completion's final answer and checks it against the row's
`answer` reference field with Hugging Face's Math-Verify (https://github.com/huggingface/Math-Verify),
which compares parsed SymPy objects: integers, decimals, fractions, `\\frac`/`\\sqrt`/`\\pi`
expressions, tuples, sets, intervals and equations.

An arithmetic-only completion (numbers, `+ - * / =` and whitespace, the arithmetic family: "37-8=29")
is read as its last number, as before, so an echoed question ("37-8") is never evaluated into its
answer. Otherwise the final answer is found in this order (`final_answer`):
1. `\\boxed{}` / `\\fbox{}`: the last box. Boxes with different values anywhere in the completion
   are a hedge and score 0, unless they are joined into one list ("\\boxed{2} and \\boxed{3}") and the
   reference is itself a set or tuple of that many values;
2. otherwise Math-Verify's own extraction over the completion's tail (`LatexExtractionConfig` then
   `ExprExtractionConfig`): an answer introduced by "final answer" / "answer", else the last
   `$...$`, `\\(...\\)` or `\\[...\\]` expression or bare number. A final statement that offers two
   different values ("the answer is 3 or 5") is a hedge and scores 0.

Both sides are normalised first (`normalize_text`): Unicode minus, thousands separators written
`1{,}234` or `1\\,234`, currency signs (`\\$`, `€`, ...), and plain-text tuples and intervals
(`(3, -4)`, which Math-Verify's plain extraction reads as `-4`). Units in `\\text{}` and `%` are
Math-Verify's: a value written with a percent sign matches both its number and its fraction
(`20\\%` == `20` == `0.2`); numbers written without `%` are never rescaled (`20` != `0.2`).
"""

from __future__ import annotations

import functools
import re
import threading
from dataclasses import dataclass

from rewards.registry import RewardResult, reward
from rl.types import Sample

_FIRST_INT = re.compile(r"\s*(-?\d+)")
_INTEGER = re.compile(r"\s*-?\d+\s*")
# A completion of the arithmetic family: numbers, + - * / = and whitespace only ("37-8=29"). Its
# answer is its last number, not glued to a digit before it ("3-5" gives 5): Math-Verify would
# evaluate an echoed question ("37-8") and score it correct.
_ARITHMETIC_ONLY = re.compile(r"[\d\s+\-*/=.,]*")
_LAST_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:,\d{3})*(?:\.\d+)?(?:/\d+)?")

_BOX_OPENERS = ("\\boxed{", "\\fbox{")
_DIGIT_GROUP = re.compile(r"(?<=\d)(?:\{,\}|\\[,!;: ]|\\,\s?|~)(?=\d{3}(?!\d))")  # 1{,}234, 1\,234
_CURRENCY = re.compile(r"\\\$\s*|[€£¥₹]\s*|\\(?:euro|pounds?|yen)\b\s*|\b(?:USD|EUR|GBP)\s*")
# "$5" in prose: a dollar sign before a number with no closing `$` later on its line, or followed by
# a word ("$5 and $7"); "$12\pi$" and "$3 + 4 = 7$" are math.
_DOLLAR_AMOUNT = re.compile(r"(?<![\\$\w])\$(?=\d[\d,]*(?:\.\d+)?(?:[^$\n]*$|\s+[A-Za-z]{2,}))", re.MULTILINE)
_PERCENT = re.compile(r"\s*(?:\\?%|\s(?:percent|per cent)\b)")
# A tuple or interval of plain numbers in prose, "(3, -4)" or "[0, 1)": wrapped in $...$ so that
# Math-Verify's LaTeX extraction reads it as one object.
_PLAIN_TUPLE = re.compile(
    r"(?<![$\\\w])([(\[])\s*(-?\d+(?:\.\d+)?(?:/\d+)?|-?\\infty)"
    r"((?:\s*,\s*(?:-?\d+(?:\.\d+)?(?:/\d+)?|-?\\infty))+)\s*([)\]])(?![^$\n]*\$)"
)
_VALUE = r"(\$[^$\n]+\$|\\\([^\n]+?\\\)|-?\d+(?:\.\d+)?(?:/\d+)?%?)"
# Two values offered as alternatives: "3 or 5", "$x=2$ or $x=3$", "x = 3 or x = -3".
_ALTERNATIVES = re.compile(rf"{_VALUE}\s*,?\s*\bor\b\s*(?:[a-zA-Z]\s*=\s*)?{_VALUE}")
_ANSWER_WORD = re.compile(r"answer", re.IGNORECASE)
_WHOLE_TEXT = re.compile(r"\\(?:text|textbf|mathrm)\{([^{}]*)\}")
_NUMBER_THEN_WORDS = re.compile(r"(-?\d+(?:\.\d+)?)\s+(?!pi\b)[A-Za-z]{2,}[A-Za-z ]*")
# "answer" that does not introduce one ("to find the answer, we try 3"): Math-Verify would take the
# number after it over the final one, so the word is hidden from its anchors.
_PASSING_ANSWER = re.compile(r"\banswer(?!s?\W{0,3}(?:is|was|will be|would be|:|=|\*\*|\$|\\))", re.IGNORECASE)

# Math-Verify's own timeouts use SIGALRM, which only the main thread may set: elsewhere (a Ray actor
# with threads, a thread pool) they run without one, and answers are capped in length instead so
# that SymPy is never handed a pathological expression.
_TIMEOUT_S = 5
_MAX_ANSWER_CHARS = 512
_TAIL_CHARS = 1500  # the final answer is looked for in the completion's last characters


def extract_integer(text: str) -> int | None:
    """The integer the completion starts with, or None."""
    match = _FIRST_INT.match(text)
    return int(match.group(1)) if match else None


def arithmetic_correct(completion: str, answer: str) -> bool:
    """True when the completion's leading integer equals the reference answer."""
    value = extract_integer(completion)
    return value is not None and value == int(answer)


def boxed_contents(text: str) -> list[str]:
    """Contents of every complete `\\boxed{...}` / `\\fbox{...}`, in order (nested braces allowed);
    a box left open (a truncated completion) is skipped."""
    found: list[tuple[int, str]] = []
    for opener in _BOX_OPENERS:
        start = text.find(opener)
        while start != -1:
            depth, i = 1, start + len(opener)
            while i < len(text) and depth:
                depth += {"{": 1, "}": -1}.get(text[i], 0)
                i += 1
            if depth == 0:
                found.append((start, text[start + len(opener) : i - 1]))
            start = text.find(opener, start + 1)
    return [content for _, content in sorted(found)]


def normalize_text(text: str) -> str:
    """Unicode minus -> `-`; thousands separators `1{,}234`, `1\\,234` -> `1234`; currency signs
    dropped (`\\$12.50`, `$5` in prose, `€3`); plain-text tuples/intervals wrapped in `$...$`."""
    text = text.replace("\u2212", "-").replace("\u2013", "-")
    text = _DIGIT_GROUP.sub("", text)
    text = _CURRENCY.sub("", text)
    text = _DOLLAR_AMOUNT.sub("", text)
    return _PLAIN_TUPLE.sub(lambda m: f"${m.group(1)}{m.group(2)}{m.group(3)}{m.group(4)}$", text)


def _clean(answer: str) -> str:
    """Strip the markup a model puts around an answer: whitespace, markdown bold, a final period."""
    return answer.strip().strip("*_").strip().rstrip(".").strip().strip("*_").strip()


def _box_answer(content: str) -> str:
    """A box's answer: markup stripped, a box that is all `\\text{...}` unwrapped, and unit words
    after a lone number dropped (`\\text{12 apples}` -> `12`)."""
    answer = _clean(content)
    whole_text = _WHOLE_TEXT.fullmatch(answer)
    if whole_text:
        answer = whole_text.group(1).strip()
    with_words = _NUMBER_THEN_WORDS.fullmatch(answer)
    return with_words.group(1) if with_words else answer


def _timeout_s() -> int | None:
    return _TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


def _extraction_config() -> list:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig

    return [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]


def _parse_text(text: str) -> list:
    """Math-Verify's extraction over free text (a completion's tail)."""
    from math_verify import parse  # imported on first use: the arithmetic path never needs SymPy

    return parse(text, extraction_config=_extraction_config(), parsing_timeout=_timeout_s())


def _parse_answer(answer: str) -> list:
    """Math-Verify's parse of one bare answer; bare LaTeX is wrapped in `$...$` so that sets and
    intervals parse as such (unwrapped, `\\{1, 2\\}` parses as 2)."""
    from math_verify import parse

    answer = normalize_text(answer)
    has_math_env = "$" in answer or "\\(" in answer or "\\[" in answer
    return parse(answer if has_math_env else f"${answer}$", parsing_timeout=_timeout_s())


@functools.lru_cache(maxsize=4096)
def _parse_reference(reference: str) -> list:
    """The reference's parse (cached: a GRPO group shares it); ValueError when it does not parse."""
    gold = _parse_answer(reference)
    if not gold:
        raise ValueError(f"reference answer {reference!r} could not be parsed")
    return gold


def _same(gold: list, predicted: list) -> bool:
    from math_verify import verify

    # verify is not symmetric: the reference goes first.
    return bool(predicted) and bool(verify(gold, predicted, timeout_seconds=_timeout_s()))


@dataclass(frozen=True)
class FinalAnswer:
    """What `final_answer` found: the answer's text (None when there is none), Math-Verify's parse of
    it (empty for a single box, parsed only if it is compared), whether the completion offers
    several different final answers (a hedge, scored 0) and the boxes' contents."""

    text: str | None
    parsed: tuple = ()
    hedged: bool = False
    boxes: tuple[str, ...] = ()


def _distinct(parsed: list[list]) -> list[list]:
    """The parses that differ from each other (one representative each)."""
    out: list[list] = []
    for p in parsed:
        if p and not any(_same(q, p) for q in out):
            out.append(p)
    return out


def _offers_alternatives(statement: str) -> bool:
    """True when the final statement offers two different values joined by "or"."""
    for match in _ALTERNATIVES.finditer(statement):
        left, right = (_parse_answer(_clean(v)) for v in match.groups())
        if left and right and not _same(left, right):
            return True
    return False


def _final_statement(tail: str) -> str:
    """The part of the tail that states the answer: the last line, from its last "answer" on, else
    its last sentence (reasoning before it may weigh "3 or 4" without hedging)."""
    lines = [line for line in tail.splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    anchors = list(_ANSWER_WORD.finditer(last))
    if anchors:
        return last[anchors[-1].start() :]
    return re.split(r"(?<=[.!?])\s+(?=\S)", last.strip())[-1]


def final_answer(completion: str) -> FinalAnswer:
    """The completion's final answer (see the module docstring for the precedence)."""
    text = normalize_text(completion)
    boxes = tuple(b for b in map(_box_answer, boxed_contents(text)) if b)
    if boxes:
        if any(len(b) > _MAX_ANSWER_CHARS for b in boxes):
            return FinalAnswer(None, boxes=boxes)
        if len(set(boxes)) == 1:  # one box (or the same text boxed again): parsed when compared
            return FinalAnswer(boxes[-1], (), False, boxes)
        parsed = [_parse_answer(b) for b in boxes]
        hedged = len(_distinct(parsed)) > 1
        return FinalAnswer(boxes[-1], tuple(parsed[-1]), hedged, boxes)
    tail = text[-_TAIL_CHARS:]
    parsed = _parse_text(_PASSING_ANSWER.sub("reply", tail))
    if not parsed:
        return FinalAnswer(None)
    answer_text = parsed[-1] if isinstance(parsed[-1], str) else str(parsed[0])
    answer_text = _clean(answer_text)
    if not answer_text or len(answer_text) > _MAX_ANSWER_CHARS:
        return FinalAnswer(None)
    statement = _final_statement(tail)
    if re.search(re.escape(answer_text) + r"\s*(?:\\?%|percent\b)", statement):
        answer_text += "%"  # Math-Verify's text drops the sign its value kept
    return FinalAnswer(answer_text, tuple(parsed), _offers_alternatives(statement))


def extract_answer(completion: str) -> str | None:
    """The text of the completion's final answer (see `final_answer`), or None."""
    return final_answer(completion).text


def _joined_boxes_match(found: FinalAnswer, gold: list) -> bool:
    """Boxes joined into one list ("\\boxed{2} and \\boxed{3}") against a set/tuple reference."""
    from math_verify import parse

    joined = ", ".join(found.boxes)
    predicted = parse(f"${joined}$", parsing_timeout=_timeout_s())
    return _same(gold, predicted)


def answers_equivalent(answer: str, reference: str) -> bool:
    """True when `answer` is mathematically equal to `reference` according to Math-Verify.

    Raises ValueError when the reference itself cannot be parsed (a data error, not a wrong answer).
    """
    if len(answer) > _MAX_ANSWER_CHARS:
        return False
    return _same(_parse_reference(reference), _parse_answer(answer))


def _arithmetic_answer(completion: str) -> FinalAnswer:
    """The last number of an arithmetic-only completion (see `_ARITHMETIC_ONLY`)."""
    numbers = _LAST_NUMBER.findall(completion)
    return FinalAnswer(numbers[-1] if numbers else None)


def completion_correct(completion: str, reference: str) -> tuple[bool, FinalAnswer]:
    """Whether the completion's final answer equals `reference`, and what was found.

    A hedge is wrong, except several boxes that together equal a set or tuple reference."""
    gold = _parse_reference(reference)
    found = _arithmetic_answer(completion) if _ARITHMETIC_ONLY.fullmatch(completion) else final_answer(completion)
    if found.text is None:
        return False, found
    if found.hedged:
        return bool(found.boxes) and _joined_boxes_match(found, gold), found
    if _INTEGER.fullmatch(found.text) and _INTEGER.fullmatch(reference) and not found.parsed:
        return int(found.text) == int(reference), found  # the common `\boxed{42}` case, no SymPy
    if _same(gold, list(found.parsed) or _parse_answer(found.text)):
        return True, found
    return _percent_match(found.text, reference, gold), found


def _percent_match(answer: str, reference: str, gold: list) -> bool:
    """A percentage on either side also matches as its bare number (`12.5\\%` == `12.5`): Math-Verify
    compares `12.5\\%` only as 0.125 when the number is not an integer."""
    if _PERCENT.search(answer):
        return _same(gold, _parse_answer(_PERCENT.sub("", answer)))
    if _PERCENT.search(reference):
        return _same(_parse_answer(_PERCENT.sub("", reference)), _parse_answer(answer))
    return False


@reward("math")
def math_reward(sample: Sample) -> RewardResult | None:
    """1.0 when the completion's final answer equals the row's `answer` reference field, else 0.0.

    Components: `correct`, `extracted` (1 when a final answer was found) and `hedged` (1 when
    several different final answers were given). A completion that is a bare integer, checked
    against an integer answer (the arithmetic task family), takes the fast path: integer
    comparison, no parsing, and only the `correct` component.
    """
    answer = sample.reference.get("answer")
    if answer is None:
        return None
    reference = str(answer)
    if _INTEGER.fullmatch(sample.completion) and _INTEGER.fullmatch(reference):
        correct = arithmetic_correct(sample.completion, reference)
        return RewardResult(float(correct), {"correct": float(correct)}, passed=correct)
    correct, found = completion_correct(sample.completion, reference)
    components = {"correct": float(correct), "extracted": float(found.text is not None), "hedged": float(found.hedged)}
    return RewardResult(float(correct), components, passed=correct)
