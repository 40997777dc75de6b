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
    from data_mining.bootstrap import BootstrapSpec, bootstrap

    out = tmp_path_factory.mktemp("ckpt") / "tiny-moe"
    return str(bootstrap(out, BootstrapSpec(**TINY_SPEC), threads=2))


@pytest.fixture(scope="session")
def ray_session():
    import ray

    # Logical CPUs: the tests place a trainer and up to two rollout engines, which take turns.
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> str:
    """A randomly initialised 2-layer, 4-expert Qwen3-MoE saved as a checkpoint (no tokenizer, no training)."""
    from data_mining.bootstrap import BootstrapSpec, build_model

    spec = BootstrapSpec(hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1, num_experts=4)
    path = tmp_path_factory.mktemp("moe") / "m"
    build_model(spec, vocab_size=64, eos_id=0).save_pretrained(path)
    return str(path)
