"""The procedural IFBench constraints for training rows: every id reachable, valid kwargs the
instruction reward accepts, stable ids, and the drawn parameters written into the prompt."""

import itertools
import random

from data_mining.tasks import IFBENCH_CONSTRAINTS, ifbench_task, iter_ifbench_tasks
from rewards.instruction import instruction_reward, parse_constraints
from rewards.instruction.ifbench import IFBENCH_IDS
from rl.types import Sample


def test_generator_covers_all_58_ids_with_valid_kwargs():
    assert sorted(IFBENCH_CONSTRAINTS) == sorted(IFBENCH_IDS)
    rows = list(itertools.islice(iter_ifbench_tasks(seed=0), 3000))
    seen = set()
    for row in rows:
        pairs = parse_constraints(row.reference["constraints"])  # known ids, kwargs bind
        seen.update(i for i, _ in pairs)
        assert 1 <= len(pairs) <= 3 and row.difficulty == len(pairs)
        if any(i.startswith(("custom:", "repeat:")) for i, _ in pairs):
            assert len(pairs) == 1
        sample = Sample(row.id, row.domain, row.prompt, [], reference=row.reference, completion="A reply.")
        assert 0.0 <= instruction_reward(sample).score <= 1.0
    assert seen == set(IFBENCH_IDS)


def test_stream_is_stable_for_a_seed_and_parameters_reach_the_prompt():
    first = [r.id for r in itertools.islice(iter_ifbench_tasks(seed=3), 50)]
    assert first == [r.id for r in itertools.islice(iter_ifbench_tasks(seed=3), 50)]
    assert first != [r.id for r in itertools.islice(iter_ifbench_tasks(seed=4), 50)]
    row = ifbench_task("Explain how a bicycle works.", ["count:word_count_range", "sentence:keyword"], random.Random(1))
    low, high = (row.reference["constraints"]["kwargs"][0][k] for k in ("min_words", "max_words"))
    keyword = row.reference["constraints"]["kwargs"][1]["word"]
    assert low < high and f"between {low} and {high} words" in row.prompt and f'"{keyword}"' in row.prompt
    span = ifbench_task("Explain how a bicycle works.", ["repeat:repeat_span"], random.Random(2))
    kw = span.reference["constraints"]["kwargs"][0]
    assert 0 <= kw["n_start"] < kw["n_end"] < len(kw["prompt_to_repeat"])
    good = kw["prompt_to_repeat"][kw["n_start"] : kw["n_end"] + 1]
    sample = Sample(span.id, "instruction", span.prompt, [], reference=span.reference, completion=good)
    assert instruction_reward(sample).score == 1.0
