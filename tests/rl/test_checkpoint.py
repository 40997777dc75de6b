"""Checkpoint directories: atomic saves, pruning, picking the newest complete one, the save schedule."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest

from rl import checkpoint
from rl.config import load_config

FILES = ("config.json", "trainer_state.pt", "rollout_rng.pt", "ledger.parquet")


def _weights(tag: str) -> bytes:
    """A safetensors file without tensors, `tag` in its metadata."""
    header = json.dumps({"__metadata__": {"tag": tag}}).encode()
    return len(header).to_bytes(8, "little") + header


def _tag(path: Path) -> str:
    data = path.read_bytes()
    return json.loads(data[8:8 + int.from_bytes(data[:8], "little")])["__metadata__"]["tag"]


def _complete(path: Path, step: int) -> Path:
    path.mkdir(parents=True)
    for name in FILES:
        (path / name).write_text("")
    (path / "model.safetensors").write_bytes(_weights(str(step)))
    (path / "resume.json").write_text(json.dumps({"step": step}))
    return path


class _Trainer:
    """Writes a checkpoint's trainer files (weights tagged `tag`), or fails half way when `fail`."""

    def __init__(self, tag: str, fail: bool = False) -> None:
        self.tag, self.fail = tag, fail
        self.save = types.SimpleNamespace(remote=self._save)

    def _save(self, path: str) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "model.safetensors").write_bytes(_weights(self.tag))
        if self.fail:
            raise RuntimeError("disk full")
        for name in ("config.json", "trainer_state.pt"):
            (Path(path) / name).write_text(self.tag)


class _Ledger:
    def save(self, path):
        (Path(path) / "ledger.parquet").write_text("")


def _save(monkeypatch, tmp_path: Path, path: Path, step: int, tag: str, fail: bool = False, keep: int = 0) -> None:
    monkeypatch.setattr(checkpoint.ray, "get", lambda x: x)  # the fake actors answer directly
    monkeypatch.setattr(checkpoint.torch, "save", lambda obj, p: Path(p).write_text("rng"))
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    (model / "tokenizer.json").write_text("{}")
    cfg = load_config(None, [f"model.path={model}", f"run.keep_checkpoints={keep}", "run.steps=10"])
    actors = types.SimpleNamespace(trainer=_Trainer(tag, fail), rollouts=[])
    checkpoint.save(cfg, actors, _Ledger(), path, step)


def test_saving_over_a_checkpoint_replaces_it_whole_or_not_at_all(monkeypatch, tmp_path):
    final = tmp_path / "run" / "final"
    _save(monkeypatch, tmp_path, final, 2, "old")
    assert checkpoint.checkpoint_problem(final) == ("", 2)
    with pytest.raises(RuntimeError, match="disk full"):
        _save(monkeypatch, tmp_path, final, 4, "new", fail=True)
    # The interrupted save left the old checkpoint as it was: its resume.json beside its own weights.
    assert _tag(final / "model.safetensors") == "old"
    assert checkpoint.checkpoint_problem(final) == ("", 2)
    _save(monkeypatch, tmp_path, final, 4, "new")
    assert _tag(final / "model.safetensors") == "new" and (final / "tokenizer.json").exists()
    assert checkpoint.checkpoint_problem(final) == ("", 4)
    assert sorted(p.name for p in final.parent.iterdir()) == ["final"]  # no temporary directory left


def test_keep_checkpoints_prunes_the_oldest_numbered_ones(monkeypatch, tmp_path):
    run = tmp_path / "run"
    for step in (2, 4, 6, 8, 10):
        _save(monkeypatch, tmp_path, run / f"checkpoint-{step}", step, str(step), keep=2)
    _save(monkeypatch, tmp_path, run / "final", 10, "final", keep=2)
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint-10", "checkpoint-8", "final"]
    assert checkpoint.prune(run, 0) == []  # 0 keeps everything


