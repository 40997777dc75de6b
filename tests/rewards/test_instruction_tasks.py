"""The procedural instruction-following tasks: stable ids, valid IFEval constraints, graded
difficulty, and a reference response that the instruction reward scores 1.0."""

import itertools

import pytest

from data_mining.tasks import INSTRUCTION_FAMILIES, instruction_task, iter_instruction_tasks
from rewards.instruction import instruction_reward, parse_constraints
from rl.types import Sample


def _score(row, completion: str) -> float:
    sample = Sample(row.id, row.domain, row.prompt, [], reference=row.reference, completion=completion)
    return instruction_reward(sample).score


def test_every_task_is_valid_and_its_solution_scores_one():
    rows = list(iter_instruction_tasks(seed=0))
    assert len(rows) == len({r.id for r in rows}) == sum(12 * len(f[2]) for f in INSTRUCTION_FAMILIES)
    for row in rows:
        assert row.domain == "instruction" and row.id.startswith("instr:")
        parse_constraints(row.reference["constraints"])  # IFEval format, known ids, valid kwargs
        assert _score(row, row.reference["solution"]) == 1.0, row


@pytest.mark.parametrize(
    "family,word,n,near_miss,score",
    [
        ("upper", "apple", 0, "Apple", 0.5),
        ("lower", "cat", 0, "cat.", 1.0),
        ("lower", "cat", 0, "Cat", 0.5),
        ("quote", "sun", 0, "'sun'", 0.5),
        ("words", "dog", 3, "dog red blue green", 2 / 3),  # one word too many
        ("words", "dog", 3, "dog red", 2 / 3),  # one too few
        ("title", "tree", 0, "<tree>", 0.5),
        ("ending", "moon", 1, "moon Thank you. Bye", 0.5),
        ("bullets", "bird", 3, "* bird\n* bird", 0.5),
        ("json", "star", 4, '{"star": 4', 0.5),
        ("caps_words", "fish", 2, "FISH red", 3 / 4),
        ("quiet_words", "book", 3, "book, red, blue", 4 / 5),
        ("postscript", "house", 2, "house\nP.S.", 1 / 3),
    ],
)
def test_near_misses_score_below_one(family, word, n, near_miss, score):
    row = instruction_task(family, word, n)
    assert _score(row, near_miss) == pytest.approx(score)
    assert _score(row, row.reference["solution"]) == 1.0


def test_ids_are_stable_for_a_seed_and_difficulty_is_graded():
    first = [r.id for r in itertools.islice(iter_instruction_tasks(seed=3), 50)]
    assert first == [r.id for r in itertools.islice(iter_instruction_tasks(seed=3), 50)]
    assert first != [r.id for r in itertools.islice(iter_instruction_tasks(seed=4), 50)]
    assert instruction_task("words", "cat", 2) == instruction_task("words", "cat", 2)
    rows = list(itertools.islice(iter_instruction_tasks(seed=0), 300))
    counts = {d: sum(r.difficulty == d for r in rows) for d in (1, 2, 3)}
    assert all(60 <= c <= 140 for c in counts.values()), counts
    # Harder levels ask for more at once.
    mean_instructions = {
        d: sum(len(r.reference["constraints"]["instruction_id_list"]) for r in rows if r.difficulty == d) / counts[d]
        for d in (1, 2, 3)
    }
    assert mean_instructions[1] < mean_instructions[3]
    assert {r.difficulty for r in iter_instruction_tasks(seed=0, min_difficulty=2, max_difficulty=2)} == {2}
    with pytest.raises(ValueError, match="no instruction task family"):
        next(iter_instruction_tasks(seed=0, min_difficulty=4, max_difficulty=5))
