import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from rewards.__main__ import main, parse_route

REPO = Path(__file__).resolve().parents[2]

ROWS = [
    {"id": "m1", "domain": "math", "prompt": "1+1?", "completion": "So \\boxed{2}", "answer": "2"},
    "{this is not json",
    {"id": "m2", "domain": "math", "prompt": "Half?", "completion": "The answer is 0.4.", "answer": "\\frac{1}{2}"},
    {"id": "i1", "domain": "instruction", "prompt": "Be quiet.", "completion": "hello, world",
     "constraints": {"instruction_id_list": ["change_case:english_lowercase", "punctuation:no_comma"],
                     "kwargs": [{}, {}]}, "source": "unit-test"},
    "",
    {"id": "m3", "domain": "math", "prompt": "1+1?", "answer": "2"},
    {"id": "c1", "domain": "cooking", "prompt": "Soup?", "completion": "Salt."},
    {"id": "m4", "domain": "math", "prompt": "1+1?", "completion": "2"},
]


def _run(tmp_path: Path, rows: list, *extra: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
    src, dst = tmp_path / "rows.jsonl", tmp_path / "scored.jsonl"
    src.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    proc = subprocess.run(
        [sys.executable, "-m", "rewards", "score", "--input", str(src), "--output", str(dst), *extra],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    out = [json.loads(line) for line in dst.read_text().splitlines()] if dst.exists() else []
    return proc, out


def test_score_file_end_to_end(tmp_path):
    proc, out = _run(tmp_path, ROWS)
    assert proc.returncode == 0, proc.stderr
    # Blank line skipped; every other line answered, in order.
    assert [r.get("id", r.get("line")) for r in out] == ["m1", 2, "m2", "i1", "m3", "c1", "m4"]
    assert [r["score"] for r in out] == [1.0, 0.0, 0.0, 0.5, 0.0, 0.0, 0.0]
    assert out[0]["components"] == {"math": 1.0, "math/correct": 1.0, "math/extracted": 1.0, "math/hedged": 0.0}
    assert out[3]["components"] == {
        "instruction": 0.5, "instruction/0:change_case:english_lowercase": 1.0, "instruction/1:punctuation:no_comma": 0.0
    }
    assert out[3]["source"] == "unit-test"  # extra fields pass through
    errors = {r.get("id", r.get("line")): r.get("error", "") for r in out}
    assert "line 2: invalid JSON" in errors[2]
    assert "missing field 'completion'" in errors["m3"]
    assert "no reward configured for domain 'cooking'" in errors["c1"]
    assert "missing field 'answer' (required for domain 'math')" in errors["m4"]
    assert not errors["m1"] and not errors["m2"] and not errors["i1"]
    assert "scored 7 rows: mean score 0.2143, 4 errors" in proc.stderr


def test_custom_reward_with_route(tmp_path):
    (tmp_path / "my_reward.py").write_text(
        "from rewards.registry import RewardResult\n"
        "def exclaims(sample):\n    return RewardResult(float(sample.completion.endswith('!')))\n"
    )
    rows = [{"id": "s1", "domain": "chat", "prompt": "Hi", "completion": "Hello!"},
            {"id": "s2", "domain": "chat", "prompt": "Hi", "completion": "Hello."}]
    spec = f"{tmp_path / 'my_reward.py'}:exclaims"
    proc, out = _run(tmp_path, rows, "--custom", spec, "--route", "chat=exclaims:1.0")
    assert proc.returncode == 0, proc.stderr
    assert [(r["id"], r["score"]) for r in out] == [("s1", 1.0), ("s2", 0.0)]


def test_bad_custom_spec_stops_before_scoring(tmp_path):
    proc, out = _run(tmp_path, ROWS[:1], "--custom", "nowhere_xyz:fn")
    assert proc.returncode == 2
    assert "'nowhere_xyz:fn'" in proc.stderr and "not found" in proc.stderr
    assert out == []


def test_parse_route():
    assert parse_route("math=math,format:0.1") == ("math", [("math", 1.0), ("format", 0.1)])
    with pytest.raises(argparse.ArgumentTypeError, match="'math=math:heavy'.*'heavy' is not a number"):
        parse_route("math=math:heavy")
    with pytest.raises(argparse.ArgumentTypeError, match="expected DOMAIN=REWARD"):
        parse_route("math")


def test_unknown_routed_reward_stops_before_scoring(tmp_path, capsys):
    src = tmp_path / "rows.jsonl"
    src.write_text(json.dumps(ROWS[0]) + "\n")
    assert main(["score", "--input", str(src), "--output", str(tmp_path / "o.jsonl"), "--route", "math=nope"]) == 2
    assert "route for domain 'math' names unknown reward(s) ['nope']" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()


def test_non_finite_scores_are_errors_and_the_output_is_strict_json(tmp_path):
    (tmp_path / "odd.py").write_text(
        "from rewards.registry import RewardResult\n"
        "def odd(sample):\n"
        "    return RewardResult({'n': float('nan'), 'i': float('inf'), 's': 'high'}.get(sample.completion, 1.0))\n"
    )
    rows = [{"id": k, "domain": "chat", "prompt": "Hi", "completion": k} for k in ("n", "i", "s", "ok")]
    rows.append('{"id": "x", "domain": "chat", "prompt": "Hi", "completion": "ok", "temperature": NaN}')
    proc, _ = _run(tmp_path, rows, "--custom", f"{tmp_path / 'odd.py'}:odd", "--route", "chat=odd")
    assert proc.returncode == 0, proc.stderr

    def refuse(token):
        raise ValueError(f"not JSON: {token}")

    text = (tmp_path / "scored.jsonl").read_text().splitlines()
    out = [json.loads(line, parse_constant=refuse) for line in text]
    assert [r["score"] for r in out] == [0.0, 0.0, 0.0, 1.0, 0.0]
    assert "non-finite score (nan)" in out[0]["error"] and "non-finite score (inf)" in out[1]["error"]
    assert "expected a number" in out[2]["error"] and "error" not in out[3]
    assert out[4] == {"line": 5, "score": 0.0, "components": {}, "error": "line 5: invalid JSON: NaN is not a JSON value"}
    assert "4 errors" in proc.stderr
