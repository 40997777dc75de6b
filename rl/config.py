"""Typed configuration of the RL pipeline: one tree of frozen dataclasses.

Values come from a YAML file (a mapping of sections) plus dotted `KEY=VALUE` overrides, and are
parsed, type-checked and range-checked once, in `load_config`. The result is frozen: code that
needs a derived value computes it where it is used instead of writing it back into the config.

Every field carries its default and a help line in its metadata, so `format_help()` is the
reference for all knobs. A field may also set `"min"` (inclusive) in its metadata; checks that
involve more than one field live in the section's `validate()`. Names looked up in another
package's registry are checked there, right after loading: `data_mining.tasks.check_task_names`
(data.tasks) and `rewards.registry.check_routes` (reward.routes); this module imports nothing of
the project outside `rl`.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import re
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

__all__ = [
    "Config",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "MiningConfig",
    "ModelConfig",
    "MonitorConfig",
    "RewardConfig",
    "RolloutConfig",
    "RunConfig",
    "SandboxConfig",
    "TrainConfig",
    "config_to_dict",
    "format_help",
    "load_config",
    "parse_cli",
    "save_config",
]

DEFAULT_CONFIG_PATH = "configs/tiny_cpu.yaml"


class ConfigError(ValueError):
    """A config file, override or value is invalid; the message names the dotted key or the file."""


PLACEMENT_HELP = ("how the role's bundles are laid out on the nodes (Ray placement group strategy): pack (as few "
                  "nodes as possible), spread (as many as possible), strict_pack (one node), strict_spread (one "
                  "node each)")
NODE_RESOURCE_HELP = ("put the role only on nodes that have this Ray resource: a custom one the node was started "
                      "with (ray start --resources='{\"NAME\": 1}') or node:<IP> (every node has one for its "
                      "address); null = any node")
Strategy = Literal["pack", "spread", "strict_pack", "strict_spread"]


def _check_node_resource(key: str, value: str | None) -> None:
    if value is not None and (not value.strip() or value in ("CPU", "GPU", "memory", "object_store_memory")):
        raise ConfigError(f"config key '{key}' must name a custom or node:<IP> resource, got {value!r}")


@dataclass(frozen=True)
class RunConfig:
    dir: str = field(
        default="runs/tiny_cpu", metadata={"help": "run directory: metrics.jsonl, checkpoints, report"}
    )
    seed: int = field(default=0, metadata={"help": "seed for data, sampling and model init", "min": 0})
    steps: int = field(default=800, metadata={"help": "number of RL steps", "min": 0})
    ray_address: str | None = field(
        default=None, metadata={"help": "null starts a local Ray; 'auto' joins a running cluster"}
    )
    num_cpus: int | None = field(
        default=None, metadata={"help": "CPUs for a local Ray; null = all", "min": 1}
    )
    placement_timeout_s: float = field(
        default=60.0,
        metadata={"help": "seconds to wait for the cluster to reserve every role's placement bundles; past it the "
                          "run stops naming the resources it lacks", "min": 0},
    )
    save_every: int = field(
        default=0, metadata={"help": "checkpoint every N steps; 0 = by time (run.save_every_minutes) and at the end",
                             "min": 0}
    )
    save_every_minutes: float = field(
        default=10.0,
        metadata={"help": "also checkpoint at the first step boundary this many minutes after the last checkpoint "
                          "(or the start); 0 = off", "min": 0},
    )
    keep_checkpoints: int = field(
        default=3, metadata={"help": "checkpoint-N directories kept in run.dir, the newest; 0 = all (final/ is "
                                     "always kept)", "min": 0}
    )
    max_restarts: int = field(
        default=3,
        metadata={"help": "a rollout engine or reward actor whose process dies (or stalls past its call timeout) is "
                          "replaced and its unfinished work redone, at most this many times per role over the run; "
                          "past it the run stops naming its last checkpoint; 0 = a dead actor stops the run",
                  "min": 0},
    )
    call_timeout_s: float = field(
        default=0.0,
        metadata={"help": "seconds a remote call to an actor may take before the actor counts as stalled (an engine or "
                          "reward actor is then replaced like a dead one, a trainer stops the run); 0 = derived from "
                          "each call's work: 300 s plus 1 s per 20 tokens an engine may generate, per "
                          "reward.timeout_s per sample a reward actor may score in turn, per 50 tokens a trainer "
                          "updates on", "min": 0},
    )
    max_seconds: float = field(
        default=0.0,
        metadata={"help": "stop the RL loop after this many seconds (mining's offline pass included); 0 = no limit",
                  "min": 0},
    )
    resume: str | None = field(
        default=None,
        metadata={"help": "checkpoint directory (checkpoint-N/ or final/) to continue a run from: its weights, "
                          "optimiser, LR schedule, RNG, pass-rate ledger and sampler state; the loop resumes at "
                          "the step in its resume.json. A run directory: its newest complete checkpoint; "
                          "'latest': run.dir's newest complete checkpoint, or a fresh start when it has none"},
    )


@dataclass(frozen=True)
class ModelConfig:
    path: str = field(
        default="checkpoints/tiny-moe",
        metadata={"help": "a local Hugging Face MoE causal-LM directory"},
    )
    bootstrap: bool = field(
        default=True, metadata={"help": "build the embedded tiny MoE at model.path when it does not exist"}
    )
    dtype: Literal["float32", "bfloat16"] = field(
        default="float32", metadata={"help": "parameter dtype for rollout and training"}
    )


@dataclass(frozen=True)
class DataConfig:
    tasks: tuple[str, ...] = field(
        default=("arithmetic", "code", "instruction"),
        metadata={"help": "procedural task families mixed when data.datasets is empty: arithmetic (domain math), "
                          "code, instruction"},
    )
    task_weights: tuple[float, ...] = field(
        default=(2.0, 1.0, 1.0),
        metadata={"help": "share of each data.tasks family in the prompts drawn per step and in the warm-start corpus"},
    )
    train_prompts: int = field(
        default=4000, metadata={"help": "number of generated training prompts (families with fewer distinct "
                                        "prompts contribute all they have)", "min": 1}
    )
    heldout_prompts: int = field(
        default=256, metadata={"help": "number of held-out evaluation prompts", "min": 1}
    )
    min_digits: int = field(default=1, metadata={"help": "fewest digits per operand", "min": 1})
    max_digits: int = field(default=2, metadata={"help": "most digits per operand (>= min_digits)"})
    datasets: tuple[str, ...] = field(
        default=(),
        metadata={"help": "prompt datasets: JSONL, Parquet or saved `datasets` directories (row schema in "
                          "data_mining/datasets.py); empty = the procedural task"},
    )
    dataset_weights: tuple[float, ...] = field(
        default=(),
        metadata={"help": "sampling weight of each entry of data.datasets; empty = in proportion to their sizes"},
    )
    max_prompt_tokens: int = field(
        default=64, metadata={"help": "longest dataset prompt kept, in tokens; longer rows are skipped", "min": 1}
    )
    heldout_fraction: float = field(
        default=0.1,
        metadata={"help": "share of dataset prompts held out for evaluation (chosen by a hash of the id)", "min": 0},
    )

    def validate(self) -> None:
        # The family names are checked against their registry by data_mining.tasks.check_task_names.
        if len(self.task_weights) != len(self.tasks) or any(w <= 0 for w in self.task_weights):
            raise ConfigError(f"config key 'data.task_weights' needs one weight > 0 per data.tasks entry "
                              f"({len(self.tasks)}), got {list(self.task_weights)}")
        if self.max_digits < self.min_digits:
            raise ConfigError(
                f"config key 'data.max_digits' must be >= data.min_digits ({self.min_digits}), "
                f"got {self.max_digits}"
            )
        if self.dataset_weights and len(self.dataset_weights) != len(self.datasets):
            raise ConfigError(
                f"config key 'data.dataset_weights' needs one weight per data.datasets entry "
                f"({len(self.datasets)}), got {len(self.dataset_weights)}"
            )
        if any(w <= 0 for w in self.dataset_weights):
            raise ConfigError(f"config key 'data.dataset_weights' must all be > 0, got {list(self.dataset_weights)}")
        if self.heldout_fraction >= 1:
            raise ConfigError(f"config key 'data.heldout_fraction' must be < 1, got {self.heldout_fraction}")


@dataclass(frozen=True)
class RolloutConfig:
    samples_per_prompt: int = field(
        default=8,
        # Group-relative advantages (GRPO) compare samples of one prompt, so one sample learns nothing.
        metadata={"help": "completions sampled per prompt (the GRPO group size)", "min": 2},
    )
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature", "min": 0})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling mass, in (0, 1]"})
    max_new_tokens: int = field(
        default=24, metadata={"help": "most tokens generated per completion", "min": 1}
    )
    num_actors: int = field(default=2, metadata={"help": "number of rollout actors (vLLM engines)", "min": 1})
    cpus_per_actor: float = field(
        default=0.5, metadata={"help": "Ray CPUs reserved per rollout actor", "min": 0}
    )
    gpus_per_actor: float = field(
        default=0.0, metadata={"help": "Ray GPUs reserved per rollout actor (vLLM on GPU)", "min": 0}
    )
    placement: Strategy = field(default="pack", metadata={"help": PLACEMENT_HELP})
    node_resource: str | None = field(default=None, metadata={"help": NODE_RESOURCE_HELP})
    weight_transport: Literal["object_store", "nccl"] = field(
        default="object_store",
        metadata={"help": "how new weights reach the engines: object_store (rank 0 trainer publishes them once in "
                          "Ray's object store, every engine fetches them; CPU and across nodes) or nccl (GPU only, "
                          "not available in this build)"},
    )
    threads: int = field(
        default=1, metadata={"help": "torch/OMP threads in each rollout actor", "min": 1}
    )
    kv_cache_gib: float = field(
        default=1.0, metadata={"help": "KV-cache memory per rollout actor, whole GiB (vLLM's CPU backend sizes it in "
                                       "whole GiB: VLLM_CPU_KVCACHE_SPACE)", "min": 1}
    )
    enforce_eager: bool = field(default=True, metadata={"help": "skip torch.compile in vLLM"})
    record_routing: bool = field(
        default=True,
        metadata={"help": "record the experts vLLM routes each token to (routing replay, routing agreement)"},
    )
    logprob_gap_warn: float = field(
        default=1e-4,
        metadata={"help": "warn when the rollout/trainer log-prob gap exceeds this", "min": 0},
    )
    max_staleness: int = field(
        default=1,
        metadata={"help": "asynchronous training: the engines generate for the coming steps while the trainer "
                          "updates, and no sample trains a policy more than this many versions newer than its "
                          "oldest token; 0 = synchronous (generate, score, train, sync in turn)", "min": 0},
    )
    nice: int | None = field(
        default=None,
        metadata={"help": "added to the engines' CPU niceness (lower priority), so that where they share cores with "
                          "the trainer, the trainer (the step's critical path when generation overlaps training) "
                          "keeps its core and the engines take what it leaves; null = 4 when max_staleness > 0, "
                          "else 0", "min": 0},
    )
    partial: Literal["continue", "restart"] = field(
        default="continue",
        metadata={"help": "max_staleness > 0: requests in flight when new weights reach an engine continue under "
                          "them (each token keeps its version and sampling log-prob) or restart from the prompt"},
    )

    def validate(self) -> None:
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"config key 'rollout.top_p' must be in (0, 1], got {self.top_p}")
        _check_node_resource("rollout.node_resource", self.node_resource)
        if self.kv_cache_gib != int(self.kv_cache_gib):  # rounding it would change the memory asked for
            raise ConfigError(f"config key 'rollout.kv_cache_gib' must be a whole number of GiB (vLLM's CPU "
                              f"backend takes whole GiB), got {self.kv_cache_gib}")


@dataclass(frozen=True)
class SandboxConfig:
    # Per-run limits (the fields of `rewards.sandbox.Limits`, same names) and process-wide settings.
    wall_s: float = field(
        default=5.0, metadata={"help": "wall-clock seconds one program may run before its whole process tree is killed"}
    )
    cpu_s: float = field(default=4.0, metadata={"help": "CPU seconds per sandboxed process (RLIMIT_CPU)"})
    memory_bytes: int = field(
        default=1 << 30,
        metadata={"help": "memory cap, bytes, at most 4 GiB: per process (RLIMIT_AS) and, where per-run cgroups "
                          "work, for the whole tree", "min": 1},
    )
    processes: int = field(
        default=16,
        metadata={"help": "processes and threads a program may have (RLIMIT_NPROC, cgroup pids.max)", "min": 1},
    )
    file_bytes: int = field(
        default=16 << 20, metadata={"help": "largest file a program may write, bytes (RLIMIT_FSIZE)", "min": 0}
    )
    disk_bytes: int = field(
        default=64 << 20, metadata={"help": "size of a run's private working directory (tmpfs), bytes", "min": 1}
    )
    open_files: int = field(default=64, metadata={"help": "open files per process (RLIMIT_NOFILE)", "min": 1})
    output_bytes: int = field(
        default=1 << 20, metadata={"help": "stdout and stderr cap each, bytes; more kills the program", "min": 1}
    )
    workers: int = field(
        default=0, metadata={"help": "programs run at once per reward actor; 0 = one per usable CPU", "min": 0}
    )
    isolation: Literal["auto", "namespaces", "uid", "session"] = field(
        default="auto",
        metadata={"help": "auto = the strongest that works here (namespaces, else uid as root, else session: "
                          "rlimits and a process-group kill only)"},
    )
    cgroup: bool = field(
        default=True, metadata={"help": "give each run a cgroup (memory cap on the whole tree) where this process may"}
    )
    dedup: bool = field(
        default=True, metadata={"help": "identical code jobs in flight at once share one run"}
    )

    def validate(self) -> None:
        if not 0 < self.memory_bytes <= 4 << 30:
            raise ConfigError(
                f"config key 'reward.sandbox.memory_bytes' must be in (0, 4 GiB], got {self.memory_bytes}"
            )
        for key in ("wall_s", "cpu_s"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"config key 'reward.sandbox.{key}' must be > 0, got {getattr(self, key)}")


@dataclass(frozen=True)
class RewardConfig:
    num_actors: int = field(default=1, metadata={"help": "number of reward actors", "min": 1})
    cpus_per_actor: float = field(
        default=0.0, metadata={"help": "Ray CPUs reserved per reward actor", "min": 0}
    )
    gpus_per_actor: float = field(
        default=0.0, metadata={"help": "Ray GPUs reserved per reward actor (a reward model on GPU)", "min": 0}
    )
    placement: Strategy = field(default="pack", metadata={"help": PLACEMENT_HELP})
    node_resource: str | None = field(default=None, metadata={"help": NODE_RESOURCE_HELP})
    threads: int = field(
        default=4, metadata={"help": "worker threads per reward actor for reward calls", "min": 1}
    )
    timeout_s: float = field(
        default=30.0,
        metadata={"help": "seconds one reward call may take; past it the samples score 0 (an error)"},
    )
    custom: tuple[str, ...] = field(
        default=(),
        metadata={"help": "user rewards loaded at start-up: 'pkg.module:fn' or 'path/file.py:fn' ('name=' prefix renames)"},
    )
    routes: tuple[str, ...] = field(
        default=(),
        metadata={"help": "'DOMAIN=REWARD[:WEIGHT],...' entries replacing a domain's built-in rewards"},
    )
    reward_model_path: str | None = field(
        default=None,
        metadata={"help": "local HF sequence-classification checkpoint scoring the 'general' domain"},
    )
    reward_model_label: str | None = field(
        default=None,
        metadata={"help": "output scored by a multi-output reward model (name or index); null for one logit"},
    )
    reward_model_batch_size: int = field(
        default=8, metadata={"help": "samples per reward-model forward pass (and per call)", "min": 1}
    )
    reward_model_max_length: int = field(
        default=1024, metadata={"help": "most tokens per reward-model input (cut from the left)", "min": 1}
    )
    code_cache: int = field(
        default=100_000,
        metadata={"help": "entries in the code reward's verdict cache (identical program and tests run once); "
                          "0 = off", "min": 0},
    )
    overlap: bool = field(
        default=True,
        metadata={"help": "score each prompt's group as soon as its completions finish, while generation goes on; "
                          "false = score after all generation"},
    )
    sandbox: SandboxConfig = field(
        default_factory=SandboxConfig, metadata={"help": "the code reward's sandbox: limits per program, isolation"}
    )

    def validate(self) -> None:
        # The route syntax is checked by rewards.registry.check_routes, next to the parser.
        if self.timeout_s <= 0:
            raise ConfigError(f"config key 'reward.timeout_s' must be > 0, got {self.timeout_s}")
        _check_node_resource("reward.node_resource", self.node_resource)


@dataclass(frozen=True)
class TrainConfig:
    prompts_per_step: int = field(default=32, metadata={"help": "prompts per RL step", "min": 1})
    micro_batch_samples: int = field(
        default=64, metadata={"help": "samples per forward/backward micro-batch", "min": 1}
    )
    updates_per_step: int = field(
        default=1,
        metadata={"help": "optimiser steps per RL step, each over a slice of the batch", "min": 1},
    )
    lr: float = field(default=2e-4, metadata={"help": "learning rate", "min": 0})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay", "min": 0})
    drop_zero_variance_groups: bool = field(
        default=True,
        metadata={"help": "drop groups whose completions all got the same reward before the update (DAPO)"},
    )
    lr_schedule: Literal["constant", "cosine"] = field(
        default="cosine",
        metadata={"help": "after warmup: constant, or cosine decay to min_lr_ratio * lr at the last step"},
    )
    min_lr_ratio: float = field(
        default=0.1, metadata={"help": "final learning rate as a fraction of lr (cosine schedule)", "min": 0}
    )
    warmup_steps: int = field(
        default=0, metadata={"help": "linear learning-rate warmup, in optimiser steps", "min": 0}
    )
    grad_clip: float = field(
        default=1.0, metadata={"help": "max gradient norm; 0 disables clipping", "min": 0}
    )
    max_skipped_steps: int = field(
        default=3,
        metadata={"help": "RL steps in a row with an optimiser step skipped for a non-finite loss or gradient "
                          "norm before the run stops (weights untouched, last checkpoint kept)", "min": 1},
    )
    advantage: str = field(default="grpo", metadata={"help": "advantage estimator, by registered name"})
    policy_loss: str = field(
        default="ppo_clip", metadata={"help": "policy loss, by registered name"}
    )
    clip_low: float = field(
        default=0.2, metadata={"help": "lower ratio clip: ratio >= 1 - clip_low", "min": 0}
    )
    clip_high: float = field(
        default=0.2, metadata={"help": "upper ratio clip: ratio <= 1 + clip_high", "min": 0}
    )
    dual_clip: float = field(
        default=0.0,
        metadata={"help": "dual-clip constant c > 1: a negative-advantage token's loss is capped at -c A; "
                          "0 = off (ppo_clip only)", "min": 0},
    )
    loss_agg: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"] = field(
        default="token-mean", metadata={"help": "how per-token losses are reduced to one number"}
    )
    kl_coef: float = field(
        default=0.0, metadata={"help": "weight of the KL penalty to the reference model", "min": 0}
    )
    kl_estimator: Literal["k1", "k2", "k3"] = field(
        default="k3", metadata={"help": "KL estimator (Schulman's k1/k2/k3)"}
    )
    tis_cap: float = field(
        default=0.0,
        metadata={"help": "truncated importance sampling from rollout to trainer log-probs, weights capped at this; 0 = off", "min": 0},
    )
    decoupled: Literal["auto", "on", "off"] = field(
        default="auto",
        metadata={"help": "decoupled PPO (off-policy samples): clip the ratio against the trainer's pre-update "
                          "(proximal) policy and weight each token by proximal / behaviour probability, the "
                          "behaviour being the log-probs the token was sampled with (capped at tis_cap when > 0); "
                          "auto = on when rollout.max_staleness > 0"},
    )
    aux_loss_coef: float = field(
        default=0.0, metadata={"help": "weight of the expert load-balancing loss; 0 = off", "min": 0}
    )
    aux_loss_group_size: int = field(
        default=1,
        metadata={"help": "experts per EP group in the balance loss (balance across groups); 1 = per expert", "min": 1},
    )
    routing_replay: bool = field(
        default=True,
        metadata={"help": "force the trainer's MoE routers to use the experts vLLM used (needs rollout.record_routing)"},
    )
    advantage_norm_per_domain: bool = field(
        default=False,
        metadata={"help": "whiten advantages within each domain (zero mean, unit std), so no domain's reward scale dominates"},
    )
    num_actors: int = field(
        default=1,
        metadata={"help": "data-parallel trainer actors forming one torch.distributed group (gloo on CPU, nccl on "
                          "GPU); each runs forward/backward on its share of every step's samples", "min": 1},
    )
    cpus: float = field(default=1.0, metadata={"help": "Ray CPUs reserved per trainer actor", "min": 0})
    gpus: float = field(default=0.0, metadata={"help": "Ray GPUs reserved per trainer actor; > 0 trains on GPU",
                                               "min": 0})
    threads: int = field(default=1, metadata={"help": "torch/OMP threads in each trainer actor", "min": 1})
    placement: Strategy = field(default="pack", metadata={"help": PLACEMENT_HELP})
    node_resource: str | None = field(default=None, metadata={"help": NODE_RESOURCE_HELP})

    def validate(self) -> None:
        if 0 < self.dual_clip <= 1:
            raise ConfigError(f"config key 'train.dual_clip' must be 0 (off) or > 1, got {self.dual_clip}")
        _check_node_resource("train.node_resource", self.node_resource)
        # The process group's address is found in rank 0's reserved bundle, so there must be one.
        if self.num_actors > 1 and self.cpus == 0 and self.gpus == 0:
            raise ConfigError(f"config key 'train.num_actors' = {self.num_actors} needs train.cpus or train.gpus > 0 "
                              "(each data-parallel trainer reserves a bundle)")


@dataclass(frozen=True)
class EvalConfig:
    samples_per_prompt: int = field(
        default=4, metadata={"help": "completions sampled per held-out prompt", "min": 1}
    )
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature", "min": 0})
    max_new_tokens: int | None = field(
        default=None,
        metadata={"help": "most tokens per completion; null = rollout.max_new_tokens", "min": 1},
    )
    before: bool = field(default=True, metadata={"help": "evaluate before the first RL step"})
    after: bool = field(default=True, metadata={"help": "evaluate after the last RL step"})


@dataclass(frozen=True)
class MiningConfig:
    enabled: bool = field(
        default=True,
        metadata={"help": "iterative hard-example mining; false = shuffled epochs with zero-variance groups dropped"},
    )
    too_hard_max: float = field(
        default=0.1, metadata={"help": "a prompt whose posterior mean pass rate is <= this is too_hard", "min": 0}
    )
    solved_min: float = field(
        default=0.9, metadata={"help": "a prompt whose posterior mean pass rate is >= this is solved", "min": 0}
    )
    decay: float = field(
        default=1.0,
        metadata={"help": "share of a prompt's earlier evidence kept at each new group of it with reward variance "
                          "(one the update trains on: the policy moves most on the prompts it trains on), on top of "
                          "the version discount; uniform groups keep it all, so a prompt that stays solved or out "
                          "of reach is parked; 1 = versions only", "min": 0},
    )
    evidence_half_life: float = field(
        default=50.0,
        metadata={"help": "policy versions after which a scored group weighs half in its prompt's pass-rate "
                          "posterior (0 = evidence never fades)", "min": 0},
    )
    prior_strength: float = field(
        default=2.0,
        metadata={"help": "pseudo-attempts of a prompt's Beta prior, centred on its domain's (difficulty "
                          "level's) pooled pass rate", "min": 0.01},
    )
    park_min_evidence: float = field(
        default=10.0,
        metadata={"help": "discounted attempts a prompt needs before it is parked as too_hard or solved", "min": 0},
    )
    draw: Literal["thompson", "weighted"] = field(
        default="thompson",
        metadata={"help": "how a step's prompts are picked from their usefulness under the posterior: thompson = "
                          "a pass rate sampled from each prompt's Beta, the prompts whose sample gives the best "
                          "chance of a group with reward variance (explores uncertain prompts, exploits known "
                          "ones); weighted = drawn in proportion to that chance under the whole posterior"},
    )
    parked_draw_weight: float = field(
        default=0.05,
        metadata={"help": "factor on a parked prompt's draw weight (its chance of a group with reward variance): "
                          "parked prompts are drawn rarely, never never", "min": 0},
    )
    offline_pass: bool = field(
        default=False,
        metadata={"help": "before RL, estimate every train prompt's pass rate with mining.estimate_samples samples"},
    )
    estimate_samples: int = field(
        default=8, metadata={"help": "samples per prompt in the offline pass and in re-mining", "min": 1}
    )
    remine_after_versions: int = field(
        default=50,
        metadata={"help": "a parked prompt is due for re-estimation once this many policy versions passed since "
                          "its last evidence (sooner as its domain's pass rate moves); 0 = no re-mining", "min": 0},
    )
    remine_drift: float = field(
        default=0.15,
        metadata={"help": "a parked prompt is also due once its domain's pooled pass rate moved this much since "
                          "its last evidence", "min": 0.001},
    )
    remine_min_share: float = field(
        default=0.05,
        metadata={"help": "share of a step's rollouts (prompts_per_step x samples_per_prompt) spent re-estimating "
                          "due parked prompts while the learnable pool is full", "min": 0},
    )
    remine_max_share: float = field(
        default=0.25,
        metadata={"help": "the same share once the learnable pool is empty (in between: in proportion to what "
                          "is missing from mining.learnable_reserve)", "min": 0},
    )
    learnable_reserve: float = field(
        default=4.0,
        metadata={"help": "steps' worth of prompts (x train.prompts_per_step) the learnable and unseen bands "
                          "should hold; below it re-mining grows and procedural tasks are generated", "min": 0},
    )
    refill: bool = field(
        default=True,
        metadata={"help": "when a domain's learnable pool runs low, its procedural task family generates new "
                          "prompts at the difficulty where the pass rate is near 0.5 (procedural tasks only)"},
    )
    refill_keep_rate: float = field(
        default=0.75,
        metadata={"help": "a domain whose drawn groups had reward variance less often than this of late is "
                          "refilled too (its ledger lags a policy that learns its prompts)", "min": 0},
    )
    refill_prompts: int = field(
        default=64, metadata={"help": "prompts generated per refill of a domain", "min": 1}
    )
    refill_max_difficulty: int = field(
        default=4,
        metadata={"help": "hardest difficulty level a generator may reach (arithmetic: operand digits; code and "
                          "instruction have levels 1-3)", "min": 1},
    )
    refill_max_prompts: int = field(
        default=20000, metadata={"help": "most prompts generated in a whole run", "min": 0}
    )
    draw_confidence: float = field(
        default=0.5,
        metadata={"help": "each draw is sized so that, at the recent share of drawn groups with reward variance, it "
                          "fills the step with this probability: above 0.5, one larger round of generation instead of "
                          "a second small one (the surplus useful groups train too), but the larger draw reaches "
                          "further down the ranking; 0.5 = the expected need only", "min": 0.5},
    )
    overdraw_budget: float = field(
        default=4.0,
        metadata={"help": "most prompts drawn in one step, as a multiple of train.prompts_per_step; past it the "
                          "step trains on the learnable groups it has", "min": 1},
    )
    domain_mixing: Literal["adaptive", "fixed"] = field(
        default="adaptive",
        metadata={"help": "per-domain quotas: adapted toward domains with learnable prompts and headroom, or fixed"},
    )
    domain_weights: tuple[str, ...] = field(
        default=(),
        metadata={"help": "'DOMAIN=WEIGHT' entries for fixed mixing; unlisted domains weigh 1"},
    )
    domain_floor: float = field(
        default=0.1, metadata={"help": "adaptive mixing: least share of a step's prompts per domain", "min": 0}
    )

    def validate(self) -> None:
        if not self.too_hard_max < self.solved_min <= 1:
            raise ConfigError(
                f"config key 'mining.solved_min' must be in (mining.too_hard_max, 1] = ({self.too_hard_max}, 1], "
                f"got {self.solved_min}"
            )
        for key in ("decay", "domain_floor", "parked_draw_weight", "remine_min_share", "remine_max_share",
                    "refill_keep_rate", "draw_confidence"):
            if getattr(self, key) > 1:
                raise ConfigError(f"config key 'mining.{key}' must be <= 1, got {getattr(self, key)}")
        if self.remine_min_share > self.remine_max_share:
            raise ConfigError(f"config key 'mining.remine_max_share' must be >= mining.remine_min_share "
                              f"({self.remine_min_share}), got {self.remine_max_share}")
        for i, text in enumerate(self.domain_weights):
            domain, sep, weight = text.partition("=")
            if not sep or not domain.strip() or not _FLOAT_TEXT.fullmatch(weight.strip()) or float(weight) < 0:
                raise ConfigError(
                    f"config key 'mining.domain_weights[{i}]' must be 'DOMAIN=WEIGHT' with WEIGHT >= 0, got {text!r}"
                )


@dataclass(frozen=True)
class MonitorConfig:
    dashboard_host: str = field(
        default="127.0.0.1",
        metadata={"help": "address a local Ray's dashboard binds to; 0.0.0.0 exposes it to the network"},
    )
    dashboard_port: int = field(
        default=8265, metadata={"help": "a local Ray's dashboard port (the next free one if taken)", "min": 1}
    )
    ray_metrics: bool = field(
        default=True, metadata={"help": "export the RL metrics as Ray metrics (dashboard, Prometheus)"}
    )
    tensorboard: bool = field(
        default=True, metadata={"help": "write TensorBoard event files to <run.dir>/tensorboard"}
    )
    wandb: bool = field(
        default=False,
        metadata={"help": "also log to Weights & Biases (needs the wandb package; WANDB_PROJECT names the project)"},
    )
    progress: Literal["auto", "bar", "lines"] = field(
        default="auto",
        metadata={"help": "progress: one line updated in place (bar), a line per step (lines), bar on a terminal (auto)"},
    )

    def validate(self) -> None:
        # Checked at load, so a missing package stops the run before Ray and the models start.
        for key, module in (("tensorboard", "tensorboard"), ("wandb", "wandb")):
            if getattr(self, key) and importlib.util.find_spec(module) is None:
                raise ConfigError(
                    f"config key 'monitor.{key}' is true but the {module} package is not installed "
                    f"(pip install {module}, or set monitor.{key}=false)"
                )


@dataclass(frozen=True)
class Config:
    run: RunConfig = field(
        default_factory=RunConfig, metadata={"help": "run directory, length, seed and Ray placement"}
    )
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "the policy model"})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "prompts: the procedural task or datasets"})
    rollout: RolloutConfig = field(
        default_factory=RolloutConfig, metadata={"help": "sampling of training completions"}
    )
    reward: RewardConfig = field(default_factory=RewardConfig, metadata={"help": "reward actors"})
    train: TrainConfig = field(
        default_factory=TrainConfig, metadata={"help": "optimisation and the RL objective"}
    )
    eval: EvalConfig = field(default_factory=EvalConfig, metadata={"help": "held-out evaluation"})
    mining: MiningConfig = field(
        default_factory=MiningConfig,
        metadata={"help": "hard-example mining: pass-rate bands, dynamic sampling, re-mining, domain mixing"},
    )
    monitor: MonitorConfig = field(
        default_factory=MonitorConfig, metadata={"help": "Ray dashboard, metric sinks and progress display"}
    )

    def validate(self) -> None:
        if self.train.routing_replay and not self.rollout.record_routing:
            raise ConfigError(
                "config key 'train.routing_replay' needs rollout.record_routing=true (nothing to replay)"
            )
        if self.train.num_actors > 1 and self.rollout.max_staleness:
            raise ConfigError(f"config key 'train.num_actors' = {self.train.num_actors} is not supported with "
                              f"rollout.max_staleness = {self.rollout.max_staleness} yet (the asynchronous loop "
                              "drives one trainer): set rollout.max_staleness=0 for several trainers")


# --- loading --------------------------------------------------------------------------------------

# PyYAML follows YAML 1.1, which reads `1e-5` (no dot) as a string; a float field accepts exactly
# such number-shaped strings, nothing looser (no "nan", "1_0" or padding).
_FLOAT_TEXT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")
_NONE = type(None)


NameChecks = Mapping[str, Callable[[Any], None]]  # section name -> check of that section


def load_config(
    path: str | os.PathLike[str] | None, overrides: Sequence[str] = (), checks: NameChecks | None = None
) -> Config:
    """Read `path` (None: all defaults), apply `KEY=VALUE` overrides in order, check, and freeze.

    `checks` are the registries' own checks of the names a section refers to (algorithms, task
    families, reward routes: e.g. {"train": rl.objective.check_names}), each raising ConfigError
    naming the key: the registries live with their packages, so the config tree imports none of them.
    """
    raw = _read_yaml(path) if path is not None else {}
    for text in overrides:
        _apply_override(raw, text)
    cfg = _build(Config, raw, "")
    for section, check in (checks or {}).items():
        check(getattr(cfg, section))
    return cfg


def _read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file '{path}': {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file '{path}' is not valid YAML: {exc}") from None
    if data is None:  # an empty file means all defaults
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file '{path}' must be a mapping of sections, got {type(data).__name__}"
        )
    return data


def _apply_override(raw: dict[str, Any], text: str) -> None:
    key, sep, value_text = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"bad override {text!r} (expected KEY=VALUE)")
    try:
        value = yaml.safe_load(value_text)
    except yaml.YAMLError:
        raise ConfigError(f"bad override {text!r}: the value is not valid YAML") from None

    # Walk the schema, not just the dict, so a typo is reported against the known keys right here.
    *parents, leaf = key.split(".")
    cls: Any = Config
    node = raw
    prefix = ""
    for part in parents:
        tp = _field_type(cls, part, prefix)
        path = _join(prefix, part)
        if not dataclasses.is_dataclass(tp):
            raise ConfigError(f"unknown config key '{key}' ('{path}' is not a section)")
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise ConfigError(f"config key '{path}' expects a mapping, got {_describe(child)}")
        cls, node, prefix = tp, child, path
    tp = _field_type(cls, leaf, prefix)
    if dataclasses.is_dataclass(tp):
        # Replacing a whole section would silently drop what the file set in it.
        raise ConfigError(f"config key '{key}' is a section; override its fields as '{key}.NAME=VALUE'")
    if isinstance(value, (bool, int, float)) and _accepts_str(tp):
        value = value_text.strip()  # `run.dir=2024` means the string, not the number
    node[leaf] = value


def _field_type(cls: Any, name: str, prefix: str) -> Any:
    hints = get_type_hints(cls)
    if name not in hints:
        raise _unknown_key(cls, prefix, name)
    return hints[name]


def _accepts_str(tp: Any) -> bool:
    return tp is str or (get_origin(tp) in (Union, types.UnionType) and str in get_args(tp))


def _build(cls: Any, data: Any, prefix: str) -> Any:
    if data is None:  # a section written as `eval:` with nothing under it keeps its defaults
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"config key '{prefix}' expects a mapping, got {_describe(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in data:
        if name not in fields:
            raise _unknown_key(cls, prefix, name)
    hints = get_type_hints(cls)
    kwargs = {}
    # Defaults go through the same checks as given values, so a bad default fails at every load.
    for name, f in fields.items():
        key = _join(prefix, name)
        if name in data:
            value = data[name]
        elif f.default is not dataclasses.MISSING:
            value = f.default
        elif dataclasses.is_dataclass(hints[name]):
            value = {}
        else:
            value = f.default_factory()
        value = _check(value, hints[name], key)
        low = f.metadata.get("min")
        if low is not None and value is not None and value < low:
            raise ConfigError(f"config key '{key}' must be >= {low}, got {value}")
        kwargs[name] = value
    instance = cls(**kwargs)
    validate = getattr(instance, "validate", None)
    if validate is not None:
        validate()
    return instance


def _check(value: Any, tp: Any, key: str) -> Any:
    """Return `value` as type `tp` (only int -> float and number text -> float convert) or raise."""
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and _NONE in args:
            return None
        (inner,) = [a for a in args if a is not _NONE]
        return _check(value, inner, key)
    if origin is Literal:
        if any(type(value) is type(choice) and value == choice for choice in args):
            return value
        raise ConfigError(f"config key '{key}' must be one of {list(args)}, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _type_error(key, tp, value)
        # list[T] and tuple[T, ...] both name the element type first.
        return origin(_check(item, args[0], f"{key}[{i}]") for i, item in enumerate(value))
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, float):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"config key '{key}' has unsupported type {tp!r}")
    raise _type_error(key, tp, value)


def _type_error(key: str, tp: Any, value: Any) -> ConfigError:
    return ConfigError(f"config key '{key}' expects {_type_name(tp)}, got {_describe(value)}")


def _unknown_key(cls: Any, prefix: str, name: Any) -> ConfigError:
    known = ", ".join(f.name for f in dataclasses.fields(cls))
    where = f"known keys in '{prefix}'" if prefix else "known sections"
    return ConfigError(f"unknown config key '{_join(prefix, name)}' ({where}: {known})")


def _describe(value: Any) -> str:
    return "null" if value is None else f"{type(value).__name__} {value!r}"


def _join(prefix: str, name: Any) -> str:
    return f"{prefix}.{name}" if prefix else str(name)


def _type_name(tp: Any) -> str:
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        return " | ".join("None" if a is _NONE else _type_name(a) for a in args)
    if origin is Literal:
        return "{" + ",".join(str(a) for a in args) + "}"
    if origin is list:
        return f"list[{_type_name(args[0])}]"
    if origin is tuple:
        return f"tuple[{_type_name(args[0])}, ...]"
    return tp.__name__


# --- saving and help ------------------------------------------------------------------------------


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain nested dicts, lists and scalars (YAML-dumpable)."""
    return {f.name: _plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return config_to_dict(value)
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def save_config(cfg: Config, path: str | os.PathLike[str]) -> None:
    """Write `cfg` as YAML that `load_config` reads back to an equal Config."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def format_help(cls: Any = Config) -> str:
    """One `section.key  TYPE  (default: X)  help` line per field, grouped by section."""
    hints = get_type_hints(cls)
    groups = []
    for section in dataclasses.fields(cls):
        groups.append((f"{section.name}: {section.metadata['help']}", _help_rows(hints[section.name], section.name)))
    widths = [max(len(row[i]) for _, rows in groups for row in rows) for i in range(3)]
    lines = []
    for title, rows in groups:
        lines.append(title)
        for row in rows:
            cells = [cell.ljust(width) for cell, width in zip(row, widths)]
            lines.append("  " + "  ".join([*cells, row[3]]))
    return "\n".join(lines)


def _help_rows(section_cls: Any, prefix: str) -> list[tuple[str, str, str, str]]:
    """(key, type, default, help) for every field of a section, nested sections' fields included."""
    section_hints = get_type_hints(section_cls)
    rows = []
    for f in dataclasses.fields(section_cls):
        tp, text = section_hints[f.name], f.metadata["help"]
        if dataclasses.is_dataclass(tp):
            rows += _help_rows(tp, f"{prefix}.{f.name}")
            continue
        if get_origin(tp) is Literal:  # a long list of choices would stretch the type column
            tp, text = str, f"{text}; one of: {', '.join(get_args(tp))}"
        rows.append((f"{prefix}.{f.name}", _type_name(tp), f"(default: {_show(_default(f))})", text))
    return rows


def _default(f: dataclasses.Field[Any]) -> Any:
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def _show(value: Any) -> str:
    # Written the way an override would spell it.
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_show(item) for item in value) + "]"
    return str(value)


