"""Checkpoints: what a run writes to continue later, and how a resumed run picks it up.

A checkpoint directory is a normal Hugging Face checkpoint (weights, config, tokenizer) that
transformers and vLLM load as any other, plus what a resumed run needs to continue exactly:

    trainer_state.pt   optimiser moments, LR-schedule position, policy version, trainer RNG
    rollout_rng.pt     each rollout engine's sampler RNG
    ledger.parquet     the miner's pass-rate ledger with its sampler state
    resume.json        {"step": the step a resumed run starts at, "of_steps": run.steps}
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Protocol

import ray
import torch

from rl.config import Config
from rl.routing import UnsupportedFamilyError, check_supported

TRAINER_STATE = "trainer_state.pt"
RESUME = "resume.json"
ENGINE_RNG = "rollout_rng.pt"  # each rollout engine's sampler state (`RolloutWorker.rng_state`)
LEDGER = "ledger.parquet"


class Saveable(Protocol):
    """The data side's state (the miner): written into and restored from a checkpoint directory."""

    def save(self, path: str | Path) -> Any: ...

    def load(self, path: str | Path) -> None: ...


def save_trainer_state(path: str | Path, optimizer: Any, scheduler: Any, version: int, rng: Any) -> None:
    """`trainer_state.pt` into `path`: what a resumed trainer needs beside the weights to continue exactly."""
    Path(path).mkdir(parents=True, exist_ok=True)
    state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "version": version,
             "python_rng": rng.getstate(), "torch_rng": torch.get_rng_state()}
    torch.save(state, Path(path) / TRAINER_STATE)


def load_trainer_state(path: str | Path, optimizer: Any, scheduler: Any, rng: Any) -> int:
    """Restore optimiser moments, LR-schedule position and RNG streams from `path`'s `trainer_state.pt`;
    returns the policy version it was saved at."""
    state = torch.load(Path(path) / TRAINER_STATE, weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    rng.setstate(state["python_rng"])
    torch.set_rng_state(state["torch_rng"])
    return state["version"]


def model_dir(cfg: Config, dry_run: bool, build: Callable[[Path], Path]) -> str:
    """The checkpoint the run starts from: model.path when it is one (checked in a dry run; a family
    without a router adapter is refused while routing replay or the balance loss is on), else the one
    `build` makes there (model.bootstrap); a dry run only says it is to be built."""
    path = Path(cfg.model.path)
    if (path / "config.json").exists():
        if cfg.train.routing_replay or cfg.train.aux_loss_coef > 0:  # both need the family's router adapter
            try:
                check_supported(path)
            except UnsupportedFamilyError as exc:
                sys.exit(f"error: model.path {str(path)!r}: {exc}")
            except (OSError, ValueError) as exc:  # transformers cannot read the config at all
                sys.exit(f"error: model.path {str(path)!r} has no usable config.json: {exc}")
        if dry_run:
            check_model_dir(path)
        return str(path)
    if path.exists():  # bootstrapping would replace whatever is there
        sys.exit(f"error: model.path {str(path)!r} exists but is not a Hugging Face checkpoint directory "
                 "(no config.json)")
    if not cfg.model.bootstrap:
        sys.exit(f"error: model.path {str(path)!r} does not exist and model.bootstrap is false")
    return f"{path} (to be bootstrapped)" if dry_run else str(build(path))


def check_model_dir(path: Path) -> None:
    """Exit naming the problem when `path` lacks what the actors load: model config, weights, tokenizer."""
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        sys.exit(f"error: model.path {str(path)!r} has no usable config.json: {exc}")
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        sys.exit(f"error: model.path {str(path)!r} has no weight files (*.safetensors or *.bin)")
    # transformers builds an empty tokenizer rather than fail when the files are missing.
    if not any((path / name).exists() for name in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        sys.exit(f"error: model.path {str(path)!r} has no tokenizer (tokenizer.json, tokenizer.model or vocab.json)")


def resume_step(cfg: Config) -> int:
    """The step a run resumed from run.resume starts at (0 for a fresh run). A directory that is not
    a checkpoint written by `save` exits with status 2, naming it and what it lacks."""
    if not cfg.run.resume:
        return 0
    path = Path(cfg.run.resume)
    needs = {"config.json": "config.json", "*.safetensors": "weights (*.safetensors)",
             TRAINER_STATE: TRAINER_STATE, ENGINE_RNG: ENGINE_RNG, LEDGER: LEDGER, RESUME: RESUME}
    missing = [what for pattern, what in needs.items() if not any(path.glob(pattern))]
    problem = "does not exist" if not path.is_dir() else f"lacks {', '.join(missing)}" if missing else ""
    if not problem:
        try:
            return int(json.loads((path / RESUME).read_text())["step"])
        except (ValueError, KeyError, TypeError) as exc:
            problem = f"has an unreadable {RESUME} ({exc!r})"
    print(f"error: run.resume {str(path)!r} is not a checkpoint directory to resume from: it {problem}",
          file=sys.stderr, flush=True)
    sys.exit(2)


def save(cfg: Config, actors: Any, data: Saveable, path: Path, step: int) -> None:
    """Everything `run.resume=path` continues from: weights (a normal Hugging Face checkpoint with its
    tokenizer), trainer and engine state, the ledger with the sampler state, and the step to start at."""
    ray.get(actors.trainer.save.remote(str(path)))  # rank 0: data-parallel ranks hold the same state
    torch.save(ray.get([r.rng_state.remote() for r in actors.rollouts]), Path(path) / ENGINE_RNG)
    for f in Path(cfg.model.path).iterdir():  # tokenizer files travel with the weights
        if f.name.startswith(("tokenizer", "special_tokens")) or f.name == "chat_template.jinja":
            shutil.copy(f, path / f.name)
    data.save(path)
    (path / RESUME).write_text(json.dumps({"step": step, "of_steps": cfg.run.steps}))


def restore(actors: Any, data: Saveable, path: str | Path) -> int:
    """Restore what `save` wrote, on actors built from `path`'s weights; returns the policy version.

    The trainer's optimiser, LR schedule, version and RNG (in every data-parallel trainer, whatever
    their number when it was saved), the engines' RNG, and the ledger and sampler continue from the
    checkpoint.
    """
    data.load(path)
    version = ray.get([t.load_state.remote(str(path)) for t in actors.trainers])[0]
    states = torch.load(Path(path) / ENGINE_RNG, weights_only=True)
    if len(states) != len(actors.rollouts):
        print(f"warning: {path} holds {len(states)} rollout engine states for {len(actors.rollouts)} engines; "
              "sampling will not repeat the interrupted run", flush=True)
    ray.get([r.restore.remote(states[i] if i < len(states) else None, version)
             for i, r in enumerate(actors.rollouts)])
    return version
