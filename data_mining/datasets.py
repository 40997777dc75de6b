"""Prompt datasets: loading, validation and mixing.

A dataset is a JSONL file (one JSON object a line), a Parquet file, or a directory written by
`datasets.Dataset.save_to_disk` (a `DatasetDict` gives its `train` split, or its only split).
Every row is one prompt:

    id        str, unique across all datasets of a run
    domain    str: math, code, instruction, general, or any domain with a registered reward
    prompt    str: the text given to the model, as is          } exactly one of the two
    messages  list of {"role": str, "content": str}: a chat,     }
              rendered with the checkpoint's chat template
    ...       the domain's reference fields, required where listed:
              math: answer (str or number); code: tests (list of str or str), entry_point (str,
              optional); instruction: constraints (IFEval format: instruction_id_list, kwargs).
              Any other field (e.g. `format`, `max_tokens`) is passed to the rewards as well.

A null value counts as absent (Parquet stores missing fields as null). A row that breaks the
schema (a JSONL line that is not UTF-8 or not JSON included), whose domain no reward scores (given
the run's routed domains), whose code tests do not parse, whose IFEval constraints name an unknown
instruction, whose prompt is longer than `max_prompt_tokens`, or whose id was seen before, is
skipped and counted with its reason; `LoadReport` lists every skipped row with its 1-based line
(JSONL) or row number, and its summary shows the first few of each reason. `messages` rows on a
tokenizer without a chat template are kept, rendered with `PLAIN_CHAT_FALLBACK`, and warned about.

Rows come out in the pipeline's row shape: `{"id", "domain", "prompt", "reference", "source"}`,
plus `"weight"` (the row's sampling weight) when datasets are mixed with explicit weights.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Collection, Iterator, Sequence

from data_mining.tasks import is_heldout
from rewards.code import build_test_program
from rewards.instruction import parse_constraints
from rl.jsonl import iter_jsonl

CORE_FIELDS = ("id", "domain", "prompt", "messages")
# Per domain: (field, accepted types, required). Types are checked on every row that has the field.
DOMAIN_FIELDS: dict[str, tuple[tuple[str, tuple[type, ...], bool], ...]] = {
    "math": (("answer", (str, int, float), True),),
    "code": (("tests", (list, str), True), ("entry_point", (str,), False)),
    "instruction": (("constraints", (dict,), True),),
}
PLAIN_CHAT_FALLBACK = "{role}: {content}\n"  # one line per message, then "assistant: "
EXAMPLES_PER_REASON = 3  # bad rows shown per reason in `LoadReport.summary`


class DatasetError(ValueError):
    """A dataset cannot be used at all (unreadable, empty, or no valid row); names the file."""


@dataclass
class BadRow:
    source: str
    line: int  # 1-based line of a JSONL file (blank lines count), or 1-based row of a Parquet file or directory
    reason: str  # not_an_object, missing_field, wrong_type, unrouted_domain, bad_tests, bad_constraints,
    # prompt_too_long, duplicate_id
    detail: str


@dataclass
class LoadReport:
    rows_read: Counter = field(default_factory=Counter)  # per source
    rows_kept: Counter = field(default_factory=Counter)
    bad: list[BadRow] = field(default_factory=list)
    plain_chat: Counter = field(default_factory=Counter)  # per source: messages rows rendered without a template

    def reasons(self) -> Counter:
        return Counter(b.reason for b in self.bad)

    def summary(self) -> str:
        lines = []
        for source, n in self.rows_read.items():
            skipped = Counter(b.reason for b in self.bad if b.source == source)
            why = ", ".join(f"{k} {v}" for k, v in sorted(skipped.items())) or "none"
            lines.append(f"dataset {source}: {self.rows_kept[source]} of {n} rows kept; skipped: {why}")
            lines += self.examples(source)
            if self.plain_chat[source]:
                lines.append(f"warning: {self.plain_chat[source]} messages rows of {source} rendered as plain "
                             "'role: content' lines: the tokenizer has no chat template")
        return "\n".join(lines)

    def examples(self, source: str) -> list[str]:
        """The first `EXAMPLES_PER_REASON` bad rows of `source` per reason, one indented line each."""
        lines = []
        for reason in sorted({b.reason for b in self.bad if b.source == source}):
            first = [b for b in self.bad if b.source == source and b.reason == reason][:EXAMPLES_PER_REASON]
            lines += [f"  line {b.line}: {reason}: {b.detail}" for b in first]
        return lines


def render_messages(messages: list[dict[str, str]], tokenizer: Any = None) -> str:
    """The chat as one prompt string: the tokenizer's chat template with the assistant turn opened,
    or, when there is none, `PLAIN_CHAT_FALLBACK` per message followed by "assistant: "."""
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "".join(PLAIN_CHAT_FALLBACK.format(**m) for m in messages) + "assistant: "


def token_counter(tokenizer: Any = None) -> Callable[[str], int]:
    """Prompt length in the tokenizer's tokens; without a tokenizer, in UTF-8 bytes (an upper bound
    for byte-level BPE tokenizers, so the limit is never exceeded)."""
    if tokenizer is None:
        return lambda text: len(text.encode())
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def read_rows(path: str | Path) -> Iterator[tuple[int, Any]]:
    """(1-based line or row number, raw row) of one dataset file or directory, in file order (a bad
    JSON line yields its error)."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"dataset {str(path)!r} does not exist")
    if path.is_dir():
        import datasets

        try:
            data = datasets.load_from_disk(str(path))
        except (FileNotFoundError, ValueError) as exc:
            raise DatasetError(f"dataset {str(path)!r} is not a saved `datasets` directory: {exc}") from None
        if isinstance(data, datasets.DatasetDict):
            if "train" in data:
                data = data["train"]
            elif len(data) == 1:
                data = next(iter(data.values()))
            else:
                raise DatasetError(f"dataset {str(path)!r} has splits {sorted(data)} and none is 'train'")
        yield from enumerate(data, start=1)
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
            raise DatasetError(f"dataset {str(path)!r} is not a readable Parquet file: {exc}") from None
        yield from enumerate(table.to_pylist(), start=1)
    elif path.suffix in (".jsonl", ".json"):
        yield from iter_jsonl(path)
    else:
        raise DatasetError(f"dataset {str(path)!r}: unknown format (expected .jsonl, .parquet or a directory)")


