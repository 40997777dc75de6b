"""Procedural tasks with verifiable answers.

The first family is integer arithmetic with graded difficulty: the difficulty of a prompt is the
number of digits of its operands. Prompt ids are derived from the generator seed and the index, and
the train / held-out split is made by prompt id (a stable hash), so held-out prompts are never
trained on, whatever the sizes asked for.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Any, Iterator

OPERATORS = ("+", "-")


@dataclass(frozen=True)
class TaskRow:
    """One prompt with its reference fields, in the dataset row schema used across the project."""

    id: str
    domain: str
    prompt: str
    reference: dict[str, Any] = field(default_factory=dict)
    difficulty: int = 0


def heldout_fraction_of(prompt_id: str) -> float:
    """A stable number in [0, 1) derived from the prompt id, used to split train from held-out."""
    digest = hashlib.sha256(prompt_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def is_heldout(prompt_id: str, fraction: float = 0.1) -> bool:
    return heldout_fraction_of(prompt_id) < fraction


def arithmetic_prompt(a: int, op: str, b: int) -> str:
    return f"{a}{op}{b}="


def arithmetic_answer(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b


def _operand(rng: random.Random, digits: int) -> int:
    low = 0 if digits == 1 else 10 ** (digits - 1)
    return rng.randint(low, 10**digits - 1)


def iter_arithmetic(
    seed: int, min_digits: int = 1, max_digits: int = 3, distinct: bool = True
) -> Iterator[TaskRow]:
    """Stream of arithmetic prompts, identical for the same arguments; difficulty is uniform.

    The id is the expression itself, so the same expression always has the same id (and the same
    split) regardless of the seed or the order it was drawn in. With `distinct` the stream ends
    once no new expression turns up (small digit ranges run out).
    """
    rng = random.Random(seed)
    seen: set[str] = set()
    # A bounded number of consecutive duplicates means the space is exhausted.
    misses = 0
    while misses < 10_000:
        digits = rng.randint(min_digits, max_digits)
        a, b = _operand(rng, digits), _operand(rng, rng.randint(min_digits, digits))
        op = rng.choice(OPERATORS)
        prompt = arithmetic_prompt(a, op, b)
        if distinct:
            if prompt in seen:
                misses += 1
                continue
            misses = 0
            seen.add(prompt)
        yield TaskRow(
            id=f"arith:{a}{op}{b}",
            domain="math",
            prompt=prompt,
            reference={"answer": str(arithmetic_answer(a, op, b))},
            difficulty=digits,
        )


def make_split(
    n_train: int,
    n_heldout: int,
    seed: int = 0,
    min_digits: int = 1,
    max_digits: int = 3,
    heldout_fraction: float = 0.1,
    strict: bool = True,
) -> tuple[list[TaskRow], list[TaskRow]]:
    """Draw `n_train` train and `n_heldout` held-out prompts, split by prompt id.

    When fewer distinct prompts exist, `strict` raises; otherwise all that exist are returned.
    """
    train: list[TaskRow] = []
    heldout: list[TaskRow] = []
    for row in iter_arithmetic(seed, min_digits, max_digits):
        bucket = heldout if is_heldout(row.id, heldout_fraction) else train
        limit = n_heldout if bucket is heldout else n_train
        if len(bucket) < limit:
            bucket.append(row)
        if len(train) >= n_train and len(heldout) >= n_heldout:
            return train, heldout
    if not strict:
        return train, heldout
    raise ValueError(
        f"only {len(train)} train / {len(heldout)} held-out distinct prompts exist with "
        f"{min_digits}-{max_digits} digits; asked for {n_train} / {n_heldout}"
    )
