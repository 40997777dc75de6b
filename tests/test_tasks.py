import itertools

from data_mining.sampler import EpochSampler
from data_mining.tasks import is_heldout, iter_arithmetic, make_split


def test_split_is_by_prompt_id_and_disjoint():
    train, heldout = make_split(500, 100, seed=3)
    assert len(train) == 500 and len(heldout) == 100
    assert not {r.id for r in train} & {r.id for r in heldout}
    assert all(is_heldout(r.id) for r in heldout)
    assert not any(is_heldout(r.id) for r in train)
    # A different seed draws different prompts, but an id never changes sides.
    train2, heldout2 = make_split(500, 100, seed=4)
    assert {r.id for r in train2} != {r.id for r in train}
    assert not {r.id for r in train2} & {r.id for r in heldout}


def test_split_is_deterministic():
    assert make_split(50, 10, seed=1) == make_split(50, 10, seed=1)


def test_answers_and_difficulty():
    for row in itertools.islice(iter_arithmetic(0, 1, 3), 200):
        a, op, b = row.id.split(":")[1].partition("+") if "+" in row.id else row.id.split(":")[1].partition("-")
        expected = int(a) + int(b) if op == "+" else int(a) - int(b)
        assert row.reference["answer"] == str(expected)
        assert row.prompt == f"{a}{op}{b}="
        assert row.difficulty == len(str(max(int(a), int(b))))


def test_too_many_prompts_asked_fails_clearly():
    import pytest

    with pytest.raises(ValueError, match="distinct prompts"):
        make_split(10**6, 10, min_digits=1, max_digits=1)


def test_epoch_sampler_covers_pool_once_per_epoch():
    rows = [{"id": str(i)} for i in range(10)]
    sampler = EpochSampler(rows, seed=0)
    first = [r["id"] for r in sampler.next(10)]
    assert sorted(first) == sorted(r["id"] for r in rows)
    second = [r["id"] for r in sampler.next(10)]
    assert sorted(second) == sorted(first) and second != first
    assert sampler.epoch == 2


def test_non_distinct_stream_has_uniform_difficulty():
    rows = list(itertools.islice(iter_arithmetic(0, 1, 3, distinct=False), 3000))
    counts = [sum(r.difficulty == d for r in rows) for d in (1, 2, 3)]
    assert all(800 < c < 1200 for c in counts), counts
