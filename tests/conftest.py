"""Shared fixtures: one tiny bootstrapped MoE checkpoint and one Ray instance for the whole session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# A few SFT steps: enough for a real checkpoint made by the real bootstrap code, fast on 2 cores.
TINY_SFT_STEPS = 20


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> str:
    from rl.bootstrap import BootstrapSpec, bootstrap

    out = tmp_path_factory.mktemp("ckpt") / "tiny-moe"
    return str(bootstrap(out, BootstrapSpec(seed=0, sft_steps=TINY_SFT_STEPS, sft_examples=2000), threads=1))


@pytest.fixture(scope="session")
def ray_session():
    import ray

    # Logical CPUs: the tests place a trainer and up to two rollout engines, which take turns.
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
