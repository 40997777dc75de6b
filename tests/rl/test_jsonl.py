import json

from rl.jsonl import iter_jsonl


def test_iter_jsonl_numbers_lines_from_one_skips_blanks_and_yields_errors(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n\n  \n[2, 3]\n{"trunc\n"s"\n')
    got = list(iter_jsonl(path))
    assert [n for n, _ in got] == [1, 4, 5, 6]
    assert got[0][1] == {"a": 1} and got[1][1] == [2, 3] and got[3][1] == "s"
    assert isinstance(got[2][1], json.JSONDecodeError) and got[2][1].msg.startswith("Invalid control character")
