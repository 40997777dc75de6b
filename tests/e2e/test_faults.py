"""Faults during a real run (the driver in a subprocess with its own Ray, vLLM and the tiny MoE):
a preempted run (synchronous or asynchronous) leaves a checkpoint and resumes with every step once;
an engine or reward actor killed mid-run is replaced and the run completes; a killed trainer stops
the run naming its last checkpoint, which resumes; a reward that returns NaN/inf on some samples
costs only those samples; non-finite losses skip their updates and, repeated, stop the run."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.test_driver import ROOT, _free_port


def _overrides(model: str, run_dir: Path, steps: int) -> list[str]:
    return [
        f"model.path={model}", f"run.dir={run_dir}", f"run.steps={steps}", "run.num_cpus=2", "run.seed=5",
        "data.tasks=[arithmetic]", "data.task_weights=[1]", "data.max_digits=1", "data.train_prompts=64",
        "data.heldout_prompts=8", "train.prompts_per_step=4", "rollout.samples_per_prompt=4",
        "rollout.num_actors=1", "rollout.max_new_tokens=6", "eval.before=false", "eval.after=false",
        "train.drop_zero_variance_groups=false", "monitor.ray_metrics=false", "monitor.tensorboard=false",
        f"monitor.dashboard_port={_free_port()}", "rollout.max_staleness=0",  # tests may set it again
    ]


def _steps(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line)["step"] for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.slow
@pytest.mark.parametrize("staleness", [0, 1])
def test_sigterm_writes_a_checkpoint_and_the_resumed_run_logs_each_step_once(tiny_checkpoint, tmp_path, staleness):
    run_dir, steps = tmp_path / "run", 10  # enough steps left after the first that the signal lands mid-run
    args = [sys.executable, "run_rl.py", *_overrides(tiny_checkpoint, run_dir, steps),
            f"rollout.max_staleness={staleness}"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 900
    while not _steps(run_dir) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # as soon as step 0 is logged
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 75, out[-3000:] + err[-3000:]
    stopped_at = len(_steps(run_dir))
    assert 1 <= stopped_at < steps
    ckpt = run_dir / f"checkpoint-{stopped_at}"
    assert json.loads((ckpt / "resume.json").read_text())["step"] == stopped_at
    assert f"checkpoint written to {ckpt}" in out and "run.resume=latest" in out
    assert not (run_dir / "final").exists() and not (run_dir / "summary.json").exists()

    resumed = subprocess.run([*args, "run.resume=latest"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"newest complete checkpoint is {ckpt}" in resumed.stdout
    assert _steps(run_dir) == list(range(steps))
    versions = [json.loads(line)["policy_version"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert versions == [float(v) for v in range(1, steps + 1)]  # the resumed trainer continued from the checkpoint


@pytest.mark.slow
def test_a_reward_returning_nan_or_inf_costs_only_its_samples(tiny_checkpoint, tmp_path):
    from safetensors.torch import load_file

    reward = tmp_path / "flaky.py"
    reward.write_text(
        "from rewards.registry import RewardResult\n"
        "def flaky(sample):\n"
        "    n = len(sample.completion_ids)\n"
        "    return RewardResult(float('inf') if n % 3 == 0 else float('nan') if n % 3 == 1 else 1.0)\n"
    )
    run_dir = tmp_path / "run"
    overrides = [*_overrides(tiny_checkpoint, run_dir, 2), f"reward.custom=[{reward}:flaky]",
                 "reward.routes=[math=flaky]"]
    proc = subprocess.run([sys.executable, "run_rl.py", *overrides], cwd=ROOT, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1]
    assert sum(r["reward/errors/math"] for r in records) > 0
    assert all(math.isfinite(r["reward/mean"]) for r in records)
    assert "non-finite score" in proc.stdout
    weights = load_file(run_dir / "final" / "model.safetensors")
    assert all(bool(w.isfinite().all()) for w in weights.values())


def _descendant(pid: int, marker: str) -> int | None:
    """The process under `pid` (its own Ray's workers are) whose command line contains `marker`."""
    import psutil

    for child in psutil.Process(pid).children(recursive=True):
        try:
            if marker in " ".join(child.cmdline()):
                return child.pid
        except psutil.Error:
            continue
    return None


def _kill_when(proc: subprocess.Popen, run_dir: Path, marker: str, after: Path) -> None:
    """SIGKILL the run's process whose command line has `marker` once `after` exists."""
    import os

    deadline = time.monotonic() + 900
    while not after.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    victim = _descendant(proc.pid, marker)
    assert victim is not None, f"no {marker} process under the driver"
    os.kill(victim, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.parametrize("marker,role,staleness", [("RolloutWorker", "rollout", 0), ("RewardWorker", "reward", 0),
                                                    ("RolloutWorker", "rollout", 1)])
def test_kill_9_of_an_engine_or_reward_actor_is_survived_with_one_restart(tiny_checkpoint, tmp_path, marker, role,
                                                                          staleness):
    run_dir = tmp_path / "run"
    args = [sys.executable, "run_rl.py", *_overrides(tiny_checkpoint, run_dir, 5), "run.save_every=1",
            f"rollout.max_staleness={staleness}", "rollout.num_actors=2", "run.num_cpus=3"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _kill_when(proc, run_dir, marker, run_dir / "checkpoint-1" / "resume.json")
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    assert f"starting a replacement ({role} restart 1 of at most 3)" in err
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1, 2, 3, 4]  # every step, each once
    assert records[-1][f"fault/restarts/{role}"] == 1.0
    assert sum(r[f"fault/restarts/{other}"] for r in records[-1:] for other in ("rollout", "reward")) == 1.0
    assert [r["policy_version"] for r in records] == [1.0, 2.0, 3.0, 4.0, 5.0]


@pytest.mark.slow
def test_kill_9_of_the_trainer_stops_the_run_with_its_last_checkpoint_which_resumes(tiny_checkpoint, tmp_path):
    run_dir = tmp_path / "run"
    args = [sys.executable, "run_rl.py", *_overrides(tiny_checkpoint, run_dir, 4), "run.save_every=1"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _kill_when(proc, run_dir, "TrainerWorker", run_dir / "checkpoint-1" / "resume.json")
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 4, out[-3000:] + err[-3000:]
    assert "an actor died during the RL loop" in err
    last = max(int(p.name.split("-")[1]) for p in run_dir.glob("checkpoint-*"))
    assert f"Last checkpoint: {run_dir / f'checkpoint-{last}'}" in err

    resumed = subprocess.run([*args, "run.resume=latest"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert _steps(run_dir) == [0, 1, 2, 3]  # each step once, the steps after the checkpoint redone


@pytest.mark.slow
def test_a_non_finite_loss_skips_updates_and_repeated_ones_stop_the_run_with_weights_untouched(tiny_checkpoint,
                                                                                                 tmp_path):
    from safetensors.torch import load_file

    # Finite rewards so large that dr_grpo's unnormalised advantages overflow the loss or its gradient.
    reward = tmp_path / "huge.py"
    reward.write_text(
        "from rewards.registry import RewardResult\n"
        "def huge(sample):\n"
        "    return RewardResult(3e38 if len(sample.completion_ids) % 2 else -3e38)\n"
    )
    run_dir = tmp_path / "run"
    overrides = [*_overrides(tiny_checkpoint, run_dir, 5), f"reward.custom=[{reward}:huge]", "reward.routes=[math=huge]",
                 "train.advantage=dr_grpo", "train.max_skipped_steps=2", "run.save_every=1"]
    proc = subprocess.run([sys.executable, "run_rl.py", *overrides], cwd=ROOT, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 3, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 steps in a row (up to step 1) skipped their optimiser step" in proc.stderr
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["train/skipped_steps"]) for r in records] == [(0, 1.0), (1, 1.0)]
    start = load_file(Path(tiny_checkpoint) / "model.safetensors")
    saved = load_file(run_dir / "checkpoint-2" / "model.safetensors")
    assert all(bool(w.isfinite().all()) for w in saved.values())
    assert all(torch_equal(saved[k], start[k]) for k in start)  # no update reached the weights


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))