# --- command line ---------------------------------------------------------------------------------


def parse_cli(
    argv: Sequence[str] | None = None, description: str = "", checks: NameChecks | None = None
) -> tuple[Config, argparse.Namespace]:
    """Parse `[--config PATH] [--ray-address ADDR] [--dry-run] [KEY=VALUE ...]` into a Config,
    checked by `checks` too (see `load_config`).

    A bad config prints `error: <message>` on stderr and exits with status 2, like argparse.
    """
    parser = argparse.ArgumentParser(
        description=description,
        epilog="config keys (override as KEY=VALUE):\n" + format_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        metavar="PATH",
        default=DEFAULT_CONFIG_PATH if os.path.exists(DEFAULT_CONFIG_PATH) else None,
        help="YAML config file; none means all defaults (default: %(default)s)",
    )
    parser.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="shortcut for run.ray_address=ADDR (a KEY=VALUE override still wins)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="set up and check everything, but run no RL steps"
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.lr=1e-5"
    )
    # Intermixed, so options may follow overrides: `run_rl.py train.lr=1e-5 --dry-run`.
    args = parser.parse_intermixed_args(argv)
    overrides = list(args.overrides)
    if args.ray_address is not None:
        overrides.insert(0, f"run.ray_address={args.ray_address}")
    try:
        cfg = load_config(args.config, overrides, checks)
    except ConfigError as exc:
        parser.exit(2, f"error: {exc}\n")
    return cfg, args
