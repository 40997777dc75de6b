"""Every supported MoE family, end to end: router adapters, vLLM parity, exact sync, routing replay.

The checkpoints are tiny random-init models of each family built by transformers itself
(`tests.conftest.build_family_checkpoint`, no hub). The fast tests check each family's router
adapter on the trainer side alone; the slow ones run the real engine and the driver's RL loop.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rl import algos
from rl.policy import CompletionBatch, completion_logprobs
from rl.routing import ADAPTERS, RoutingReplay, UnsupportedFamilyError, check_supported
from rl.types import Sample
from tests.conftest import FAMILY_CONFIGS

FAMILIES = sorted(FAMILY_CONFIGS)


def token_parity(sample):
    """A reward with variance on a random-init policy: 1 when the completion's token ids sum to an even number."""
    from rewards.registry import RewardResult

    return RewardResult(score=float(sum(sample.completion_ids) % 2 == 0))


def _model(family: str):
    import transformers

    from tests.conftest import _COMMON

    config_cls, model_cls, extra = FAMILY_CONFIGS[family]
    config = getattr(transformers, config_cls)(**{**_COMMON, **extra}, vocab_size=64, pad_token_id=0)
    torch.manual_seed(0)
    return getattr(transformers, model_cls)(config).float()


def _batch() -> CompletionBatch:
    samples = [
        Sample("a", "math", "", [5, 6, 7], completion_ids=[8, 9, 0]),
        Sample("b", "math", "", [5], completion_ids=[10]),
        Sample("c", "math", "", [11, 12, 13, 14], completion_ids=[16, 17, 0]),
    ]
    return CompletionBatch.from_samples(samples, pad_id=0)


def _free_forward(model, replay, batch):
    with torch.no_grad(), replay.apply(None):
        return completion_logprobs(model, batch)[0]


# ---- trainer side: one adapter per family ---------------------------------------------------------------


def test_every_built_family_has_an_adapter():
    assert set(FAMILIES) <= set(ADAPTERS)


