"""The driver's prompts: train and held-out rows from the configured datasets or procedural tasks."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Collection

from data_mining.datasets import DatasetError, load_datasets, split_heldout
from data_mining.tasks import make_task_split
from rl.config import Config


def _tokenizer(cfg: Config) -> Any:
    """The checkpoint's tokenizer, or None for a checkpoint still to be bootstrapped."""
    if not (Path(cfg.model.path) / "config.json").exists():
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(cfg.model.path)


def load_prompts(cfg: Config, routed: Collection[str] | None = None) -> tuple[list[dict], list[dict]]:
    """Train and held-out rows: the configured datasets, validated (bad rows reported; `routed`: the
    domains some reward scores, rows of others are bad rows), or the procedural tasks. Raises
    DatasetError naming the problem when no usable split comes out."""
    tokenizer = _tokenizer(cfg)  # without one (to be bootstrapped), dataset lengths count bytes
    if cfg.data.datasets:
        rows, report = load_datasets(cfg.data.datasets, cfg.data.dataset_weights, tokenizer, cfg.data.max_prompt_tokens,
                                     routed)
        print(report.summary(), flush=True)
        train, heldout = split_heldout(rows, cfg.data.heldout_fraction, cfg.data.heldout_prompts)
        if not train or (not heldout and (cfg.eval.before or cfg.eval.after)):
            raise DatasetError(f"{len(rows)} valid dataset rows split into {len(train)} train / {len(heldout)} "
                               "held-out prompts; adjust data.heldout_fraction (or set eval.before=false "
                               "eval.after=false)")
        return train, heldout
    train, heldout = make_task_split(
        list(cfg.data.tasks), list(cfg.data.task_weights), cfg.data.train_prompts, cfg.data.heldout_prompts,
        seed=cfg.run.seed, min_digits=cfg.data.min_digits, max_digits=cfg.data.max_digits,
    )
    if tokenizer is None:
        return train, heldout
    # Another checkpoint's tokenizer may spell the procedural prompts longer.
    fits = lambda row: len(tokenizer(row["prompt"])["input_ids"]) <= cfg.data.max_prompt_tokens  # noqa: E731
    kept_train, kept_heldout = [r for r in train if fits(r)], [r for r in heldout if fits(r)]
    if len(kept_train) < len(train) or len(kept_heldout) < len(heldout):
        print(f"skipped {len(train) - len(kept_train)} train / {len(heldout) - len(kept_heldout)} held-out "
              f"procedural prompts longer than data.max_prompt_tokens={cfg.data.max_prompt_tokens}", flush=True)
    if not kept_train:
        raise DatasetError(f"every procedural train prompt is longer than data.max_prompt_tokens="
                           f"{cfg.data.max_prompt_tokens} tokens with the tokenizer of {cfg.model.path}")
    return kept_train, kept_heldout
