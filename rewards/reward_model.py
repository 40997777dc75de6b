"""The *general* domain: a reward model, i.e. any local Hugging Face sequence-classification
checkpoint, scoring (prompt, completion) pairs in batches.

Input text: when the tokenizer has a chat template, the conversation [user: prompt, assistant:
completion] rendered by it (the form chat reward models are trained on); otherwise prompt +
completion. Inputs longer than `max_length` tokens are cut from the left, so the end of the
completion, where a decoder classifier reads its score, survives. Each call sorts its samples by
length before padding and returns results in input order.

Score mapping (`RewardResult.score`):
- one output (`num_labels = 1`, the usual Bradley-Terry reward model): sigmoid(logit), in (0, 1),
  0.5 at logit 0 (the logit itself is the `logit` component);
- several outputs (a classifier such as bad/good): the softmax probability of `label`, a name from
  the checkpoint's `id2label` or an index.
`passed` is score >= 0.5.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from rewards.custom import RewardLoadError
from rewards.registry import RewardResult, reward
from rl.types import Sample

PASS_THRESHOLD = 0.5


def label_index(config: Any, label: str | None) -> int | None:
    """Index of the scored output: None for a one-output model; ValueError for a bad `label`."""
    if config.num_labels == 1:
        if label is not None:
            raise ValueError(f"the model has one output (a reward logit); do not set a label (got {label!r})")
        return None
    names = {str(name): int(i) for i, name in config.id2label.items()}
    if label is None:
        raise ValueError(f"the model has {config.num_labels} outputs {sorted(names)}: set the label to score")
    if label in names:
        return names[label]
    if label.isdigit() and int(label) < config.num_labels:
        return int(label)
    raise ValueError(f"label {label!r} is neither an output name {sorted(names)} nor an index < {config.num_labels}")


class RewardModel:
    """A batched reward (`samples -> results`) backed by a sequence-classification checkpoint.

    The config is checked at construction; the weights load on `load()` (or the first call), so the
    driver can validate the setting without loading the model.
    """

    def __init__(self, path: str, label: str | None = None, batch_size: int = 8, max_length: int = 1024) -> None:
        from transformers import AutoConfig

        if not (Path(path) / "config.json").is_file():
            raise ValueError(f"{path!r} is not a Hugging Face checkpoint directory (no config.json)")
        self.path, self.batch_size, self.max_length = str(path), batch_size, max_length
        self.index = label_index(AutoConfig.from_pretrained(path), label)
        self.model: Any = None
        self.tokenizer: Any = None
        self._lock = threading.Lock()

    def load(self) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        with self._lock:
            if self.model is not None:
                return
            tokenizer = AutoTokenizer.from_pretrained(self.path)
            tokenizer.truncation_side, tokenizer.padding_side = "left", "right"
            if tokenizer.pad_token is None:
                if tokenizer.eos_token is None:
                    raise ValueError(f"reward model {self.path!r}: the tokenizer has neither a pad nor an eos token")
                tokenizer.pad_token = tokenizer.eos_token
            model = AutoModelForSequenceClassification.from_pretrained(self.path, dtype=torch.float32)
            # Decoder classifiers read the last non-pad token, so they must know the pad id.
            model.config.pad_token_id = tokenizer.pad_token_id
            self.tokenizer, self.model = tokenizer, model.eval()

    def text(self, prompt: str, completion: str) -> str:
        if self.tokenizer.chat_template:
            messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
            return self.tokenizer.apply_chat_template(messages, tokenize=False)
        return prompt + completion

    def logits(self, pairs: list[tuple[str, str]]) -> list[list[float]]:
        """Output logits per (prompt, completion) pair, in input order. [N, num_labels]"""
        import torch

        self.load()
        texts = [self.text(p, c) for p, c in pairs]
        chat = bool(self.tokenizer.chat_template)  # a rendered template already holds its special tokens
        lengths = [len(ids) for ids in self.tokenizer(texts, add_special_tokens=not chat)["input_ids"]]
        order = sorted(range(len(texts)), key=lengths.__getitem__)  # similar lengths pad less
        out: list[list[float]] = [[] for _ in texts]
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            enc = self.tokenizer(
                [texts[i] for i in chunk], padding=True, truncation=True, max_length=self.max_length,
                add_special_tokens=not chat, return_tensors="pt",
            )
            with torch.inference_mode():
                logits = self.model(**enc).logits.float()  # [b, num_labels]
            for i, row in zip(chunk, logits.tolist()):
                out[i] = row
        return out

    def __call__(self, samples: list[Sample]) -> list[RewardResult]:
        import torch

        results = []
        for row in self.logits([(s.prompt, s.completion) for s in samples]):
            logits = torch.tensor(row)  # [num_labels]
            if self.index is None:
                score, components = float(torch.sigmoid(logits[0])), {"logit": float(logits[0])}
            else:
                score, components = float(torch.softmax(logits, -1)[self.index]), {}
            results.append(RewardResult(score, components, passed=score >= PASS_THRESHOLD))
        return results


_MODELS: dict[tuple, RewardModel] = {}


def register_reward_model(path: str, label: str | None = None, batch_size: int = 8, max_length: int = 1024,
                          load: bool = True, name: str = "reward_model") -> RewardModel:
    """Register a `RewardModel` as the batched reward `name` (at most `batch_size` samples per call);
    the same settings give the same object, so registering twice is harmless. RewardLoadError names
    the setting when the checkpoint or label is wrong."""
    key = (str(Path(path).resolve()), label, batch_size, max_length)
    try:
        model = _MODELS.get(key) or RewardModel(path, label, batch_size, max_length)
        if load:
            model.load()
    except (OSError, ValueError) as exc:
        raise RewardLoadError(f"reward.reward_model_path {path!r}: {exc}") from exc
    _MODELS[key] = model
    try:
        reward(name, batched=True, max_batch=batch_size)(model)
    except ValueError as exc:
        raise RewardLoadError(f"reward.reward_model_path {path!r}: {exc}") from exc
    return model
