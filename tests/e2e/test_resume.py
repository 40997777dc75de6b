"""Resuming a run from a checkpoint: the trainer's state round trip, the resume directory check, and
(slow, real Ray + vLLM) a run interrupted after its checkpoint and resumed ends where the
uninterrupted run ends."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest
import torch

import run_rl
from data_mining.prompts import load_prompts
from rl.actors import stop_actors
from rl.config import TrainConfig
from rl.trainer import TrainerWorker
from rl.types import Sample

# ---- trainer state, no Ray ----------------------------------------------------------------------


# Two optimiser steps per batch (the shuffle uses the python RNG) on a cosine schedule over 4 steps.
CFG = TrainConfig(lr=1e-2, updates_per_step=2, micro_batch_samples=2, lr_schedule="cosine", warmup_steps=1)


def _trainer(path: str, seed: int = 0) -> TrainerWorker:
    return TrainerWorker(path, CFG, seed=seed, max_new_tokens=8, total_steps=4)


def _samples(trainer: TrainerWorker) -> list[Sample]:
    samples = [
        Sample("a", "math", "", [5, 6, 7], completion_ids=[8, 9, 0], reward=1.0),
        Sample("a", "math", "", [5, 6, 7], completion_ids=[10, 0], reward=0.0),
        Sample("b", "code", "", [11, 12], completion_ids=[13, 14, 15, 0], reward=0.0),
        Sample("b", "code", "", [11, 12], completion_ids=[16, 0], reward=1.0),
        Sample("c", "math", "", [20, 21], completion_ids=[22, 0], reward=1.0),
        Sample("c", "math", "", [20, 21], completion_ids=[23, 24, 0], reward=0.0),
    ]
    for s, lp in zip(samples, trainer.scorer.logprobs(trainer.model, samples, list(range(len(samples)))).values()):
        s.rollout_logprobs = lp.tolist()
    return samples


def _params(trainer: TrainerWorker) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.named_parameters()}


def test_trainer_state_round_trip_continues_exactly(tiny_dir, tmp_path):
    first = _trainer(tiny_dir)
    first.train_step(_samples(first))
    ckpt = str(tmp_path / "checkpoint-1")
    first.save(ckpt)
    assert (Path(ckpt) / "model.safetensors").exists() and (Path(ckpt) / "config.json").exists()

    resumed = _trainer(ckpt, seed=7)  # another seed: the RNG streams must come from the file
    assert resumed.load_state(ckpt) == 1 == resumed.version
    saved, loaded = first.optimizer.state_dict(), resumed.optimizer.state_dict()
    assert saved["param_groups"] == loaded["param_groups"]
    assert saved["state"].keys() == loaded["state"].keys() and saved["state"]
    for i, state in saved["state"].items():
        for key, value in state.items():
            assert torch.equal(value, loaded["state"][i][key]), (i, key)
    assert first.scheduler.state_dict() == resumed.scheduler.state_dict()
    assert first.scheduler.get_last_lr() == resumed.scheduler.get_last_lr()
    assert first.rng.getstate() == resumed.rng.getstate()
    assert all(torch.equal(v, _params(resumed)[k]) for k, v in _params(first).items())

    # The next step is the same bit for bit; without the state (fresh moments, LR schedule at 0) it is not.
    batch = _samples(first)
    first.train_step(copy.deepcopy(batch))
    resumed.train_step(copy.deepcopy(batch))
    fresh = _trainer(ckpt)
    fresh.train_step(copy.deepcopy(batch))
    after, again, without = _params(first), _params(resumed), _params(fresh)
    assert all(torch.equal(after[k], again[k]) for k in after)
    assert max((after[k] - without[k]).abs().max().item() for k in after) > 1e-4


# ---- the resume directory is checked first, also in a dry run -----------------------------------


def _dry_run(tmp_path: Path, resume: Path) -> list[str]:
    return [f"model.path={tmp_path}/ckpt", f"run.dir={tmp_path}/run", f"run.resume={resume}", "--dry-run"]


def _fake_checkpoint(path: Path, resume: dict | None) -> Path:
    path.mkdir()
    for name in ("config.json", "trainer_state.pt", "rollout_rng.pt", "ledger.parquet"):
        (path / name).write_text("")
    (path / "model.safetensors").write_bytes((2).to_bytes(8, "little") + b"{}")  # a valid header, no tensors
    if resume is not None:
        (path / "resume.json").write_text(json.dumps(resume))
    return path


@pytest.mark.parametrize(
    "case, expected",
    [("missing", "does not exist"), ("run_dir", "lacks config.json, weights (*.safetensors), trainer_state.pt"),
     ("no_resume_json", "lacks resume.json"), ("bad_resume_json", "unreadable resume.json")],
)
def test_bad_resume_dir_exits_2_naming_it(tmp_path, capsys, case, expected):
    if case == "missing":
        resume = tmp_path / "nowhere"
    elif case == "run_dir":  # a run directory holds a ledger but no checkpoint
        resume = tmp_path / "old_run"
        resume.mkdir()
        (resume / "ledger.parquet").write_text("")
    else:
        resume = _fake_checkpoint(tmp_path / "checkpoint-2", None if case == "no_resume_json" else {"steps": 2})
    with pytest.raises(SystemExit) as exc:
        run_rl.main(_dry_run(tmp_path, resume))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert str(resume) in err and expected in err
    assert not (tmp_path / "run").exists()  # checked before anything is written


def test_dry_run_names_the_resume_step(tmp_path, capsys):
    resume = _fake_checkpoint(tmp_path / "checkpoint-6", {"step": 6})
    assert run_rl.main(_dry_run(tmp_path, resume)) == 0
    assert f"resume: from {resume} at step 6" in capsys.readouterr().out


# ---- a whole run, interrupted and resumed (real Ray, vLLM and tiny MoE) -------------------------

OVERRIDES = [
    "run.steps=4", "run.save_every=2", "run.seed=3",
    "train.prompts_per_step=8", "rollout.samples_per_prompt=4", "train.lr=1e-3",
    "data.train_prompts=64", "data.heldout_prompts=8", "data.max_digits=1", "rollout.max_new_tokens=6",
    "data.tasks=[arithmetic]", "data.task_weights=[1]",
    "train.drop_zero_variance_groups=false",  # every step updates, so versions are exact
    "rollout.max_staleness=0",  # the synchronous loop resumes exactly
]


def _run(cfg, model_path: str, run_dir: Path, stop_after: int | None = None) -> dict[str, torch.Tensor]:
    """The driver's set-up and loop (without Ray start/stop, report or evaluation); `stop_after` ends
    the loop after that many steps, as a crash would, leaving the run's last checkpoint behind."""
    import ray

    from rl.metrics import MetricsLog

    train_rows, _ = load_prompts(cfg)
    actors, miner, start = run_rl.setup_run(cfg, model_path, train_rows)
    log = MetricsLog(run_dir, cfg.run.steps)
    loop_cfg = cfg
    if stop_after is not None:  # the trainer was built for all run.steps; only the loop stops early
        loop_cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, steps=stop_after))
    run_rl.rl_loop(loop_cfg, actors, miner, log, run_dir, start=start)
    log.close()
    weights = ray.get(actors.trainer.weights.remote())
    stop_actors(actors)  # the actors, their bundles and names
    return weights


