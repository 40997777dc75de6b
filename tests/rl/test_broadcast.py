"""The weight-broadcast interface: what one sync reports, and the GPU path's refusal on this build."""

from __future__ import annotations

import pytest

from rl.broadcast import ObjectStoreTransport, SyncReport, TransportError, make_transport


def test_a_sync_reports_bytes_and_seconds_per_engine():
    report = SyncReport([{"bytes": 400.0, "fetch_seconds": 0.5, "load_seconds": 0.25},
                         {"bytes": 400.0, "fetch_seconds": 0.125, "load_seconds": 1.0}], publish_seconds=2.0)
    assert report.metrics() == {
        "time/weight_sync_engine": 1.0, "sync/publish_seconds": 2.0, "sync/fetch_seconds_max": 0.5, "sync/bytes_per_engine": 400.0,
        "sync/seconds/engine0": 0.75, "sync/seconds/engine1": 1.125,
    }


def test_the_transport_is_chosen_by_name_and_nccl_says_it_is_not_available():
    assert isinstance(make_transport("object_store"), ObjectStoreTransport)
    with pytest.raises(TransportError, match="rollout.weight_transport=nccl is not available"):
        make_transport("nccl")
