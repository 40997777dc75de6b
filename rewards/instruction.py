"""Verifiable instruction-following constraints in the style of IFEval (Zhou et al. 2023,
"Instruction-Following Evaluation for Large Language Models", arXiv:2311.07911).

A row of the `instruction` domain carries its constraints in `reference["constraints"]`, a list of
`{"type": ..., **params}`; the `instruction` reward scores the fraction met. Each constraint type is
a small checker registered with `@constraint(type)`: `fn(text, **params) -> bool`.

Counting rules (the reviewer's reference; all are deliberately simple and documented per checker):
words are runs of letters/digits, joined by an apostrophe or hyphen ("don't" and "well-known" are
one word); sentences end with `.`, `!` or `?` followed by whitespace or the end of the text;
paragraphs are separated by blank lines or a `***` line; phrases and keywords match
case-insensitively, keywords as whole words.
"""

from __future__ import annotations

import inspect
import json
import re
from typing import Callable

from rewards.registry import RewardResult, reward
from rl.types import Sample

ConstraintFn = Callable[..., bool]
CONSTRAINTS: dict[str, ConstraintFn] = {}

_WORD = re.compile(r"\w+(?:['\u2019-]\w+)*")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n|^\s*\*\*\*\s*$", re.MULTILINE)
_BULLET = re.compile(r"^[ \t]*[*-][ \t]+\S", re.MULTILINE)
_PLACEHOLDER = re.compile(r"\[[^\[\]]+\]")
_JSON_FENCE = re.compile(r"```(?:json)?\s*\n?(.*?)\n?\s*```", re.DOTALL | re.IGNORECASE)


def constraint(name: str) -> Callable[[ConstraintFn], ConstraintFn]:
    """Register `fn(text, **params) -> bool` as the checker of constraint type `name`."""

    def deco(fn: ConstraintFn) -> ConstraintFn:
        if name in CONSTRAINTS:
            raise ValueError(f"constraint {name!r} is already registered ({CONSTRAINTS[name].__module__})")
        CONSTRAINTS[name] = fn
        return fn

    return deco


def _within(count: int, at_least: int | None, at_most: int | None) -> bool:
    if at_least is None and at_most is None:
        raise ValueError("needs at least one of 'at_least' and 'at_most'")
    return (at_least is None or count >= at_least) and (at_most is None or count <= at_most)


def _has_phrase(text: str, phrase: str) -> bool:
    """Case-insensitive whole-word match (a keyword inside a longer word does not count)."""
    return re.search(rf"(?<!\w){re.escape(phrase)}(?!\w)", text, re.IGNORECASE) is not None


@constraint("length_words")
def length_words(text: str, *, at_least: int | None = None, at_most: int | None = None) -> bool:
    """Number of words within [at_least, at_most] (either bound may be omitted)."""
    return _within(len(_WORD.findall(text)), at_least, at_most)


@constraint("length_sentences")
def length_sentences(text: str, *, at_least: int | None = None, at_most: int | None = None) -> bool:
    """Number of sentences within [at_least, at_most]; text after the last end mark counts as one."""
    sentences = [s for s in _SENTENCE_END.split(text.strip()) if s]
    return _within(len(sentences), at_least, at_most)


@constraint("keywords_include")
def keywords_include(text: str, *, keywords: list[str]) -> bool:
    """Every keyword appears (case-insensitive, whole words)."""
    return all(_has_phrase(text, k) for k in keywords)


@constraint("keywords_exclude")
def keywords_exclude(text: str, *, keywords: list[str]) -> bool:
    """No keyword appears (case-insensitive, whole words)."""
    return not any(_has_phrase(text, k) for k in keywords)


@constraint("json_format")
def json_format(text: str) -> bool:
    """The whole response is valid JSON, optionally inside one ```json (or bare ```) fenced block."""
    body = text.strip()
    fenced = _JSON_FENCE.fullmatch(body)
    try:
        json.loads(fenced.group(1) if fenced else body)
    except json.JSONDecodeError:
        return False
    return True


@constraint("lowercase")
def lowercase(text: str) -> bool:
    """No uppercase letter, and at least one letter (`str.islower`)."""
    return text.islower()


@constraint("uppercase")
def uppercase(text: str) -> bool:
    """No lowercase letter, and at least one letter (`str.isupper`)."""
    return text.isupper()


@constraint("bullet_count")
def bullet_count(text: str, *, count: int) -> bool:
    """Exactly `count` markdown bullet lines (`* item` or `- item`; `**bold**` and `***` are not)."""
    return len(_BULLET.findall(text)) == count


@constraint("starts_with")
def starts_with(text: str, *, phrase: str) -> bool:
    """The response (leading whitespace ignored) starts with `phrase`, case-insensitively."""
    return text.lstrip().lower().startswith(phrase.strip().lower())


@constraint("ends_with")
def ends_with(text: str, *, phrase: str) -> bool:
    """The response (trailing whitespace ignored) ends with `phrase`, case-insensitively."""
    return text.rstrip().lower().endswith(phrase.strip().lower())


@constraint("paragraph_count")
def paragraph_count(text: str, *, count: int) -> bool:
    """Exactly `count` non-empty paragraphs, separated by blank lines or a `***` line."""
    paragraphs = [p for p in _PARAGRAPH_BREAK.split(text) if p.strip()]
    return len(paragraphs) == count


@constraint("no_commas")
def no_commas(text: str) -> bool:
    """No comma anywhere in the response."""
    return "," not in text


@constraint("placeholders")
def placeholders(text: str, *, at_least: int) -> bool:
    """At least `at_least` square-bracket placeholders such as `[address]` (non-empty, unnested)."""
    return len(_PLACEHOLDER.findall(text)) >= at_least


def check_constraint(text: str, spec: dict, label: str) -> bool:
    """Check one `{"type": ..., **params}` spec; errors name `label` (e.g. "2:length_words")."""
    if not isinstance(spec, dict) or not isinstance(spec.get("type"), str):
        raise ValueError(f"constraint {label}: expected an object with a string 'type', got {spec!r}")
    params = {k: v for k, v in spec.items() if k != "type"}
    fn = CONSTRAINTS.get(spec["type"])
    if fn is None:
        raise ValueError(f"constraint {label}: unknown type {spec['type']!r}; known: {sorted(CONSTRAINTS)}")
    try:
        # Binding first turns a missing or misspelled parameter into an error naming the constraint.
        inspect.signature(fn).bind(text, **params)
        return fn(text, **params)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"constraint {label}: bad parameters {params}: {exc}") from exc


@reward("instruction")
def instruction_reward(sample: Sample) -> RewardResult | None:
    """Fraction of the row's `constraints` the completion meets; one 0/1 component per constraint
    (`<index>:<type>`); passed only when all are met. Not applicable without `constraints`."""
    constraints = sample.reference.get("constraints")
    if constraints is None:
        return None
    if not isinstance(constraints, list) or not constraints:
        raise ValueError(f"'constraints' must be a non-empty list, got {constraints!r}")
    components: dict[str, float] = {}
    for index, spec in enumerate(constraints):
        label = f"{index}:{spec.get('type') if isinstance(spec, dict) else '?'}"
        components[label] = float(check_constraint(sample.completion, spec, label))
    met = sum(components.values())
    return RewardResult(met / len(constraints), components, passed=met == len(constraints))
