"""Explicit placement: every role's actors in bundles that a Ray placement group reserves up front.

A role (rollout engines, reward actors, trainers) asks for `count` bundles of {CPU, GPU} laid out by
a strategy (pack, spread, strict_pack, strict_spread) and, optionally, only on nodes that have a
given Ray resource (a custom one from `ray start --resources`, or `node:<IP>`). All roles' groups
are reserved before any actor starts; a cluster that cannot hold them within
`run.placement_timeout_s` stops the run with `PlacementError`, whose message names each missing
resource, how much the run asks for and what the cluster has, instead of Ray's silent wait.

A role whose bundles would be empty (no CPU, no GPU, no node resource, e.g. the default reward
actor) reserves nothing and is scheduled as Ray likes.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from rl.config import Config

# The resources Ray derives from reserved bundles (CPU_group_<pg id>, bundle_group_0_<pg id>, ...).
_GROUP_RESOURCE = re.compile(r"_group_(\d+_)?[0-9a-f]{16,}$")
# A bundle asks for this much of a node resource: enough to pin it there, never enough to run out.
NODE_SHARE = 0.001


class PlacementError(RuntimeError):
    """The cluster cannot hold the placement the config asks for; the message says what is missing."""


@dataclass(frozen=True)
class Role:
    name: str
    count: int
    cpus: float
    gpus: float
    strategy: str
    node_resource: str | None = None

    def bundle(self) -> dict[str, float]:
        """One actor's reservation: its CPUs, GPUs and a sliver of the node resource it must sit on."""
        wanted = {"CPU": self.cpus, "GPU": self.gpus, self.node_resource or "": NODE_SHARE}
        return {k: v for k, v in wanted.items() if k and v > 0}

    def describe(self) -> str:
        on = f" on nodes with {self.node_resource}" if self.node_resource else ""
        return f"{self.name}: {self.count} x {_format(self.bundle())} ({self.strategy}{on})"


def roles(cfg: Config) -> list[Role]:
    """The config's roles: rollout engines, reward actors, trainers."""
    r, w, t = cfg.rollout, cfg.reward, cfg.train
    return [
        Role("rollout", r.num_actors, r.cpus_per_actor, r.gpus_per_actor, r.placement, r.node_resource),
        Role("reward", w.num_actors, w.cpus_per_actor, w.gpus_per_actor, w.placement, w.node_resource),
        Role("trainer", t.num_actors, t.cpus, t.gpus, t.placement, t.node_resource),
    ]


@dataclass
class Placement:
    """The reserved groups by role name (None: the role reserves nothing)."""

    roles: dict[str, Role]
    groups: dict[str, PlacementGroup | None]

    def options(self, role: str, index: int) -> dict[str, Any]:
        """`.options(...)` of actor `index` of `role`: its resources, in its bundle when it has one."""
        spec, group = self.roles[role], self.groups[role]
        opts: dict[str, Any] = {"num_cpus": spec.cpus, "num_gpus": spec.gpus}
        if group is not None:
            opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=index)
        return opts

    def bundle_nodes(self, role: str) -> list[str]:
        """The node id holding each bundle of `role` (empty when the role reserves nothing)."""
        group = self.groups[role]
        if group is None:
            return []
        table = ray.util.placement_group_table(group)
        return [table["bundles_to_node_id"][i] for i in range(len(table["bundles"]))]

    def release(self) -> None:
        for group in self.groups.values():
            if group is not None:
                remove_placement_group(group)
        self.groups = {name: None for name in self.groups}


