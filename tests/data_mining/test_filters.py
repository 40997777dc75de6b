from data_mining.filters import filter_groups, zero_variance_filter
from rl.types import Sample


def _group(pid: str, rewards: list[float]) -> list[Sample]:
    return [Sample(pid, "math", "", [1], reward=r, passed=r >= 1.0) for r in rewards]


def test_verdicts_carry_reasons():
    assert zero_variance_filter(_group("a", [1.0, 0.0])).keep
    solved = zero_variance_filter(_group("b", [1.0, 1.0]))
    failed = zero_variance_filter(_group("c", [0.0, 0.0]))
    assert (solved.keep, solved.reason) == (False, "all_passed")
    assert (failed.keep, failed.reason) == (False, "all_same_reward")


def test_filter_groups_keeps_only_learnable_groups_and_counts_reasons():
    samples = _group("a", [1.0, 0.0, 1.0]) + _group("b", [1.0, 1.0]) + _group("c", [0.0, 0.0]) + _group("d", [0.0, 0.5])
    kept, stats = filter_groups(samples)
    assert [s.prompt_id for s in kept] == ["a", "a", "a", "d", "d"]
    assert stats["filter/groups/learnable"] == 2.0
    assert stats["filter/groups/all_passed"] == 1.0 and stats["filter/groups/all_same_reward"] == 1.0
    assert stats["filter/zero_variance_fraction"] == 0.5


def test_all_uniform_batch_keeps_nothing():
    kept, stats = filter_groups(_group("a", [0.0, 0.0]))
    assert kept == [] and stats["filter/zero_variance_fraction"] == 1.0
