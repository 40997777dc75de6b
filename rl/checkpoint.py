"""Checkpoints: what a run writes to continue later, and how a resumed run picks it up.

A checkpoint directory is a normal Hugging Face checkpoint (weights, config, tokenizer) that
transformers and vLLM load as any other, plus what a resumed run needs to continue exactly:

    trainer_state.pt   optimiser moments, LR-schedule position, policy version, trainer RNG
    rollout_rng.pt     each rollout engine's sampler RNG
    ledger.parquet     the miner's pass-rate ledger with its sampler state
    resume.json        {"step": the step a resumed run starts at, "of_steps": run.steps}

A checkpoint is written into a hidden temporary directory beside its destination and renamed into
place only when complete, so a crash mid-save never leaves a directory that looks resumable (an
old `resume.json` beside half-written weights, say). `run.keep_checkpoints` bounds how many
`checkpoint-N` directories a run keeps; `run.resume=latest` (or a run directory) continues from
the newest complete one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Protocol

import ray
import torch

from rl.config import Config
from rl.routing import UnsupportedFamilyError, check_supported
from rl.supervise import STARTUP_TIMEOUT_S

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
    """The checkpoint the run starts from: model.path when it is one (checked: config, weight headers,
    tokenizer, context length; a family without a router adapter is refused while routing replay or
    the balance loss is on), else the one `build` makes there (model.bootstrap); a dry run only says
    it is to be built."""
    path = Path(cfg.model.path)
    if (path / "config.json").exists():
        if cfg.train.routing_replay or cfg.train.aux_loss_coef > 0:  # both need the family's router adapter
            try:
                check_supported(path)
            except UnsupportedFamilyError as exc:
                sys.exit(f"error: model.path {str(path)!r}: {exc}")
            except (OSError, ValueError) as exc:  # transformers cannot read the config at all
                sys.exit(f"error: model.path {str(path)!r} has no usable config.json: {exc}")
        check_model_dir(path)
        check_context(cfg, path)
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
    for weights in sorted(path.glob("*.safetensors")):
        if problem := safetensors_problem(weights):
            sys.exit(f"error: model.path {str(path)!r}: weight file {weights.name} {problem}")
    # transformers builds an empty tokenizer rather than fail when the files are missing.
    if not any((path / name).exists() for name in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        sys.exit(f"error: model.path {str(path)!r} has no tokenizer (tokenizer.json, tokenizer.model or vocab.json)")


def safetensors_problem(path: Path) -> str | None:
    """What makes `path` an unreadable safetensors file, from its header alone (a file cut short by
    a crash or a full disk, a file of another format), or None. Layout: an 8-byte little-endian
    header length N, N bytes of JSON {name: {"data_offsets": [begin, end], ...}}, then the data."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 0 or n > size - 8:
            return f"is truncated or not a safetensors file ({size} bytes, header length {n})"
        try:
            header = json.loads(f.read(n))
            end = max((int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
            return f"has an unreadable header ({type(exc).__name__}: {exc})"
    if 8 + n + end > size:
        return f"is truncated: its tensors end at byte {8 + n + end}, the file has {size}"
    return None


def check_context(cfg: Config, path: Path) -> None:
    """Exit naming both numbers when the longest prompt plus completion exceeds the model's context."""
    from transformers import AutoConfig

    context = getattr(AutoConfig.from_pretrained(path), "max_position_embeddings", None)
    longest = max(cfg.rollout.max_new_tokens, cfg.eval.max_new_tokens or 0)
    if context is not None and cfg.data.max_prompt_tokens + longest > context:
        sys.exit(f"error: data.max_prompt_tokens ({cfg.data.max_prompt_tokens}) + max_new_tokens ({longest}, the "
                 f"larger of rollout.max_new_tokens and eval.max_new_tokens) = {cfg.data.max_prompt_tokens + longest} "
                 f"tokens exceeds the context of model.path {str(path)!r} (max_position_embeddings {context})")


def checkpoint_problem(path: Path) -> tuple[str, int]:
    """(what keeps `path` from being a checkpoint `save` wrote, "" when nothing; its resume step)."""
    needs = {"config.json": "config.json", "*.safetensors": "weights (*.safetensors)",
             TRAINER_STATE: TRAINER_STATE, ENGINE_RNG: ENGINE_RNG, LEDGER: LEDGER, RESUME: RESUME}
    if not path.is_dir():
        return "does not exist", 0
    missing = [what for pattern, what in needs.items() if not any(path.glob(pattern))]
    if missing:
        return f"lacks {', '.join(missing)}", 0
    for weights in sorted(path.glob("*.safetensors")):
        if problem := safetensors_problem(weights):
            return f"has a weight file that {problem} ({weights.name})", 0
    try:
        return "", int(json.loads((path / RESUME).read_text())["step"])
    except (ValueError, KeyError, TypeError) as exc:
        return f"has an unreadable {RESUME} ({exc!r})", 0


def latest(run_dir: str | Path) -> Path | None:
    """The complete checkpoint (`checkpoint-N/` or `final/`) of `run_dir` with the highest resume
    step, the final one on a tie; None when there is none."""
    found = []
    for path in Path(run_dir).glob("*"):
        if path.name == "final" or path.name.startswith("checkpoint-"):
            problem, step = checkpoint_problem(path)
            if not problem:
                found.append((step, path.name == "final", path))
    return max(found, key=lambda f: f[:2])[2] if found else None


def resolve_resume(cfg: Config) -> Config:
    """`cfg` with run.resume naming a checkpoint directory: `latest` is the newest complete one in
    run.dir (none: a fresh start), a run directory its newest; says which it picked."""
    resume = cfg.run.resume
    if not resume or (resume != "latest" and not (Path(resume) / "metrics.jsonl").exists()):
        return cfg
    run_dir = Path(cfg.run.dir if resume == "latest" else resume)
    found = latest(run_dir)
    if found is None and resume == "latest":
        print(f"run.resume=latest: no complete checkpoint in {run_dir}; starting a fresh run", flush=True)
    elif found is None:
        _refuse(run_dir, "is a run directory without a complete checkpoint")
    else:
        print(f"run.resume={resume}: the newest complete checkpoint is {found}", flush=True)
    return dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, resume=str(found) if found else None))