def _check_row(raw: Any, routed: Collection[str] | None = None) -> tuple[str, str] | None:
    """(reason, detail) when the row breaks the schema or no reward scores its domain (`routed`:
    the run's routed domains; None: not checked), else None."""
    if isinstance(raw, json.JSONDecodeError):
        return "not_an_object", f"invalid JSON: {raw.msg}"
    if not isinstance(raw, dict):
        return "not_an_object", f"a row must be an object, got {type(raw).__name__}"
    row = {k: v for k, v in raw.items() if v is not None}
    for name in ("id", "domain"):
        if name not in row:
            return "missing_field", name
        if not isinstance(row[name], str) or not row[name]:
            return "wrong_type", f"{name} must be a non-empty string, got {row[name]!r}"
    if routed is not None and row["domain"] not in routed:
        return "unrouted_domain", f"no reward scores domain {row['domain']!r}; routed: {sorted(routed)}"
    if "prompt" not in row and "messages" not in row:
        return "missing_field", "prompt or messages"
    if "prompt" in row and "messages" in row:
        return "wrong_type", "a row has prompt or messages, not both"
    if "prompt" in row and not isinstance(row["prompt"], str):
        return "wrong_type", f"prompt must be a string, got {type(row['prompt']).__name__}"
    if "messages" in row:
        messages = row["messages"]
        if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages
        ):
            return "wrong_type", "messages must be a non-empty list of {role: str, content: str}"
    for name, types, required in DOMAIN_FIELDS.get(row["domain"], ()):
        if name not in row:
            if required:
                return "missing_field", f"{name} (required for domain {row['domain']!r})"
            continue
        value = row[name]
        if not isinstance(value, types) or isinstance(value, bool):
            names = " or ".join(t.__name__ for t in types)
            return "wrong_type", f"{name} must be {names}, got {type(value).__name__}"
    if row["domain"] == "code" and isinstance(row["tests"], list) and not all(isinstance(t, str) for t in row["tests"]):
        return "wrong_type", "tests must be strings"
    if row["domain"] == "code":
        try:
            build_test_program(row["tests"], row.get("entry_point"))  # what the code reward will run
        except ValueError as exc:
            return "bad_tests", str(exc)
    if row["domain"] == "instruction":
        c = row["constraints"]
        ids, kwargs = c.get("instruction_id_list"), c.get("kwargs")
        if not isinstance(ids, list) or not isinstance(kwargs, list) or len(ids) != len(kwargs):
            return "wrong_type", "constraints needs instruction_id_list and kwargs lists of equal length"
        try:
            parse_constraints(c)  # unknown instruction ids and bad kwargs, named
        except ValueError as exc:
            return "bad_constraints", str(exc)
    return None