def test_latest_is_the_newest_complete_checkpoint(tmp_path):
    run = tmp_path / "run"
    assert checkpoint.latest(run) is None
    _complete(run / "checkpoint-2", 2)
    _complete(run / "checkpoint-10", 10)
    _complete(run / ".checkpoint-12.tmp", 12)  # a save in progress
    (run / "checkpoint-12").mkdir()  # incomplete
    (run / "checkpoint-12" / "resume.json").write_text(json.dumps({"step": 12}))
    assert checkpoint.latest(run) == run / "checkpoint-10"
    _complete(run / "final", 10)
    assert checkpoint.latest(run) == run / "final"


def test_resume_latest_and_resume_from_a_run_directory(tmp_path, capsys):
    run = tmp_path / "run"
    cfg = load_config(None, [f"run.dir={run}", "run.resume=latest"])
    assert checkpoint.resolve_resume(cfg).run.resume is None  # nothing to resume: a fresh start
    assert "no complete checkpoint" in capsys.readouterr().out
    _complete(run / "checkpoint-4", 4)
    _complete(run / "checkpoint-6", 6)
    resolved = checkpoint.resolve_resume(cfg)
    assert resolved.run.resume == str(run / "checkpoint-6") and checkpoint.resume_step(resolved) == 6
    assert f"newest complete checkpoint is {run / 'checkpoint-6'}" in capsys.readouterr().out
    (run / "metrics.jsonl").write_text("")
    other = load_config(None, [f"run.dir={tmp_path}/next", f"run.resume={run}"])
    assert checkpoint.resolve_resume(other).run.resume == str(run / "checkpoint-6")
    empty = tmp_path / "empty_run"
    empty.mkdir()
    (empty / "metrics.jsonl").write_text("")
    with pytest.raises(SystemExit) as exc:
        checkpoint.resolve_resume(load_config(None, [f"run.resume={empty}"]))
    assert exc.value.code == 2 and "without a complete checkpoint" in capsys.readouterr().err


def test_save_schedule_by_steps_and_by_time():
    now = [0.0]
    by_steps = checkpoint.SaveSchedule(3, 0.0, clock=lambda: now[0])
    assert [s for s in range(1, 10) if by_steps.due(s)] == [3, 6, 9]
    by_time = checkpoint.SaveSchedule(0, 10.0, clock=lambda: now[0])
    due = []
    for step in range(1, 10):
        now[0] += 250.0  # seconds per step: a checkpoint every 3rd step (750 s >= 600 s)
        due.append(by_time.due(step))
    assert [s for s, d in zip(range(1, 10), due) if d] == [3, 6, 9]
    assert not any(checkpoint.SaveSchedule(0, 0.0, clock=lambda: now[0]).due(s) for s in range(1, 5))


def test_a_truncated_weight_file_is_caught_by_its_header(tmp_path):
    from safetensors.torch import save_file

    import torch

    weights = tmp_path / "model.safetensors"
    save_file({"w": torch.ones(64, 64)}, weights)
    assert checkpoint.safetensors_problem(weights) is None
    data = weights.read_bytes()
    weights.write_bytes(data[:-100])  # a save cut short
    assert "is truncated: its tensors end at byte" in checkpoint.safetensors_problem(weights)
    weights.write_bytes(data[:5])
    assert "truncated or not a safetensors file" in checkpoint.safetensors_problem(weights)
    weights.write_bytes(b"PK\x03\x04" + data[4:])  # another format (a zip's magic)
    assert checkpoint.safetensors_problem(weights)
    ckpt = _complete(tmp_path / "checkpoint-3", 3)
    (ckpt / "model.safetensors").write_bytes(data[:-100])
    problem, _ = checkpoint.checkpoint_problem(ckpt)
    assert "model.safetensors" in problem and "truncated" in problem
    assert checkpoint.latest(tmp_path) is None  # never picked for resume