def resume_step(cfg: Config) -> int:
    """The step a run resumed from run.resume starts at (0 for a fresh run). A directory that is not
    a checkpoint written by `save` exits with status 2, naming it and what it lacks."""
    if not cfg.run.resume:
        return 0
    problem, step = checkpoint_problem(Path(cfg.run.resume))
    if problem:
        _refuse(Path(cfg.run.resume), f"is not a checkpoint directory to resume from: it {problem}")
    return step


def _refuse(path: Path, problem: str) -> None:
    print(f"error: run.resume {str(path)!r} {problem}", file=sys.stderr, flush=True)
    sys.exit(2)


def save(cfg: Config, actors: Any, data: Saveable, path: Path, step: int) -> None:
    """Everything `run.resume=path` continues from: weights (a normal Hugging Face checkpoint with its
    tokenizer), trainer and engine state, the ledger with the sampler state, and the step to start at;
    written aside and renamed into place (module docstring), then old checkpoints pruned."""
    path = Path(path)
    tmp, old = path.with_name(f".{path.name}.tmp"), path.with_name(f".{path.name}.old")
    for leftover in (tmp, old):  # a save interrupted earlier
        shutil.rmtree(leftover, ignore_errors=True)
    supervisor = getattr(actors, "supervisor", None)
    if supervisor is None:
        ray.get(actors.trainer.save.remote(str(tmp)))  # rank 0: data-parallel ranks hold the same state
        rng = ray.get([r.rng_state.remote() for r in actors.rollouts])
    else:  # a stalled trainer stops the run; an engine lost here is replaced (its state: the supervisor's)
        from rl.supervise import get_within

        get_within([actors.trainer.save.remote(str(tmp))], supervisor.timeouts.call() * 6, "writing a checkpoint")
        rng = supervisor.redo(supervisor.sampler_states, draw=False)
    torch.save(rng, tmp / ENGINE_RNG)
    for f in Path(cfg.model.path).iterdir():  # tokenizer files travel with the weights
        if f.name.startswith(("tokenizer", "special_tokens")) or f.name == "chat_template.jinja":
            shutil.copy(f, tmp / f.name)
    data.save(tmp)
    (tmp / RESUME).write_text(json.dumps({"step": step, "of_steps": cfg.run.steps}))
    if path.exists():  # a directory cannot be renamed over a non-empty one: move the old one aside first
        os.rename(path, old)
    os.rename(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
    prune(path.parent, cfg.run.keep_checkpoints)


def prune(run_dir: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` `checkpoint-N` directories of `run_dir` (0: keep all); returns
    the deleted ones. `final/` and anything else are never touched."""
    numbered = sorted((int(p.name.split("-", 1)[1]), p) for p in run_dir.glob("checkpoint-*")
                      if p.name.split("-", 1)[1].isdigit())
    doomed = [p for _, p in numbered[:-keep]] if keep else []
    for p in doomed:
        shutil.rmtree(p)
    return doomed


class SaveSchedule:
    """When the loop writes a checkpoint: every run.save_every steps and run.save_every_minutes."""

    def __init__(self, every_steps: int, every_minutes: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.every_steps, self.every_seconds, self.clock = every_steps, every_minutes * 60, clock
        self.last = clock()

    def due(self, steps_done: int) -> bool:
        """True when a checkpoint is due after `steps_done` steps (and restarts the clock)."""
        by_steps = bool(self.every_steps) and steps_done % self.every_steps == 0
        by_time = bool(self.every_seconds) and self.clock() - self.last >= self.every_seconds
        if by_steps or by_time:
            self.last = self.clock()
        return by_steps or by_time


def restore(actors: Any, data: Saveable, path: str | Path) -> int:
    """Restore what `save` wrote, on actors built from `path`'s weights; returns the policy version.

    The trainer's optimiser, LR schedule, version and RNG (in every data-parallel trainer, whatever
    their number when it was saved), the engines' RNG, and the ledger and sampler continue from the
    checkpoint.
    """
    data.load(path)
    version = ray.get([t.load_state.remote(str(path)) for t in actors.trainers], timeout=STARTUP_TIMEOUT_S)[0]
    states = torch.load(Path(path) / ENGINE_RNG, weights_only=True)
    if len(states) != len(actors.rollouts):
        print(f"warning: {path} holds {len(states)} rollout engine states for {len(actors.rollouts)} engines; "
              "sampling will not repeat the interrupted run", flush=True)
    ray.get([r.restore.remote(states[i] if i < len(states) else None, version)
             for i, r in enumerate(actors.rollouts)], timeout=STARTUP_TIMEOUT_S)
    if getattr(actors, "supervisor", None) is not None:
        actors.supervisor.forget_rng()
    return version
