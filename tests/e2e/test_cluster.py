"""The driver on a Ray cluster of two nodes (127.0.0.1, `ray start --head` + `ray start --address`,
each with its own temp dir and a custom resource naming it): the engines sit on the node the placement
pins them to, the two data-parallel trainers one per node, and a placement the cluster cannot hold
stops the run naming what is missing. The cluster is torn down even when a job fails."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.e2e.cluster import ROOT, LocalCluster

pytestmark = pytest.mark.slow

TINY_RUN = [
    "run.steps=2", "data.tasks=[arithmetic]", "data.task_weights=[1]", "data.max_digits=1", "data.train_prompts=64",
    "data.heldout_prompts=8", "train.prompts_per_step=4", "rollout.samples_per_prompt=4", "rollout.max_new_tokens=6",
    "train.drop_zero_variance_groups=false", "eval.before=false", "eval.after=false", "monitor.ray_metrics=false",
    "monitor.tensorboard=false", "monitor.progress=lines",
    "rollout.max_staleness=0",  # several trainers: the synchronous loop
]
# Where each role is asked to go: both engines on the second node, one trainer on each node.
PLACED = ["rollout.num_actors=2", "rollout.cpus_per_actor=0.5", "rollout.node_resource=second_node",
          "train.num_actors=2", "train.cpus=1", "train.placement=strict_spread"]

# Run in a subprocess: a client of the cluster in the test process would outlive its teardown.
WHERE_ACTORS_RAN = """
import json, sys, ray
from ray.util.state import list_actors
ray.init(address=sys.argv[1], log_to_driver=False)
nodes = {n["NodeID"]: sorted(k for k in n["Resources"] if k.endswith("_node")) for n in ray.nodes()}
actors = list_actors(address=sys.argv[1], limit=1000, detail=True)  # other Rays may run on this machine
print(json.dumps([[a.class_name, a.name, a.state, nodes.get(a.node_id)] for a in actors]))
"""


@pytest.fixture(scope="module")
def cluster():
    cluster = LocalCluster([{"head_node": 1}, {"second_node": 1}], cpus=2)
    try:
        yield cluster
    finally:
        cluster.stop()
    assert not cluster.processes()


def _driver(cluster: LocalCluster, *overrides: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "run_rl.py", f"run.ray_address={cluster.address}", *TINY_RUN, *overrides],
                          cwd=ROOT, env=cluster.env, capture_output=True, text=True, timeout=timeout)


def test_engines_and_trainers_sit_where_the_placement_puts_them(cluster, tiny_checkpoint, tmp_path):
    run_dir = tmp_path / "run"
    proc = _driver(cluster, f"model.path={tiny_checkpoint}", f"run.dir={run_dir}", *PLACED)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["policy_version"] for r in lines] == [1.0, 2.0]
    for r in lines:  # every sync: bytes and seconds per engine
        assert r["sync/bytes_per_engine"] > 0 and {"sync/seconds/engine0", "sync/seconds/engine1"} <= set(r)
        assert r["rollout/logprob_abs_diff_max"] < 1e-4  # the engines hold rank 0's weights

    query = subprocess.run([sys.executable, "-c", WHERE_ACTORS_RAN, cluster.address],
                           env={**cluster.env, "RAY_ADDRESS": cluster.address},
                           capture_output=True, text=True, timeout=300)
    assert query.returncode == 0, query.stderr[-3000:]
    placed: dict[str, list] = {}
    for class_name, name, _, node in json.loads(query.stdout.strip().splitlines()[-1]):
        placed.setdefault(class_name, []).append((name, node))
    assert sorted(placed["RolloutWorker"]) == [("rollout-0", ["second_node"]), ("rollout-1", ["second_node"])]
    assert sorted(placed["TrainerWorker"]) == [("trainer", ["head_node"]), ("trainer-1", ["second_node"])] or \
        sorted(placed["TrainerWorker"]) == [("trainer", ["second_node"]), ("trainer-1", ["head_node"])]


@pytest.mark.parametrize("override, missing", [
    ("train.gpus=1", "missing GPU: no node has it (the run asks for 1)"),
    ("rollout.node_resource=gpu_node", "missing gpu_node: no node has it"),
    # 3 + 1 CPUs fit the cluster's 4 in total (the check before Ray starts passes), not one node's 2.
    ("rollout.num_actors=1 rollout.cpus_per_actor=3",
     "missing CPU for rollout: one bundle asks 3, the largest node has 2"),
])
def test_a_placement_the_cluster_cannot_hold_stops_the_run_naming_what_is_missing(cluster, tiny_checkpoint, tmp_path,
                                                                                  override, missing):
    proc = _driver(cluster, f"model.path={tiny_checkpoint}", f"run.dir={tmp_path / 'run'}",
                   "run.placement_timeout_s=5", *override.split(), timeout=300)
    assert proc.returncode != 0
    assert "the cluster cannot place this run within run.placement_timeout_s = 5 s" in proc.stderr
    assert missing in proc.stderr, proc.stderr[-3000:]
