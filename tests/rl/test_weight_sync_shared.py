"""The object-store form of the weights (rl.weight_sync.to_shared / from_shared): the same values and
dtypes back, bfloat16 included, and readers on a node share the store's memory instead of copying."""

from __future__ import annotations

import numpy as np
import torch

from rl.weight_sync import from_shared, is_shared, to_shared


def test_round_trip_keeps_values_and_dtypes():
    weights = {"a": torch.randn(3, 4), "b": torch.randn(5).to(torch.bfloat16), "c": torch.arange(6).reshape(2, 3),
               "d": torch.randn(2, 2, dtype=torch.float64)}
    shared = to_shared(weights)
    assert is_shared(shared) and not is_shared(weights) and not is_shared({})
    assert all(isinstance(arr, np.ndarray) for _, arr in shared.values())
    back = from_shared(shared)
    for name, t in weights.items():
        assert back[name].dtype == t.dtype and torch.equal(back[name], t), name
    # Views, not copies: the shared form aliases the tensors' memory.
    assert np.shares_memory(shared["a"][1], weights["a"].numpy())


def test_readers_share_the_object_stores_memory(ray_session):
    ray = ray_session
    ref = ray.put(to_shared({"w": torch.ones(1000)}))
    first, second = ray.get(ref), ray.get(ref)
    a, b = from_shared(first)["w"], from_shared(second)["w"]
    assert torch.equal(a, torch.ones(1000))
    assert a.data_ptr() == b.data_ptr()  # one copy in shared memory, read in place by both