@pytest.mark.slow
def test_resumed_run_ends_where_the_uninterrupted_run_ends(tiny_checkpoint, ray_session, tmp_path, capsys):
    import ray
    from safetensors.torch import load_file

    from rl.config import load_config
    from rl.policy import hf_state_dict, load_policy

    def config(run_dir: Path, *extra: str):
        return load_config("configs/tiny_cpu.yaml",
                           [f"model.path={tiny_checkpoint}", f"run.dir={run_dir}", *OVERRIDES, *extra])

    whole, parts = tmp_path / "whole", tmp_path / "parts"
    uninterrupted = _run(config(whole), tiny_checkpoint, whole)
    _run(config(parts), tiny_checkpoint, parts, stop_after=2)
    ckpt = parts / "checkpoint-2"
    assert json.loads((ckpt / "resume.json").read_text())["step"] == 2
    # Both runs are deterministic up to the checkpoint.
    on_disk = load_file(ckpt / "model.safetensors")
    assert all(torch.equal(v, load_file(whole / "checkpoint-2" / "model.safetensors")[k]) for k, v in on_disk.items())
    first_half = hf_state_dict(load_policy(ckpt))  # in the checkpoint layout, as the trainer sends them

    cfg = config(parts, f"run.resume={ckpt}")
    train_rows, _ = load_prompts(cfg)
    actors, miner, start = run_rl.setup_run(cfg, tiny_checkpoint, train_rows)
    assert start == 2 and "resumed from" in capsys.readouterr().out
    # The resumed trainer holds the checkpoint's weights and state, the engine its version.
    restored = ray.get(actors.trainer.weights.remote())
    assert all(torch.equal(restored[k], v) for k, v in first_half.items())
    assert ray.get(actors.trainer.state.remote())["version"] == 2
    assert ray.get(actors.rollouts[0].info.remote())["version"] == 2
    log = run_rl.MetricsLog(parts, cfg.run.steps)
    assert run_rl.rl_loop(cfg, actors, miner, log, parts, start=start) == 4
    log.close()
    resumed = ray.get(actors.trainer.weights.remote())
    stop_actors(actors)  # the actors, their bundles and names

    # metrics.jsonl was appended to: steps and policy versions continue from the checkpoint.
    lines = [json.loads(line) for line in (parts / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [0, 1, 2, 3]
    assert [r["policy_version"] for r in lines] == [1.0, 2.0, 3.0, 4.0]
    assert [r["rollout/staleness_max"] for r in lines] == [0.0] * 4
    assert json.loads((parts / "checkpoint-4" / "resume.json").read_text())["step"] == 4

    diff = max((resumed[k] - uninterrupted[k]).abs().max().item() for k in uninterrupted)
    moved = max((uninterrupted[k] - first_half[k]).abs().max().item() for k in uninterrupted)
    print(f"resumed vs uninterrupted max |dw| = {diff:.3g} (steps 2-3 moved weights by up to {moved:.3g})")
    assert moved > 1e-4
    assert diff == 0.0
