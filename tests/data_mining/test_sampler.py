"""The shared weighted draw gives exactly the draws of the two it replaced, for the same RNG state."""

import heapq
import random

import pytest

from data_mining.sampler import EpochSampler, weighted_sample


def _old_miner_draw(rng, items, k):  # the miner's former `_weighted_sample`, frozen
    keyed = ((rng.random() ** (1.0 / w), pid) for pid, w in items if w > 0)
    return [pid for _, pid in heapq.nlargest(k, keyed)]


def _old_sampler_draw(rng, rows, weights, n):  # EpochSampler.next's former weighted branch, frozen
    keys = [rng.random() ** (1.0 / w) if w > 0 else -1.0 for w in weights]
    top = sorted(range(len(keys)), key=keys.__getitem__, reverse=True)[:n]
    return [rows[i] for i in top]


# The last weight makes every key underflow to 0.0, so all keys tie: the tie-break is compared too.
WEIGHT_SETS = [[0.5, 1.0, 0.25, 2.0, 0.0, 1.0, 0.75, 0.1], [1.0] * 12, [1e-300] * 6]


@pytest.mark.parametrize("seed", [0, 1, 7, 1234])
@pytest.mark.parametrize("weights", WEIGHT_SETS)
@pytest.mark.parametrize("k", [1, 3, 20])
def test_same_draws_as_the_former_miner_sampler(seed, weights, k):
    items = [(f"p{i:02d}", w) for i, w in enumerate(weights)]
    new_rng, old_rng = random.Random(seed), random.Random(seed)
    for _ in range(5):  # successive draws: the RNG advances the same way too
        assert weighted_sample(new_rng, items, k) == _old_miner_draw(old_rng, items, k)
    assert new_rng.getstate() == old_rng.getstate()


@pytest.mark.parametrize("seed", [0, 1, 7, 1234])
@pytest.mark.parametrize("weights", [w for w in WEIGHT_SETS if min(w) > 0])
@pytest.mark.parametrize("n", [1, 3, 20])
def test_epoch_sampler_weighted_batches_are_unchanged(seed, weights, n):
    rows = [{"id": i} for i in range(len(weights))]
    sampler, old_rng = EpochSampler(rows, seed=seed, weights=weights), random.Random(seed)
    for _ in range(5):
        assert sampler.next(n) == _old_sampler_draw(old_rng, rows, weights, n)


def test_weighted_sample_skips_non_positive_weights_and_draws_without_repeats():
    rng = random.Random(0)
    for _ in range(50):
        got = weighted_sample(rng, [("a", 1.0), ("b", 0.0), ("c", 3.0), ("d", -1.0)], 4)
        assert sorted(got) == ["a", "c"]
    counts = {"a": 0, "c": 0}
    for _ in range(2000):
        counts[weighted_sample(rng, [("a", 1.0), ("c", 3.0)], 1)[0]] += 1
    assert 0.70 < counts["c"] / 2000 < 0.80  # P(c first) = 3 / 4


@pytest.mark.parametrize("weights", [[1.0, 0.0], [1.0], [1.0, -2.0]])
def test_epoch_sampler_rejects_weights_that_do_not_fit_the_rows(weights):
    with pytest.raises(ValueError, match=r"sampler weights must be one value > 0 per row \(2 rows\)"):
        EpochSampler([{"id": 0}, {"id": 1}], weights=weights)
