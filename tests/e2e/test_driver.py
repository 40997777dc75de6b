"""The driver from start to finish, as `make demo` runs it: its own Ray, actors, held-out evaluation
before and after, RL steps, the final checkpoint, summary.json and the report."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_a_short_run_goes_from_start_to_report(tiny_checkpoint, tmp_path):
    run_dir = tmp_path / "run"
    overrides = [
        f"model.path={tiny_checkpoint}", f"run.dir={run_dir}", "run.steps=2", "run.num_cpus=2",
        "data.tasks=[arithmetic]", "data.task_weights=[1]", "data.max_digits=1", "data.train_prompts=64",
        "data.heldout_prompts=8", "train.prompts_per_step=4", "rollout.samples_per_prompt=4",
        "rollout.num_actors=1", "rollout.max_new_tokens=6", "eval.samples_per_prompt=2",
        "monitor.ray_metrics=false", "monitor.tensorboard=false", f"monitor.dashboard_port={_free_port()}",
    ]
    proc = subprocess.run([sys.executable, "run_rl.py", *overrides], cwd=ROOT, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 2 and {"heldout_before", "heldout_after", "mining"} <= set(summary)
    assert 0.0 <= summary["heldout_after"]["pass_rate"] <= 1.0
    final = run_dir / "final"
    assert {"config.json", "model.safetensors", "trainer_state.pt", "resume.json", "ledger.parquet"} <= {
        p.name for p in final.iterdir()}
    assert json.loads((final / "resume.json").read_text())["step"] == 2
    assert (run_dir / "report" / "report.md").exists()
    assert "held-out sampled pass rate: before" in proc.stdout
