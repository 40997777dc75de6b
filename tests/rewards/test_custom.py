import re
import sys
import textwrap

import pytest

import rewards.pool  # noqa: F401  (built-in names, e.g. 'math', are taken)
from rewards.custom import RewardLoadError, load_custom_rewards
from rewards.registry import score_sample
from rl.types import Sample

GOOD = """
from rewards.registry import RewardResult

def shouty(sample):
    return RewardResult(float(sample.completion.isupper()))

NOT_CALLABLE = 3

def two_args(sample, extra):
    return None

def no_args():
    return None

def var_args(*samples):
    return None
"""


@pytest.fixture
def module_dir(tmp_path, monkeypatch):
    (tmp_path / "custom_rewards_fixture.py").write_text(GOOD)
    (tmp_path / "custom_rewards_broken.py").write_text("raise RuntimeError('kaboom')\n")
    (tmp_path / "custom_rewards_needs_dep.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def _sample(completion: str) -> Sample:
    return Sample("p1", "shout", "q", [1], completion=completion)


def test_load_from_module_under_function_name(module_dir):
    assert load_custom_rewards(["custom_rewards_fixture:shouty"]) == ["shouty"]
    assert score_sample(_sample("HI"), {"shout": [("shouty", 1.0)]}).score == 1.0


def test_load_from_relative_file_with_name_prefix(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "mine.py").write_text(GOOD)
    monkeypatch.chdir(tmp_path)
    assert load_custom_rewards(["loud=sub/mine.py:shouty"]) == ["loud"]
    assert score_sample(_sample("hi"), {"shout": [("loud", 1.0)]}).score == 0.0
    # Loading the same file again reuses its module: no "already registered" conflict.
    assert load_custom_rewards([f"loud={tmp_path}/sub/mine.py:shouty"]) == ["loud"]


@pytest.mark.parametrize(
    "spec,problem",
    [
        ("custom_rewards_fixture.shouty", "expected 'module:function'"),
        ("custom_rewards_fixture:", "expected 'module:function'"),
        ("no_such_module_xyz:fn", "module 'no_such_module_xyz' not found"),
        ("missing/rewards.py:fn", "file not found"),
        ("custom_rewards_broken:fn", "raised RuntimeError: kaboom"),
        ("custom_rewards_needs_dep:fn", "raised ModuleNotFoundError: No module named 'no_such_dependency_xyz'"),
        ("custom_rewards_fixture:nope", "has no attribute 'nope'"),
        ("custom_rewards_fixture:NOT_CALLABLE", "is not callable"),
        ("custom_rewards_fixture:two_args", "exactly one positional argument"),
        ("custom_rewards_fixture:no_args", "exactly one positional argument"),
        ("custom_rewards_fixture:var_args", "exactly one positional argument"),
        ("math=custom_rewards_fixture:shouty", "'math' is already registered"),
    ],
)
def test_errors_name_the_spec(module_dir, spec, problem):
    with pytest.raises(RewardLoadError, match=re.escape(repr(spec)) + ".*" + re.escape(problem)):
        load_custom_rewards([spec])


def test_file_import_error_names_spec(tmp_path):
    path = tmp_path / "bad_syntax.py"
    path.write_text(textwrap.dedent("def f(sample):\n    return (\n"))
    spec = f"{path}:f"
    with pytest.raises(RewardLoadError, match=re.escape(repr(spec)) + ".*raised SyntaxError"):
        load_custom_rewards([spec])
    assert not any(name.startswith("_custom_reward_bad_syntax") for name in sys.modules)
