"""Dataset loading: formats, row validation with reasons, chat templates, mixing."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from data_mining.datasets import (
    DatasetError,
    load_dataset,
    load_datasets,
    render_messages,
    split_heldout,
)
from data_mining.miner import Miner
from data_mining.sampler import EpochSampler
from rl.config import MiningConfig
from tests.data_mining.scripted import ScriptedPolicy

GOOD = [
    {"id": "m1", "domain": "math", "prompt": "1+1=", "answer": "2"},
    {"id": "m2", "domain": "math", "prompt": "2+2=", "answer": 4},
    {"id": "chat", "domain": "math", "messages": [{"role": "user", "content": "3+3="}], "answer": "6"},
    {"id": "c1", "domain": "code", "prompt": "Write f(x) returning x.", "tests": ["assert f(1) == 1"], "entry_point": "f"},
    {"id": "i1", "domain": "instruction", "prompt": "Say hi without commas.",
     "constraints": {"instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}},
    {"id": "g1", "domain": "general", "prompt": "Tell me a joke.", "format": ["<answer>"]},
]
# (line written to the file, the reason it is skipped)
BAD = [
    ("{not json", "not_an_object"),
    (json.dumps([1, 2]), "not_an_object"),
    (json.dumps({"domain": "math", "prompt": "x", "answer": "1"}), "missing_field"),
    (json.dumps({"id": "b1", "domain": "math", "answer": "1"}), "missing_field"),
    (json.dumps({"id": "b2", "domain": "math", "prompt": "5+5="}), "missing_field"),
    (json.dumps({"id": "b3", "domain": "math", "prompt": 7, "answer": "7"}), "wrong_type"),
    (json.dumps({"id": 4, "domain": "math", "prompt": "x", "answer": "1"}), "wrong_type"),
    (json.dumps({"id": "b5", "domain": "code", "prompt": "f", "tests": 3}), "wrong_type"),
    (json.dumps({"id": "b6", "domain": "math", "messages": "hi", "answer": "1"}), "wrong_type"),
    (json.dumps({"id": "b7", "domain": "instruction", "prompt": "p",
                 "constraints": {"instruction_id_list": ["a", "b"], "kwargs": [{}]}}), "wrong_type"),
    (json.dumps({"id": "b8", "domain": "math", "prompt": "9" * 200, "answer": "1"}), "prompt_too_long"),
    (json.dumps({"id": "m1", "domain": "math", "prompt": "1+2=", "answer": "3"}), "duplicate_id"),
]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_bad_rows_are_skipped_with_their_reasons_and_the_good_rows_train(tmp_path):
    lines = [json.dumps(r) for r in GOOD] + [line for line, _ in BAD]
    path = write_jsonl(tmp_path / "mixed.jsonl", lines)
    rows, report = load_datasets([str(path)], max_prompt_tokens=64)

    assert [r["id"] for r in rows] == [r["id"] for r in GOOD]
    assert [(b.line, b.reason) for b in report.bad] == [(len(GOOD) + i + 1, reason) for i, (_, reason) in enumerate(BAD)]
    assert report.reasons() == Counter(reason for _, reason in BAD)
    assert f"dataset {path}: {len(GOOD)} of {len(lines)} rows kept" in report.summary()
    assert "duplicate_id 1" in report.summary() and "prompt_too_long 1" in report.summary()
    by_id = {r["id"]: r for r in rows}
    assert by_id["m2"]["reference"] == {"answer": "4"}
    assert by_id["c1"]["reference"] == {"tests": ["assert f(1) == 1"], "entry_point": "f"}
    assert by_id["g1"]["reference"] == {"format": ["<answer>"]}
    assert by_id["chat"]["prompt"] == "user: 3+3=\nassistant: "
    # What a run trains on: the miner only ever draws the good rows.
    miner = Miner(rows, MiningConfig(enabled=True), 3, 2)
    truth = {r["id"]: 0.5 for r in rows}
    drawn = {s.prompt_id for step in range(5) for s in miner.next_batch(step, ScriptedPolicy(truth)).generated}
    assert drawn == set(by_id)


def test_parquet_and_saved_datasets_dir_give_the_same_rows(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    # Prompt rows and a chat row in one table: each row's missing field is a null there.
    src = [GOOD[0], {"id": "m3", "domain": "math", "prompt": "4+4=", "answer": "8"}, GOOD[2]]
    reference, _ = load_datasets([str(write_jsonl(tmp_path / "a.jsonl", src))])
    columns = {k: [r.get(k) for r in src] for k in ("id", "domain", "prompt", "messages", "answer")}
    pq.write_table(pa.table(columns), tmp_path / "a.parquet")
    datasets.Dataset.from_dict(columns).save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(columns)}).save_to_disk(str(tmp_path / "dict"))
    for name in ("a.parquet", "saved", "dict"):
        rows, report = load_datasets([str(tmp_path / name)])
        assert [{k: v for k, v in r.items() if k != "source"} for r in rows] == [
            {k: v for k, v in r.items() if k != "source"} for r in reference], name
        assert not report.bad


def test_empty_or_all_bad_dataset_stops_naming_the_file(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DatasetError, match=f"dataset '{empty}' is empty"):
        load_datasets([str(empty)])
    bad = write_jsonl(tmp_path / "bad.jsonl", [line for line, _ in BAD[:3]])
    with pytest.raises(DatasetError, match=f"dataset '{bad}': none of its 3 rows is valid .*missing_field 1, not_an_object 2") as exc:
        load_datasets([str(bad)])
    assert len([line for line in str(exc.value).splitlines() if line.startswith("  line ")]) == 3  # with examples
    with pytest.raises(DatasetError, match="does not exist"):
        load_datasets([str(tmp_path / "nope.jsonl")])
    with pytest.raises(DatasetError, match="unknown format"):
        load_datasets([str(write_jsonl(tmp_path / "x.txt", GOOD))])


def test_chat_template_and_token_limit_use_the_tokenizer():
    from data_mining.bootstrap import train_tokenizer

    tokenizer = train_tokenizer(["user says hello there", "assistant 1+1=2"] * 20, vocab_size=64)
    messages = [{"role": "user", "content": "hello"}]
    assert render_messages(messages, tokenizer) == "user: hello\nassistant: "  # no template: the fallback
    tokenizer.chat_template = ("{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}"
                               "{% if add_generation_prompt %}<assistant>{% endif %}")
    assert render_messages(messages, tokenizer) == "<user>hello\n<assistant>"
    n = len(tokenizer("1+1=2 " * 5, add_special_tokens=False)["input_ids"])
    row = {"id": "t", "domain": "math", "prompt": "1+1=2 " * 5, "answer": "2"}
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = write_jsonl(Path(d) / "t.jsonl", [row, {**row, "id": "u", "prompt": "1+1=2"}])
        assert [r["id"] for r in load_dataset(path, tokenizer, max_prompt_tokens=n)] == ["t", "u"]
        assert [r["id"] for r in load_dataset(path, tokenizer, max_prompt_tokens=n - 1)] == ["u"]


def test_mixing_weights_and_duplicates_across_datasets(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"id": f"a{i}", "domain": "math", "prompt": "p", "answer": "1"} for i in range(30)])
    b = write_jsonl(tmp_path / "b.jsonl", [{"id": f"b{i}", "domain": "math", "prompt": "p", "answer": "1"} for i in range(10)]
                    + [{"id": "a0", "domain": "math", "prompt": "p", "answer": "1"}])
    rows, report = load_datasets([str(a), str(b)])
    assert len(rows) == 40 and "weight" not in rows[0]
    assert [(x.source, x.reason) for x in report.bad] == [(str(b), "duplicate_id")]
    rows, _ = load_datasets([str(a), str(b)], weights=[1.0, 3.0])
    assert sum(r["weight"] for r in rows if r["id"].startswith("b")) == pytest.approx(0.75)
    sampler = EpochSampler(rows, seed=0, weights=[r["weight"] for r in rows])
    drawn = [r["id"] for _ in range(400) for r in sampler.next(1)]
    assert 0.68 < sum(d.startswith("b") for d in drawn) / len(drawn) < 0.82


def test_heldout_split_is_stable_and_disjoint():
    rows = [{"id": f"r{i}"} for i in range(500)]
    train, heldout = split_heldout(rows, 0.2, limit=1000)
    assert not {r["id"] for r in train} & {r["id"] for r in heldout}
    assert 60 < len(heldout) < 140 and split_heldout(rows, 0.2, 1000) == (train, heldout)
    assert split_heldout(rows, 0.2, limit=5)[1] == heldout[:5]


def test_input_that_would_score_0_forever_is_a_bad_row_with_its_1_based_line(tmp_path):
    from data_mining.datasets import LoadReport

    good = json.dumps(GOOD[0]).encode()
    lines = [
        good,
        b"",  # a blank line still counts in the numbering
        b'{"id": "u1", "domain": "math", "prompt": "caf\xe9", "answer": "1"}',  # Latin-1, not UTF-8
        json.dumps({"id": "t1", "domain": "Math", "prompt": "1+1=", "answer": "2"}).encode(),
        json.dumps({"id": "c2", "domain": "code", "prompt": "f", "tests": ["assert f(1) == (1"]}).encode(),
        json.dumps({"id": "i2", "domain": "instruction", "prompt": "p",
                    "constraints": {"instruction_id_list": ["punctuation:no_comas"], "kwargs": [{}]}}).encode(),
        *[json.dumps({"id": f"t{i}", "domain": "cooking", "prompt": "soup?"}).encode() for i in range(2, 6)],
    ]
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    report = LoadReport()
    rows = load_dataset(path, report=report, routed={"math", "code", "instruction"})
    assert [r["id"] for r in rows] == ["m1"]
    assert [(b.line, b.reason) for b in report.bad] == [
        (3, "not_an_object"), (4, "unrouted_domain"), (5, "bad_tests"), (6, "bad_constraints"),
        (7, "unrouted_domain"), (8, "unrouted_domain"), (9, "unrouted_domain"), (10, "unrouted_domain")]
    assert "not UTF-8" in report.bad[0].detail and "0xe9" in report.bad[0].detail
    assert "'Math'" in report.bad[1].detail and "routed: ['code', 'instruction', 'math']" in report.bad[1].detail
    assert "tests do not parse" in report.bad[2].detail
    assert "unknown id 'punctuation:no_comas'" in report.bad[3].detail
    summary = report.summary()
    assert "unrouted_domain 5" in summary
    assert f"  line 4: unrouted_domain:" in summary and "  line 8: unrouted_domain:" in summary
    assert "  line 9: unrouted_domain" not in summary  # the first 3 examples of a reason only
    assert "  line 3: not_an_object: invalid JSON: not UTF-8" in summary
    # Without the routed domains (procedural tasks, the reward CLI) any domain is accepted.
    assert "t1" in [r["id"] for r in load_dataset(path)]


def test_messages_without_a_chat_template_warn(tmp_path):
    from data_mining.bootstrap import train_tokenizer
    from data_mining.datasets import LoadReport

    tokenizer = train_tokenizer(["user says hello there", "assistant 1+1=2"] * 20, vocab_size=64)
    path = write_jsonl(tmp_path / "chat.jsonl", [GOOD[0], GOOD[2]])
    report = LoadReport()
    load_dataset(path, tokenizer, report=report)
    assert f"warning: 1 messages rows of {path} rendered as plain 'role: content' lines" in report.summary()
    tokenizer.chat_template = "{% for m in messages %}{{ m.content }}{% endfor %}"
    report = LoadReport()
    load_dataset(path, tokenizer, report=report)
    assert "warning" not in report.summary()
