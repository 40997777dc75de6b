"""Shared fixtures: one tiny bootstrapped MoE checkpoint and one Ray instance for the whole session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# A short warm start on one-digit sums (the real bootstrap code, ~10 s on 2 cores): enough for the
# policy to solve some prompts, so GRPO groups have reward variance and updates are non-zero.
TINY_SPEC = dict(seed=0, sft_steps=150, sft_examples=4000, max_digits=1, answer_noise=0.0,
                 tasks=("arithmetic",), task_weights=(1.0,))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> str:
    from rl.bootstrap import BootstrapSpec, bootstrap

    out = tmp_path_factory.mktemp("ckpt") / "tiny-moe"
    return str(bootstrap(out, BootstrapSpec(**TINY_SPEC), threads=2))


@pytest.fixture(scope="session")
def ray_session():
    import ray

    # Logical CPUs: the tests place a trainer and up to two rollout engines, which take turns.
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
