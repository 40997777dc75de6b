"""Moving weights from the trainers to the engines: one interface, a transport per kind of link.

`rollout.weight_transport` picks the transport:

- `object_store` (the default; CPU and across nodes): rank 0's trainer returns its Hugging Face state
  dict as a Ray object, stored once in its node's object store; every engine fetches that object
  itself (`RolloutWorker.receive_weights`, Ray pulls it once per node) and writes it in place
  (`rl.weight_sync`). The driver passes only the object's reference, never the tensors, so there is
  no copy per engine through the driver. The state dict travels as numpy arrays
  (`rl.weight_sync.to_shared`), which engines on a node read from the store's shared memory
  without a copy of their own (torch tensors would be unpickled by each).
- `nccl` (GPU): a broadcast over an NCCL group of rank 0 and the engines, through vLLM's
  weight-transfer engines. Not available in this build: vLLM's weight-transfer engines do not run on
  CPU and no GPU machine was at hand to test one, so choosing it stops the run at start-up.

Every sync reports the seconds until rank 0's weights were published and, per engine, the bytes
received and the seconds spent fetching and loading.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

import ray


class TransportError(RuntimeError):
    """The transport the config names cannot run here."""


@dataclass
class SyncReport:
    """One sync: per engine (in engine order), what `RolloutWorker.receive_weights` measured."""

    engines: list[dict[str, float]]  # {"bytes", "fetch_seconds", "load_seconds"} per engine
    publish_seconds: float = 0.0  # until rank 0's weights were ready to fetch

    def metrics(self) -> dict[str, float]:
        """`time/weight_sync_engine` (the slowest engine's load, as before), the publishing seconds,
        the slowest fetch, the bytes one engine received, and every engine's fetch + load seconds."""
        out = {
            "time/weight_sync_engine": max(e["load_seconds"] for e in self.engines),
            "sync/publish_seconds": self.publish_seconds,
            "sync/fetch_seconds_max": max(e["fetch_seconds"] for e in self.engines),
            "sync/bytes_per_engine": self.engines[0]["bytes"],
        }
        for i, e in enumerate(self.engines):
            out[f"sync/seconds/engine{i}"] = e["fetch_seconds"] + e["load_seconds"]
        return out


class WeightTransport(Protocol):
    """How rank 0's weights reach every engine; `broadcast` returns once every engine holds them."""

    def broadcast(self, trainer: Any, engines: list[Any], version: int, timeout: float | None = None) -> SyncReport:
        """... within `timeout` s (None: however long it takes; past it `rl.supervise.ActorStalled`)."""


class ObjectStoreTransport:
    """Published once in Ray's object store by the trainer, fetched by every engine."""

    def broadcast(self, trainer: Any, engines: list[Any], version: int, timeout: float | None = None) -> SyncReport:
        from rl.supervise import get_within

        start = time.perf_counter()
        ref = trainer.shared_weights.remote()
        # Stored in rank 0's object store; nothing is copied here.
        get_within([ref], timeout, "publishing the trainer's weights", fetch=False)
        published = time.perf_counter() - start
        # In a list, so that Ray hands the engines the reference and each one times its own fetch.
        received = get_within([e.receive_weights.remote([ref], version) for e in engines], timeout, "a weight sync")
        return SyncReport(received, published)


class NcclTransport:
    """The GPU path's place behind the same interface (see the module docstring)."""

    def __init__(self) -> None:
        raise TransportError(
            "rollout.weight_transport=nccl is not available: vLLM's weight-transfer engines need GPUs and this "
            "build has only been run on CPU; use rollout.weight_transport=object_store")

    def broadcast(self, trainer: Any, engines: list[Any], version: int, timeout: float | None = None) -> SyncReport:
        raise NotImplementedError


TRANSPORTS: dict[str, type] = {"object_store": ObjectStoreTransport, "nccl": NcclTransport}


def make_transport(name: str) -> WeightTransport:
    """The transport `rollout.weight_transport` names."""
    return TRANSPORTS[name]()