def reserve(specs: list[Role], timeout_s: float) -> Placement:
    """Reserve every role's bundles; `PlacementError` naming what is missing when they are not all
    reserved within `timeout_s` (the groups asked for are removed again)."""
    groups = {
        s.name: placement_group([s.bundle()] * s.count, strategy=s.strategy.upper(), name=f"rl-{s.name}")
        if s.bundle() else None
        for s in specs
    }
    placement = Placement({s.name: s for s in specs}, groups)
    pending = {name: g.ready() for name, g in groups.items() if g is not None}
    deadline = time.monotonic() + timeout_s
    for name, ready in pending.items():
        try:
            ray.get(ready, timeout=max(0.0, deadline - time.monotonic()))
        except ray.exceptions.GetTimeoutError:
            done, _ = ray.wait(list(pending.values()), num_returns=len(pending), timeout=0)
            late = [s for s in specs if s.name in pending and pending[s.name] not in done]
            message = shortfall(late, specs, ray.cluster_resources(), ray.available_resources(), _nodes())
            placement.release()
            raise PlacementError(f"the cluster cannot place this run within run.placement_timeout_s = "
                                 f"{timeout_s:g} s; {message}") from None
    return placement


def _nodes() -> list[dict[str, float]]:
    return [node["Resources"] for node in ray.nodes() if node.get("Alive")]


def shortfall(late: list[Role], specs: list[Role], total: dict[str, float], available: dict[str, float],
              nodes: list[dict[str, float]]) -> str:
    """What keeps the `late` roles from being placed, in words: per resource, what the run asks for
    (all `specs`) against the cluster's total and free amounts, and per role, bundles no node can hold."""
    asks: dict[str, float] = {}
    for s in specs:
        for key, amount in s.bundle().items():
            asks[key] = asks.get(key, 0.0) + amount * s.count
    lines = [f"waiting for {'; '.join(s.describe() for s in late)}"]
    for key, amount in asks.items():
        have, free = total.get(key, 0.0), available.get(key, 0.0)
        if have == 0:
            lines.append(f"missing {key}: no node has it (the run asks for {amount:g})")
        elif amount > have + 1e-9:
            lines.append(f"missing {key}: the run asks for {amount:g}, the cluster has {have:g} ({free:g} free)")
    for s in late:
        lines += _per_node(s, nodes)
    if len(lines) == 1:
        lines.append("the cluster has enough in total but not free: other jobs hold "
                     + ", ".join(f"{k} {total.get(k, 0):g} of which {available.get(k, 0):g} free" for k in asks))
    plain = {k: v for k, v in total.items() if not k.startswith("node:") and not _GROUP_RESOURCE.search(k)}
    lines.append(f"the cluster has {_format(plain)} on {len(nodes)} node(s)")
    return "; ".join(lines)


def _per_node(spec: Role, nodes: list[dict[str, float]]) -> list[str]:
    """A role's bundles that fit on no single eligible node (or, strict_pack, not all on one)."""
    bundle = spec.bundle()
    eligible = [n for n in nodes if not spec.node_resource or n.get(spec.node_resource, 0) > 0]
    if spec.node_resource and not eligible:
        return []  # already said: no node has the resource
    need = {k: v * spec.count for k, v in bundle.items()} if spec.strategy == "strict_pack" else bundle
    for key, amount in need.items():
        if not any(n.get(key) for n in nodes):
            continue  # already said: no node has it
        best = max((n.get(key, 0.0) for n in eligible), default=0.0)
        if amount > best + 1e-9:
            where = f"nodes with {spec.node_resource}" if spec.node_resource else "node"
            return [f"missing {key} for {spec.name}: {'its bundles ask' if need is not bundle else 'one bundle asks'} "
                    f"{amount:g}, the largest {where} has {best:g}"]
    if spec.strategy == "strict_spread" and len(eligible) < spec.count:
        return [f"missing nodes for {spec.name}: strict_spread needs {spec.count} nodes, {len(eligible)} qualify"]
    return []


def _format(resources: dict[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {_amount(k, v)}" for k, v in sorted(resources.items())) + "}"


def _amount(key: str, value: float) -> str:
    return f"{value / 2**30:.1f} GiB" if key in ("memory", "object_store_memory") else f"{value:g}"
