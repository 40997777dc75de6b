"""End to end through real Ray actors, a real vLLM engine and a real (tiny) MoE."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

# Prompt + answer token sequences scored by both sides to compare their weights by behaviour.
PROBES = ["1+3=4", "5-7=-2", "8+9=17", "0-4=-4"]


def _probe_ids(checkpoint: str) -> list[list[int]]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(checkpoint)
    return [tok(p + tok.eos_token)["input_ids"] for p in PROBES]


def _max_gap(a: list[list[float]], b: list[list[float]]) -> float:
    return max(abs(x - y) for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True))


def _config(tiny_checkpoint: str, run_dir: Path):
    from rl.config import load_config

    return load_config(
        "configs/tiny_cpu.yaml",
        [
            f"model.path={tiny_checkpoint}", f"run.dir={run_dir}", "run.steps=2",
            "train.prompts_per_step=8", "rollout.samples_per_prompt=4", "train.lr=1e-3",
            "data.train_prompts=64", "data.heldout_prompts=8", "data.max_digits=1", "rollout.max_new_tokens=6",
            "data.tasks=[arithmetic]", "data.task_weights=[1]",
            "train.drop_zero_variance_groups=false",  # every step updates, so versions are exact
            "rollout.max_staleness=0",  # rl_loop: the synchronous loop
        ],
    )


def _check_metrics(run_dir: Path) -> None:
    """One line per step, with the rollout/trainer gap below the bar on every step."""
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [0, 1]
    for r in lines:
        assert r["rollout/logprob_abs_diff_max"] < 1e-4
        assert 0.0 <= r["reward/mean"] <= 1.0 and r["response/length_mean"] > 0
        for key in ("train/loss", "train/entropy", "train/clip_fraction", "time/generate", "time/sync"):
            assert key in r
    assert lines[1]["policy_version"] == 2.0
    assert any(r["train/advantage_abs_mean"] > 0 for r in lines)  # there was something to learn


def _check_saved_checkpoint(trainer, tiny_checkpoint: str, final: Path, probes: list[list[int]],
                            trainer_lp: list[list[float]]) -> None:
    """The trainer's saved checkpoint loads in transformers and in vLLM and reproduces its log-probs."""
    import ray

    from rl.policy import load_policy
    from rl.rollout import RolloutWorker

    ray.get(trainer.save.remote(str(final)))
    for f in Path(tiny_checkpoint).glob("tokenizer*"):
        shutil.copy(f, final / f.name)
    hf = load_policy(final).eval()
    with torch.no_grad():
        hf_lp = [
            torch.log_softmax(hf(torch.tensor([ids])).logits[0, :-1], -1)
            .gather(-1, torch.tensor(ids[1:])[:, None])[:, 0].tolist()
            for ids in probes
        ]
    assert _max_gap(hf_lp, trainer_lp) < 1e-4
    reloaded = ray.remote(RolloutWorker).options(num_cpus=1).remote(str(final), max_model_len=64)
    assert _max_gap(ray.get(reloaded.sequence_logprobs.remote(probes)), trainer_lp) < 1e-4
    ray.kill(reloaded)


def test_two_rl_steps_update_policy_and_engine(tiny_checkpoint, ray_session, tmp_path):
    import ray

    from data_mining.sampler import EpochSampler
    from rl.actors import build_actors, stop_actors
    from rl.metrics import MetricsLog
    from rl.policy import load_policy
    from data_mining.miner import Miner
    from data_mining.prompts import load_prompts
    from rewards.pool import RewardWorker
    from run_rl import rl_loop

    cfg = _config(tiny_checkpoint, tmp_path)
    actors = build_actors(cfg, tiny_checkpoint, RewardWorker)
    rollout, trainer = actors.rollouts[0], actors.trainer
    probes = _probe_ids(tiny_checkpoint)
    initial = load_policy(tiny_checkpoint).state_dict()
    engine_before = ray.get(rollout.sequence_logprobs.remote(probes))
    assert _max_gap(engine_before, ray.get(trainer.sequence_logprobs.remote(probes))) < 1e-4

    train_rows, _ = load_prompts(cfg)
    log = MetricsLog(tmp_path, cfg.run.steps)
    rl_loop(cfg, actors, Miner.from_config(cfg, train_rows, sampler=EpochSampler(train_rows, seed=0)), log, tmp_path)
    log.close()
    _check_metrics(tmp_path)

    # The policy changed, and the engine computes what the trainer computes with the new weights.
    weights = ray.get(trainer.weights.remote())
    assert any(not torch.equal(weights[k], initial[k]) for k in initial)
    trainer_after = ray.get(trainer.sequence_logprobs.remote(probes))
    assert len(actors.rollouts) == cfg.rollout.num_actors
    for engine in actors.rollouts:  # every engine got the new weights
        engine_after = ray.get(engine.sequence_logprobs.remote(probes))
        assert _max_gap(engine_after, trainer_after) < 1e-4
        assert _max_gap(engine_after, engine_before) > 1e-3  # the comparison can tell weights apart

    for actor in actors.rollouts:  # frees their CPUs for the reloaded engine
        ray.kill(actor)
    _check_saved_checkpoint(trainer, tiny_checkpoint, tmp_path / "final", probes, trainer_after)
    stop_actors(actors)
