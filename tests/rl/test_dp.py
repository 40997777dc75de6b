"""Data parallel: two gloo processes on CPU update the policy exactly as one process does on the
same global batch (advantages over the whole batch, loss normalised by the global token count,
DDP's gradient average undone by the process-count scale, one scheduler step per optimiser step)."""

from __future__ import annotations

import os
import socket
import time

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from data_mining.bootstrap import BootstrapSpec, build_model
from rl.config import TrainConfig
from rl.trainer import TrainerWorker
from rl.types import Sample

LAYERS, EXPERTS, TOP_K = 2, 8, 2

# name -> (model family, train config, samples carry routed experts (replayed), number of groups).
# Odd slice sizes give the processes different numbers of micro-batches; `single` has slices of
# one sample, so the second process has no share and runs the zero-weighted backward.
# Routing replay is on (samples carry random routed experts) in "replay", "kl_aux_tis" and "single".
CASES = {
    "replay": ("qwen3_moe", dict(micro_batch_samples=2, routing_replay=True), True, 3),
    "two_updates": (
        "qwen3_moe",
        dict(micro_batch_samples=2, updates_per_step=2, routing_replay=False, warmup_steps=3, aux_loss_coef=0.0),
        False, 3,
    ),
    "shared_expert_seq_mean": (
        "qwen2_moe", dict(micro_batch_samples=3, loss_agg="seq-mean-token-mean", routing_replay=False), False, 3,
    ),
    # The balance loss is per micro-batch, so it only adds up the same with the same micro-batches.
    "kl_aux_tis": (
        "qwen3_moe",
        dict(micro_batch_samples=1, kl_coef=0.1, aux_loss_coef=0.01, tis_cap=1.5, routing_replay=True), True, 2,
    ),
    "single": ("qwen3_moe", dict(micro_batch_samples=2, updates_per_step=3, routing_replay=True), True, 1),
}


def _cfg(case: str) -> TrainConfig:
    return TrainConfig(lr=1e-4, lr_schedule="constant", **CASES[case][1])


def _samples(case: str) -> list[Sample]:
    """`groups` prompt groups of 3 completions of different lengths; rewards with spread in each group."""
    _, _, routed, groups = CASES[case]
    rng = np.random.default_rng(0)
    out = []
    for g in range(groups):
        prompt = rng.integers(1, 64, size=3 + g).tolist()
        for k, reward in enumerate((1.0, 0.0, 0.5)):
            completion = rng.integers(1, 64, size=2 + (3 * g + 2 * k) % 6).tolist() + [0]
            sample = Sample(f"p{g}", ("math", "code")[g % 2], "", prompt, completion_ids=completion, reward=reward)
            sample.rollout_logprobs = (-4.0 + 0.1 * rng.standard_normal(len(completion))).tolist()
            if routed:  # distinct random experts per position and layer: replay forces unusual routes
                positions = len(prompt) + len(completion) - 1
                choice = np.argsort(rng.random((positions, LAYERS, EXPERTS)), axis=-1)[..., :TOP_K]
                sample.routed_experts = choice.astype(np.int16)
            out.append(sample)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(model_dir: str, case: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict]:
    """(weights before, weights after, metrics) of one train_step."""
    trainer = TrainerWorker(model_dir, _cfg(case), seed=0, max_new_tokens=8, total_steps=2)
    start = {k: v.clone() for k, v in trainer.weights().items()}
    stats = trainer.train_step(_samples(case))
    return start, {k: v.clone() for k, v in trainer.weights().items()}, stats


def _rank(rank: int, world: int, port: int, dirs: dict[str, str], out: str) -> None:
    """One data-parallel process: every case's step, results saved per case and rank."""
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1",
    )
    for case in CASES:
        _, weights, stats = _run(dirs[CASES[case][0]], case)
        assert torch.distributed.get_world_size() == world
        torch.save({"weights": weights, "stats": stats}, os.path.join(out, f"{case}.{rank}.pt"))


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> dict[str, str]:
    dirs = {}
    for family in ("qwen3_moe", "qwen2_moe"):
        spec = BootstrapSpec(
            family=family, hidden_size=64, num_layers=LAYERS, num_heads=2, num_kv_heads=1,
            num_experts=EXPERTS, experts_per_token=TOP_K, moe_intermediate_size=32,
        )
        path = tmp_path_factory.mktemp(family) / "m"
        build_model(spec, vocab_size=64, eos_id=0).save_pretrained(path)
        dirs[family] = str(path)
    return dirs


@pytest.fixture(scope="module")
def two_process_runs(model_dirs, tmp_path_factory) -> str:
    """Runs every case once in two spawned gloo processes; returns the folder of their results."""
    out = str(tmp_path_factory.mktemp("dp"))
    ctx = mp.start_processes(
        _rank, args=(2, _free_port(), model_dirs, out), nprocs=2, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + 300
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("data-parallel processes did not finish in 300 s")
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_two_processes_match_one_process(case, model_dirs, two_process_runs):
    start, one, one_stats = _run(model_dirs[CASES[case][0]], case)
    ranks = [torch.load(os.path.join(two_process_runs, f"{case}.{r}.pt")) for r in range(2)]
    for name in one:
        assert torch.equal(ranks[0]["weights"][name], ranks[1]["weights"][name]), name  # DDP kept them in sync
    moved = max((one[k] - start[k]).abs().max().item() for k in one)
    diff = max((one[k] - ranks[0]["weights"][k]).abs().max().item() for k in one)
    print(f"{case}: max update {moved:.2e}, max |1-process - 2-process| {diff:.2e}")
    assert moved > 5e-5  # the step did something, so agreement below is not vacuous
    assert diff < 1e-5
    two_stats = ranks[0]["stats"]
    for key in ("train/lr", "train/advantage_abs_mean", "train/grad_norm", "rollout/logprob_abs_diff_max",
                "rollout/logprob_abs_diff_mean", "moe/router_entropy", "moe/load_violation_max/math"):
        assert two_stats[key] == pytest.approx(one_stats[key], rel=1e-4, abs=1e-6), key
    np.testing.assert_allclose(two_stats["moe/expert_load"], one_stats["moe/expert_load"], atol=1e-4)
    if "rollout/routing_agreement" in one_stats:
        assert two_stats["rollout/routing_agreement"] == pytest.approx(one_stats["rollout/routing_agreement"])
    assert ranks[1]["stats"]["train/grad_norm"] == two_stats["train/grad_norm"]