@pytest.mark.parametrize("family", FAMILIES)
def test_replaying_the_models_own_experts_reproduces_its_gates(family):
    """Forcing the model's own choices through the family's gate formula changes nothing: the
    replayed weights are the router's own (DeepSeek-V3's sigmoid x scale, not a softmax)."""
    model = _model(family).eval()
    replay = RoutingReplay(model, required=True)
    assert replay.num_layers == 2 and replay.top_k == model.config.num_experts_per_tok  # every family: 2 MoE layers
    batch = _batch()
    free = _free_forward(model, replay, batch)
    own = torch.stack([replay.own[layer] for layer in range(replay.num_layers)])  # [layers, N, k]
    with torch.no_grad(), replay.apply(own.flip(-1)):  # same sets, other order
        forced, _ = completion_logprobs(model, batch)
    torch.testing.assert_close(forced, free, atol=1e-6, rtol=0)

    router = replay.gates[0]
    hidden = torch.randn(7, model.config.hidden_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = router(hidden)
        replay._hook(router, out, 0, None)  # records the router's own experts for these rows
        replayed = replay._hook(router, out, 0, replay.own[0][None])
    slot = 0 if family == "llama4_text" else 1  # where the gate weights sit; Llama-4: (dense scores, logits)
    assert replayed[slot].dtype == out[slot].dtype
    torch.testing.assert_close(replayed[slot], out[slot], atol=1e-6, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_forced_experts_run_and_the_router_gets_gradients(family):
    model = _model(family).train()
    replay = RoutingReplay(model, required=True)
    batch = _batch()
    n = batch.input_ids.numel()
    k, e, layers = replay.top_k, replay.num_experts, replay.num_layers
    gen = torch.Generator().manual_seed(0)
    forced = torch.stack([torch.randperm(e, generator=gen)[:k] for _ in range(layers * n)]).reshape(layers, n, k)
    forced[:, 0] = -1  # an unrecorded token keeps its own choice
    free = _free_forward(model, replay, batch)
    own = {layer: v.clone() for layer, v in replay.own.items()}
    with replay.apply(forced):
        logprobs, _ = completion_logprobs(model, batch)
    for layer in range(layers):
        assert torch.equal(replay.used[layer][1:], forced[layer, 1:])
        assert torch.equal(replay.used[layer][0], own[layer][0])
    assert not torch.allclose(logprobs.detach(), free)
    logprobs.sum().backward()
    assert replay.gates[0].weight.grad is not None and replay.gates[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_balance_losses_use_the_familys_probabilities(family):
    """The EP-group loss at group size 1 is the plain auxiliary loss, at group size E the constant 1,
    both on the family's own routing distribution and the experts the forward ran."""
    model = _model(family).eval()
    replay = RoutingReplay(model, required=True)
    batch = _batch()
    _free_forward(model, replay, batch)
    valid = batch.attention_mask.flatten().bool()
    e, k = replay.num_experts, replay.top_k
    for layer, z in replay.logits.items():
        used = replay.used[layer]
        group1 = algos.group_load_balancing_loss(z, k, 1, valid, assignments=used)
        torch.testing.assert_close(group1, algos.load_balancing_loss(z, k, valid, assignments=used))
        torch.testing.assert_close(
            algos.group_load_balancing_loss(z, k, e, valid, assignments=used), torch.tensor(1.0))
        probs = torch.softmax(z, -1)  # [N, E]: what the losses and the router entropy see
        torch.testing.assert_close(probs.sum(-1), torch.ones(z.shape[0]))
        if ADAPTERS[family].scoring == "sigmoid":  # normalised sigmoid scores, as DeepSeek-V3's balance loss
            with torch.no_grad():
                raw = torch.nn.functional.linear(_hidden_into(model, replay, layer, batch), replay.gates[layer].weight)
            s = raw.float().sigmoid()
            torch.testing.assert_close(probs, s / s.sum(-1, keepdim=True), atol=1e-5, rtol=0)


def _hidden_into(model, replay, layer: int, batch) -> torch.Tensor:
    """The hidden states the router of MoE layer `layer` saw in a forward of `batch`. [N, H]"""
    seen = []
    handle = replay.gates[layer].register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    try:
        _free_forward(model, replay, batch)
    finally:
        handle.remove()
    return seen[0].reshape(-1, model.config.hidden_size)


def test_deepseek_v3_replay_skips_the_dense_first_layer():
    model = _model("deepseek_v3")
    replay = RoutingReplay(model, required=True)
    assert model.config.first_k_dense_replace == 1 and model.config.num_hidden_layers == 3
    assert replay.gates == [model.model.layers[1].mlp.gate, model.model.layers[2].mlp.gate]


def test_an_unsupported_family_is_refused_naming_it_and_the_way_out(tmp_path):
    from transformers import PhimoeConfig, PhimoeForCausalLM

    config = PhimoeConfig(vocab_size=64, hidden_size=64, intermediate_size=64, num_hidden_layers=1,
                          num_attention_heads=2, num_key_value_heads=1, num_local_experts=4, pad_token_id=0)
    path = tmp_path / "phimoe"
    PhimoeForCausalLM(config).save_pretrained(path)
    with pytest.raises(UnsupportedFamilyError) as refused:
        check_supported(str(path))  # a checkpoint path or a transformers config
    message = str(refused.value)
    assert "'phimoe' (PhimoeForCausalLM)" in message and "deepseek_v3" in message
    assert "train.routing_replay=false and train.aux_loss_coef=0" in message
    adapter = check_supported(_model("deepseek_v3").config)
    assert adapter is ADAPTERS["deepseek_v3"]
    assert adapter.describe().startswith("deepseek_v3: router layers.N.mlp.gate, sigmoid scores (MLA")

    # The driver refuses it at start, in a dry run too, unless replay and the balance loss are off.
    import run_rl

    base = [f"model.path={path}", f"run.dir={tmp_path}/run", "--dry-run"]
    with pytest.raises(SystemExit, match="'phimoe'.*train.routing_replay=false"):
        run_rl.main(base)
    from rl.config import TrainConfig
    from rl.trainer import TrainerWorker

    with pytest.raises(UnsupportedFamilyError, match="phimoe"):  # replay on: the trainer refuses at start
        TrainerWorker(str(path), TrainConfig())
    trainer = TrainerWorker(str(path), TrainConfig(routing_replay=False, aux_loss_coef=0.0), max_new_tokens=3)
    samples = [Sample("a", "math", "", [5, 6], completion_ids=[8, 9, 0], reward=r, rollout_logprobs=[-4.0] * 3)
               for r in (0.0, 1.0)]
    stats = trainer.train_step(samples)
    assert stats["moe/routing_adapter"] == 0.0  # the metrics say routing is off
    assert "rollout/routing_agreement" not in stats and "moe/expert_load" not in stats


# ---- engine and driver: real vLLM, real Ray -------------------------------------------------------------

PROBES = ["1+3=4", "5-7=-2", "8+9=17", "0-4=-4"]


def _max_gap(a, b) -> float:
    return max(abs(x - y) for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True))


def _driver_config(checkpoint: str, run_dir: Path, dtype: str = "float32"):
    from rl.config import load_config

    return load_config("configs/tiny_cpu.yaml", [
        f"model.path={checkpoint}", f"model.dtype={dtype}", f"run.dir={run_dir}", "run.steps=3",
        "train.prompts_per_step=4", "rollout.samples_per_prompt=4", "rollout.max_new_tokens=6",
        "rollout.num_actors=1", "rollout.cpus_per_actor=1", "train.lr=1e-3", "train.aux_loss_coef=0.01",
        "data.tasks=[arithmetic]", "data.task_weights=[1]", "data.max_digits=1", "data.train_prompts=32",
        "data.heldout_prompts=4", "eval.before=false", "eval.after=false", "mining.enabled=false",
        "rollout.max_staleness=0",
        "train.drop_zero_variance_groups=false", "monitor.tensorboard=false", "monitor.ray_metrics=false",
        f'reward.custom=["{Path(__file__).resolve()}:token_parity"]', 'reward.routes=["math=token_parity:1.0"]',
    ])


def _hf_logprobs(path: str, probes: list[list[int]]) -> list[list[float]]:
    from rl.policy import load_policy

    model = load_policy(path).eval()
    with torch.no_grad():
        return [torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1].float(), -1)
                .gather(-1, torch.tensor(ids[1:])[:, None])[:, 0].tolist() for ids in probes]


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_three_rl_steps_through_the_driver(family, family_checkpoints, ray_session, tmp_path):
    """Parity, exact sync after every update, routing agreement, balance loss and expert load logged,
    and a final checkpoint that loads back in transformers and in vLLM."""
    import run_rl
    from rl.metrics import MetricsLog
    from rl.rollout import RolloutWorker
    from transformers import AutoTokenizer

    ray = ray_session
    checkpoint = family_checkpoints[family]
    tok = AutoTokenizer.from_pretrained(checkpoint)
    probes = [tok(p + tok.eos_token)["input_ids"] for p in PROBES]
    cfg = _driver_config(checkpoint, tmp_path)
    from data_mining.prompts import load_prompts
    from rl import checkpoint as ckpt
    from rl.actors import stop_actors

    train_rows, _ = load_prompts(cfg)
    actors, miner, start = run_rl.setup_run(cfg, checkpoint, train_rows)
    try:
        engine_before = ray.get(actors.rollouts[0].sequence_logprobs.remote(probes))
        log = MetricsLog(tmp_path, cfg.run.steps, cfg.monitor)
        steps = run_rl.rl_loop(cfg, actors, miner, log, tmp_path, start=start)
        log.close()
        engine_after = ray.get(actors.rollouts[0].sequence_logprobs.remote(probes))
        trainer_after = ray.get(actors.trainer.sequence_logprobs.remote(probes))
        ckpt.save(cfg, actors, miner, tmp_path / "final", steps)
    finally:
        stop_actors(actors)
    replay = RoutingReplay(_model(family))
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    print(family, [(r["rollout/logprob_abs_diff_max"], r["rollout/routing_agreement"]) for r in lines])
    assert [r["policy_version"] for r in lines] == [1.0, 2.0, 3.0]  # every step updated and synced
    for r in lines:
        assert r["rollout/logprob_abs_diff_max"] < 1e-4
        assert r["rollout/routing_agreement"] >= 0.99
        assert "moe/aux_loss" in r and r["moe/router_entropy"] > 0
        load = torch.tensor(r["moe/expert_load"])  # [moe layers, experts]
        assert load.shape == (replay.num_layers, replay.num_experts)
        torch.testing.assert_close(load.sum(-1), torch.ones(load.shape[0]), atol=1e-3, rtol=0)
    assert _max_gap(engine_after, engine_before) > 1e-3  # the engine runs the updated weights...
    assert _max_gap(engine_after, trainer_after) < 1e-4  # ...exactly the trainer's

    final = str(tmp_path / "final")
    assert _max_gap(_hf_logprobs(final, probes), trainer_after) < 1e-4
    reloaded = ray.remote(RolloutWorker).options(num_cpus=1).remote(final, max_model_len=64)
    try:
        assert _max_gap(ray.get(reloaded.sequence_logprobs.remote(probes)), trainer_after) < 1e-4
    finally:
        ray.kill(reloaded)


