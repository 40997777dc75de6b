"""Verifiable instruction following: IFEval's 25 instruction types (`rewards.instruction.ifeval`)
and IFBench's 58 (`rewards.instruction.ifbench`), scored the way their reference checkers score.

A row of the `instruction` domain carries its instructions in IFEval's format, with ids of either
benchmark:

    "constraints": {"instruction_id_list": ["punctuation:no_comma", "count:word_count_range"],
                    "kwargs": [{}, {"min_words": 50, "max_words": 80}]}

Kwargs that are null are ignored (datasets often store every kwarg name in every row); an unknown
id, a missing or an unknown kwarg is an error naming the instruction (`parse_constraints`).

Modes (IFEval's two accuracies, arXiv:2311.07911 section 2.2):
- strict: the checker runs on the response as written (an empty response follows nothing);
- loose: the instruction is followed when the checker passes on any of the response's variants:
  as written, without its first line, without its last line, without both, and each of these with
  every `*` removed (markdown emphasis, bullets).
The rewards `instruction` and `instruction:strict` score strict, `instruction:loose` loose
(choose one per domain with a route: `instruction=instruction:loose`); each scores the fraction of
instructions followed, with one 0/1 component per instruction.
"""

from __future__ import annotations

import difflib
import functools
import inspect
from typing import Callable

from rewards.instruction import ifbench  # noqa: F401  (registers IFBench's checkers)
from rewards.instruction.ifeval import INSTRUCTIONS, detect_language, instruction, sentences, words
from rewards.registry import RewardResult, reward
from rl.types import Sample

__all__ = [
    "INSTRUCTIONS", "MODES", "check_instruction", "detect_language", "instruction", "instruction_reward",
    "loose_variants", "parse_constraints", "sentences", "words",
]


def loose_variants(text: str) -> list[str]:
    """IFEval's loose variants of a response: as written, first line dropped, last line dropped,
    both dropped, then each of those four with every `*` removed."""
    lines = text.split("\n")
    cut = [text, "\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(), "\n".join(lines[1:-1]).strip()]
    return cut + [v.replace("*", "") for v in cut]


MODES: dict[str, Callable[[str], list[str]]] = {"strict": lambda text: [text], "loose": loose_variants}


@functools.lru_cache(maxsize=None)
def _signature(instruction_id: str) -> inspect.Signature:
    return inspect.signature(INSTRUCTIONS[instruction_id])


def parse_constraints(constraints: object) -> list[tuple[str, dict]]:
    """`(instruction_id, kwargs)` pairs from IFEval's `{"instruction_id_list", "kwargs"}` object, with
    null kwargs dropped; ValueError naming the problem (an unknown id by name) for anything malformed."""
    if not isinstance(constraints, dict) or not isinstance(constraints.get("instruction_id_list"), list):
        raise ValueError(
            f"'constraints' must be an object with an 'instruction_id_list' list, got {constraints!r}"
        )
    ids = constraints["instruction_id_list"]
    kwargs_list = constraints.get("kwargs")
    if kwargs_list is None:
        kwargs_list = [{}] * len(ids)
    if not ids or not isinstance(kwargs_list, list) or len(kwargs_list) != len(ids):
        raise ValueError(
            f"'constraints' needs a non-empty 'instruction_id_list' and a 'kwargs' list of the same "
            f"length, got {len(ids)} ids and kwargs {kwargs_list!r}"
        )
    pairs = []
    for index, (iid, kwargs) in enumerate(zip(ids, kwargs_list)):
        if not isinstance(iid, str) or iid not in INSTRUCTIONS:
            close = difflib.get_close_matches(str(iid), INSTRUCTIONS, n=3)
            raise ValueError(
                f"instruction {index}: unknown id {iid!r} (not an IFEval or IFBench instruction id"
                + (f"; did you mean {', '.join(close)}?)" if close else ")")
            )
        if kwargs is not None and not isinstance(kwargs, dict):
            raise ValueError(f"instruction {index}:{iid}: kwargs must be an object, got {kwargs!r}")
        kwargs = {k: v for k, v in (kwargs or {}).items() if v is not None}
        try:
            _signature(iid).bind("", **kwargs)
        except TypeError as exc:
            raise ValueError(f"instruction {index}:{iid}: bad kwargs {kwargs}: {exc}") from None
        pairs.append((iid, kwargs))
    return pairs


def check_instruction(
    text: str, instruction_id: str, kwargs: dict, label: str | None = None, mode: str = "strict"
) -> bool:
    """Run one checker in `mode` ("strict" or "loose"); bad kwargs raise ValueError naming `label`
    (default: the id)."""
    label = label or instruction_id
    fn = INSTRUCTIONS.get(instruction_id)
    if fn is None:
        raise ValueError(f"instruction {label}: unknown id; known: {sorted(INSTRUCTIONS)}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {sorted(MODES)}, got {mode!r}")
    try:
        # Binding first turns a missing or misspelled kwarg into an error naming the instruction.
        _signature(instruction_id).bind(text, **kwargs)
        return any(v.strip() and bool(fn(v, **kwargs)) for v in MODES[mode](text))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"instruction {label}: bad kwargs {kwargs}: {exc}") from exc


def score_constraints(completion: str, constraints: object, mode: str = "strict") -> RewardResult:
    """Fraction of the instructions followed in `mode`; one 0/1 component per instruction
    (`<index>:<id>`); passed only when all are followed."""
    components: dict[str, float] = {}
    for index, (iid, kwargs) in enumerate(parse_constraints(constraints)):
        label = f"{index}:{iid}"
        components[label] = float(check_instruction(completion, iid, kwargs, label, mode))
    met = sum(components.values())
    return RewardResult(met / len(components), components, passed=met == len(components))


def _mode_reward(mode: str) -> Callable[[Sample], RewardResult | None]:
    def score(sample: Sample) -> RewardResult | None:
        constraints = sample.reference.get("constraints")
        return None if constraints is None else score_constraints(sample.completion, constraints, mode)

    score.__doc__ = f"The row's instructions (`constraints`) scored in {mode} mode; None without them."
    score.__name__ = f"instruction_{mode}_reward"
    return score


instruction_reward = reward("instruction")(_mode_reward("strict"))
reward("instruction:strict")(_mode_reward("strict"))
reward("instruction:loose")(_mode_reward("loose"))
