import itertools
from collections import Counter

from data_mining.sampler import EpochSampler
from data_mining.tasks import is_heldout, iter_arithmetic, make_split, make_task_split, quotas


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


def test_quotas_follow_weights_and_sum_to_total():
    assert quotas(10, [2, 1, 1]) == [5, 3, 2]  # ties go to the earlier family
    assert sum(quotas(7, [1, 1, 1])) == 7
    assert quotas(4, [1.0]) == [4]


def test_task_split_mixes_families_by_weight():
    import pytest

    train, heldout = make_task_split(["arithmetic", "code", "instruction"], [2, 1, 1], 400, 40, seed=0, max_digits=2)
    domains = Counter(r["domain"] for r in train)
    assert domains == {"math": 200, "code": 100, "instruction": 100}
    assert set(Counter(r["domain"] for r in heldout)) == {"math", "code", "instruction"}
    assert not {r["id"] for r in train} & {r["id"] for r in heldout}
    assert all(is_heldout(r["id"]) for r in heldout) and not any(is_heldout(r["id"]) for r in train)
    # Sampling weights give each family its share of the draws whatever its pool size.
    share = {d: sum(r["weight"] for r in train if r["domain"] == d) for d in domains}
    assert share == pytest.approx({"math": 0.5, "code": 0.25, "instruction": 0.25})
    assert make_task_split(["code"], [1], 50, 5, seed=3) == make_task_split(["code"], [1], 50, 5, seed=3)
    # A family with fewer distinct prompts than asked gives all it has; the others are unaffected.
    train, _ = make_task_split(["arithmetic", "code"], [1, 1], 4000, 10, seed=0, max_digits=2)
    code = [r for r in train if r["domain"] == "code"]
    assert 100 < len(code) < 2000 and len(train) - len(code) == 2000
    with pytest.raises(ValueError, match="one positive weight per task"):
        make_task_split(["arithmetic", "code"], [1], 10, 1)
    with pytest.raises(ValueError, match="unknown task 'poetry'"):
        make_task_split(["poetry"], [1], 10, 1)