# bf16 in CI for one router of each kind (sigmoid + bias + groups, dense top-1 sigmoid, softmax over
# the chosen logits); the README's table has every family's numbers.
@pytest.mark.slow
@pytest.mark.parametrize("family", ["deepseek_v3", "gpt_oss", "llama4_text"])
def test_bf16_parity_with_routing_replay(family, family_checkpoints, ray_session):
    """bf16 engine vs bf16 trainer: replay runs the engine's experts; the gap is bf16 rounding."""
    from rl.config import RolloutConfig, TrainConfig
    from rl.rollout import RolloutWorker
    from rl.trainer import TrainerWorker

    ray = ray_session
    checkpoint = family_checkpoints[family]
    rollout = ray.remote(RolloutWorker).options(num_cpus=1).remote(
        checkpoint, RolloutConfig(record_routing=True), dtype="bfloat16", max_model_len=64)
    rows = [{"id": f"p{i}", "domain": "math", "prompt": f"{i % 10}+{(7 * i) % 10}=", "reference": {}} for i in range(8)]
    try:
        samples = ray.get(rollout.generate.remote(rows, n=4, max_new_tokens=8))
    finally:
        ray.kill(rollout)
    report = TrainerWorker(checkpoint, TrainConfig(), dtype="bfloat16").routing_report(samples)
    print(family, "bf16", report)
    assert report["routing_used_agreement"] == 1.0 and report["routing_agreement"] >= 0.95
    assert report["logprob_abs_diff_max"] < 0.1