def load_dataset(
    path: str | Path,
    tokenizer: Any = None,
    max_prompt_tokens: int = 64,
    seen_ids: set[str] | None = None,
    report: LoadReport | None = None,
    routed: Collection[str] | None = None,
) -> list[dict[str, Any]]:
    """The valid rows of one dataset, in file order; bad rows go to `report` with their reason.

    `seen_ids` carries ids across the datasets of one run, so duplicates between files count too;
    `routed`: the domains some reward scores (None: any domain is accepted).
    """
    seen_ids = set() if seen_ids is None else seen_ids
    report = LoadReport() if report is None else report
    count_tokens = token_counter(tokenizer)
    templated = tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))
    source = str(path)
    rows = []
    for line, raw in read_rows(path):
        report.rows_read[source] += 1
        problem = _check_row(raw, routed)
        if problem is None:
            row = {k: v for k, v in raw.items() if v is not None}
            prompt = row["prompt"] if "prompt" in row else render_messages(row["messages"], tokenizer)
            if row["id"] in seen_ids:
                problem = ("duplicate_id", row["id"])
            elif (n := count_tokens(prompt)) > max_prompt_tokens:
                problem = ("prompt_too_long", f"{n} tokens > {max_prompt_tokens}")
        if problem is not None:
            report.bad.append(BadRow(source, line, *problem))
            continue
        report.plain_chat[source] += "messages" in row and not templated
        seen_ids.add(row["id"])
        reference = {k: v for k, v in row.items() if k not in CORE_FIELDS}
        if "answer" in reference and not isinstance(reference["answer"], str):
            reference["answer"] = str(reference["answer"])
        rows.append({"id": row["id"], "domain": row["domain"], "prompt": prompt, "reference": reference,
                     "source": source})
    report.rows_kept[source] += len(rows)
    if report.rows_read[source] == 0:
        raise DatasetError(f"dataset {source!r} is empty")
    if not rows:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(Counter(b.reason for b in report.bad
                                                                  if b.source == source).items()))
        raise DatasetError("\n".join([f"dataset {source!r}: none of its {report.rows_read[source]} rows is valid "
                                      f"({reasons})", *report.examples(source)]))
    return rows


def load_datasets(
    paths: Sequence[str],
    weights: Sequence[float] = (),
    tokenizer: Any = None,
    max_prompt_tokens: int = 64,
    routed: Collection[str] | None = None,
) -> tuple[list[dict[str, Any]], LoadReport]:
    """Load and mix several datasets (`routed`: as in `load_dataset`).

    With `weights`, dataset d is drawn with probability w_d / sum(w): each of its n_d rows gets the
    sampling weight w_d / (n_d * sum(w)). Without, every row weighs the same (mixing by size).
    """
    report = LoadReport()
    seen: set[str] = set()
    rows: list[dict[str, Any]] = []
    for i, path in enumerate(paths):
        part = load_dataset(path, tokenizer, max_prompt_tokens, seen, report, routed)
        if weights:
            for row in part:
                row["weight"] = weights[i] / (len(part) * sum(weights))
        rows.extend(part)
    return rows, report


def split_heldout(rows: list[dict[str, Any]], fraction: float, limit: int) -> tuple[list[dict], list[dict]]:
    """(train, held-out) by a stable hash of the id; at most `limit` held-out rows are kept for
    evaluation, and held-out rows past the limit are not trained on either."""
    train = [r for r in rows if not is_heldout(r["id"], fraction)]
    heldout = [r for r in rows if is_heldout(r["id"], fraction)][:limit]
    return train, heldout
