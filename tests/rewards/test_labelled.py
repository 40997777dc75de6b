"""The labelled agreement suite in rewards/labelled/: every case scored as labelled, and the
`score --check` command that reports agreement per category for any labelled file."""

import json
from pathlib import Path

import pytest

from rewards.__main__ import main
from rewards.registry import score_sample
from rewards.__main__ import row_to_sample

LABELLED = Path(__file__).resolve().parents[2] / "rewards" / "labelled"


def _rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (LABELLED / name).read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.mark.parametrize("name,minimum", [("math.jsonl", 150), ("instruction.jsonl", 100)])
def test_labelled_suite_agrees_on_every_case(name, minimum):
    rows = _rows(name)
    assert len(rows) >= minimum and len({r["id"] for r in rows}) == len(rows)
    assert all(isinstance(r["expected"], bool) and r["reason"] and r["category"] for r in rows)
    assert {r["expected"] for r in rows} == {True, False}
    wrong = [(r["id"], r["reason"]) for r in rows if (score_sample(row_to_sample(r)).score >= 1.0) != r["expected"]]
    assert wrong == []


def test_check_prints_agreement_per_category(tmp_path, capsys):
    rows = [
        {"id": "a", "domain": "math", "category": "boxed", "prompt": "q", "completion": "\\boxed{4}", "answer": "4",
         "expected": True, "reason": "right"},
        {"id": "b", "domain": "math", "category": "boxed", "prompt": "q", "completion": "\\boxed{5}", "answer": "4",
         "expected": True, "reason": "mislabelled on purpose"},
        {"id": "c", "domain": "instruction", "prompt": "q", "completion": "no commas",
         "constraints": {"instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}, "expected": True},
    ]
    path = tmp_path / "labelled.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    assert main(["score", "--check", str(path)]) == 1
    out = capsys.readouterr().out
    assert "boxed" in out and "1/2" in out and "50.0%" in out
    assert "instruction" in out and "1/1" in out
    assert "disagrees: b [boxed] expected True, got score 0.000: mislabelled on purpose" in out
    path.write_text("".join(json.dumps(r) + "\n" for r in rows[:1] + rows[2:]), encoding="utf-8")
    assert main(["score", "--check", str(path)]) == 0


def test_check_needs_boolean_labels(tmp_path, capsys):
    path = tmp_path / "labelled.jsonl"
    path.write_text(json.dumps({"id": "a", "domain": "math", "prompt": "q", "completion": "4", "answer": "4",
                                "expected": "yes"}) + "\n", encoding="utf-8")
    assert main(["score", "--check", str(path)]) == 2
    assert "'expected' must be true or false" in capsys.readouterr().err
