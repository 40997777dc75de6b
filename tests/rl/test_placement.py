"""Explicit placement: the bundles each role asks for, what a shortfall message names, and a real
Ray refusing a placement it cannot hold (the groups asked for are released again)."""

from __future__ import annotations

import pytest

from rl.config import ConfigError, load_config
from rl.placement import PlacementError, Role, reserve, roles, shortfall

ONE_NODE = [{"CPU": 2.0, "memory": 2.0**33, "node:10.0.0.1": 1.0}]
TOTAL = {"CPU": 2.0, "memory": 2.0**33, "node:10.0.0.1": 1.0}


def test_default_config_reserves_cpus_only_and_leaves_the_reward_actor_free():
    by_name = {r.name: r for r in roles(load_config("configs/tiny_cpu.yaml"))}
    assert by_name["rollout"].bundle() == {"CPU": 0.5} and by_name["rollout"].count == 2
    assert by_name["trainer"].bundle() == {"CPU": 1.0} and by_name["trainer"].count == 1
    assert by_name["reward"].bundle() == {}  # no CPU, GPU or node asked for: nothing to reserve
    assert all(r.strategy == "pack" for r in by_name.values())


def test_a_node_resource_pins_every_bundle_and_counts_as_a_need():
    role = Role("trainer", 2, 1.0, 1.0, "spread", "node_b")
    assert role.bundle() == {"CPU": 1.0, "GPU": 1.0, "node_b": 0.001}
    assert Role("reward", 1, 0.0, 0.0, "pack", "node_b").bundle() == {"node_b": 0.001}


def test_shortfall_names_a_resource_no_node_has():
    gpu = Role("trainer", 2, 1.0, 1.0, "pack")
    total = {**TOTAL, "CPU_group_0_80a6f92ee24a420579dc5825aa1901000000": 0.5}  # another group's bundle
    text = shortfall([gpu], [gpu], total, TOTAL, ONE_NODE)
    assert "missing GPU: no node has it (the run asks for 2)" in text
    assert text.count("GPU") == 2 and "_group_" not in text  # said once, and no reserved-bundle resources
    assert "trainer: 2 x {CPU: 1, GPU: 1} (pack)" in text


def test_shortfall_compares_the_total_ask_with_the_cluster():
    engines, trainer = Role("rollout", 4, 0.5, 0.0, "pack"), Role("trainer", 1, 1.0, 0.0, "pack")
    text = shortfall([trainer], [engines, trainer], TOTAL, {"CPU": 0.0}, ONE_NODE)
    assert "missing CPU: the run asks for 3, the cluster has 2 (0 free)" in text


def test_shortfall_names_a_bundle_no_single_node_can_hold():
    nodes = [{"CPU": 2.0, "node_b": 1.0}, {"CPU": 2.0}]
    big = Role("trainer", 1, 3.0, 0.0, "pack")
    assert "missing CPU for trainer: one bundle asks 3, the largest node has 2" in shortfall(
        [big], [big], {"CPU": 4.0, "node_b": 1.0}, {"CPU": 4.0}, nodes)
    pinned = Role("trainer", 2, 2.0, 0.0, "strict_pack", "node_b")
    assert "missing CPU for trainer: its bundles ask 4, the largest nodes with node_b has 2" in shortfall(
        [pinned], [pinned], {"CPU": 4.0, "node_b": 1.0}, {"CPU": 4.0}, nodes)
    missing = Role("rollout", 1, 0.5, 0.0, "pack", "gpu_node")
    assert "missing gpu_node: no node has it" in shortfall([missing], [missing], {"CPU": 4.0}, {"CPU": 4.0}, nodes)


def test_shortfall_says_when_others_hold_what_the_run_needs():
    role = Role("trainer", 1, 2.0, 0.0, "pack")
    text = shortfall([role], [role], TOTAL, {"CPU": 0.5}, ONE_NODE)
    assert "not free" in text and "CPU 2 of which 0.5 free" in text


@pytest.mark.parametrize("override, key", [
    ("train.node_resource=CPU", "train.node_resource"),
    ("rollout.node_resource=''", "rollout.node_resource"),
    ("train.placement=everywhere", "train.placement"),
    ("train.gpus=-1", "train.gpus"),
])
def test_bad_placement_keys_are_refused_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_several_trainers_must_reserve_something_and_train_synchronously():
    with pytest.raises(ConfigError, match=r"train\.num_actors"):
        load_config(None, ["train.num_actors=2", "train.cpus=0", "rollout.max_staleness=0"])
    # Asynchronous training is the default; the error says how to train with several trainers.
    with pytest.raises(ConfigError, match=r"train\.num_actors.*set rollout\.max_staleness=0"):
        load_config(None, ["train.num_actors=2"])
    with pytest.raises(ConfigError, match=r"train\.num_actors.*max_staleness = 2"):
        load_config(None, ["train.num_actors=2", "rollout.max_staleness=2"])
    assert load_config(None, ["train.num_actors=2", "rollout.max_staleness=0"]).train.num_actors == 2


def test_an_unsatisfiable_placement_fails_naming_the_resource_and_releases_its_groups(ray_session):
    from ray.util import placement_group_table

    specs = [Role("rollout", 1, 0.5, 0.0, "pack"), Role("trainer", 2, 1.0, 1.0, "pack", "trainer_node")]
    before = {g for g, t in placement_group_table().items() if t["state"] != "REMOVED"}
    with pytest.raises(PlacementError) as err:
        reserve(specs, timeout_s=1.0)
    text = str(err.value)
    assert "missing GPU: no node has it (the run asks for 2)" in text
    assert "missing trainer_node: no node has it" in text and "run.placement_timeout_s = 1 s" in text
    assert "waiting for trainer: 2 x" in text  # the rollout group, which the node holds, is not named
    assert {g for g, t in placement_group_table().items() if t["state"] != "REMOVED"} == before
    placement = reserve(specs[:1], timeout_s=30.0)  # what the node can hold is reserved
    try:
        assert len(placement.bundle_nodes("rollout")) == 1
        assert placement.options("rollout", 0)["num_cpus"] == 0.5
    finally:
        placement.release()


@pytest.mark.parametrize("name, nodes", [("qwen3_30b_a3b_1node", 1), ("qwen3_30b_a3b_2node", 2)])
def test_the_gpu_configs_load_and_ask_for_one_node_of_eight_gpus_per_eight(name, nodes):
    specs = roles(load_config(f"configs/{name}.yaml"))
    gpus = sum(r.count * r.gpus for r in specs)
    assert gpus == 8 * nodes
    assert {r.node_resource for r in specs if r.gpus} == ({None} if nodes == 1 else {"rollout_node", "train_node"})
