from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from rl import config as config_module
from rl.config import (
    Config,
    ConfigError,
    config_to_dict,
    format_help,
    load_config,
    parse_cli,
    save_config,
)
from data_mining.tasks import check_task_names
from rewards.registry import check_routes

ROOT = Path(__file__).resolve().parents[2]
TINY_CPU = ROOT / "configs" / "tiny_cpu.yaml"


def _leaf_fields(cls, prefix=""):
    """(dotted key, field) for every field that holds a value; nested sections are walked into."""
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(f.default_factory if f.default is dataclasses.MISSING else None):
            yield from _leaf_fields(f.default_factory, f"{key}.")
        else:
            yield key, f


def _all_keys(cls=Config):
    return [key for key, _ in _leaf_fields(cls)]


def _flat(data, prefix=""):
    return [k for name, value in data.items()
            for k in (_flat(value, f"{prefix}{name}.") if isinstance(value, dict) else [f"{prefix}{name}"])]


# --- defaults and the embedded YAML ----------------------------------------------------------------


def test_defaults_load():
    cfg = load_config(None)
    assert cfg == Config()
    assert cfg.run.dir == "runs/tiny_cpu"
    assert cfg.run.steps == 800
    assert cfg.rollout.max_staleness == 1  # generation overlaps training by default
    assert cfg.run.ray_address is None
    assert cfg.model.dtype == "float32"
    assert cfg.rollout.samples_per_prompt == 8
    assert cfg.train.lr == 2e-4
    assert cfg.train.loss_agg == "token-mean"
    assert cfg.eval.max_new_tokens is None


def test_every_field_has_a_type_default_and_help():
    for section in dataclasses.fields(Config):
        assert section.metadata["help"]
    for key, f in _leaf_fields(Config):
        assert f.metadata.get("help"), f"{key} has no help"
        assert f.default is not dataclasses.MISSING, f"{key} has no default"
        assert f.type, f"{key} has no annotation"


def test_tiny_cpu_yaml_loads_to_the_defaults():
    cfg = load_config(TINY_CPU)
    assert cfg == Config()
    assert isinstance(cfg.train.lr, float) and cfg.train.lr == 2e-4
    assert cfg.rollout.enforce_eager is True
    assert cfg.data.max_digits == 2
    # Every section is spelled out in the file, not left to the defaults.
    raw = yaml.safe_load(TINY_CPU.read_text())
    assert list(raw) == [f.name for f in dataclasses.fields(Config)]


# --- overrides ------------------------------------------------------------------------------------


def test_float_override_from_exponent_text():
    # PyYAML reads `1e-5` as a string; a float field still takes it.
    cfg = load_config(None, ["train.lr=1e-5"])
    assert isinstance(cfg.train.lr, float) and cfg.train.lr == 1e-5


def test_float_field_accepts_int_as_float():
    cfg = load_config(None, ["train.weight_decay=1"])
    assert cfg.train.weight_decay == 1.0 and isinstance(cfg.train.weight_decay, float)


def test_int_bool_and_literal_overrides():
    cfg = load_config(
        None, ["run.steps=3", "rollout.enforce_eager=false", "train.loss_agg=seq-mean-token-mean"]
    )
    assert cfg.run.steps == 3
    assert cfg.rollout.enforce_eager is False
    assert cfg.train.loss_agg == "seq-mean-token-mean"


def test_optional_overrides_and_later_wins():
    cfg = load_config(None, ["run.ray_address=auto", "run.num_cpus=4", "eval.max_new_tokens=8"])
    assert (cfg.run.ray_address, cfg.run.num_cpus, cfg.eval.max_new_tokens) == ("auto", 4, 8)
    cfg = load_config(None, ["run.ray_address=auto", "run.ray_address=null"])
    assert cfg.run.ray_address is None


def test_str_override_keeps_number_like_text():
    cfg = load_config(None, ["run.dir=2024", "run.ray_address=10.0.0.1:6379"])
    assert cfg.run.dir == "2024"
    assert cfg.run.ray_address == "10.0.0.1:6379"


def test_overrides_apply_on_top_of_the_file_and_keep_its_other_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 3.0e-4\n  prompts_per_step: 8\neval:\n")
    cfg = load_config(path, ["train.lr=1e-6"])
    assert cfg.train.lr == 1e-6
    assert cfg.train.prompts_per_step == 8
    assert cfg.eval == Config().eval  # a section left empty keeps its defaults


@dataclass(frozen=True)
class _Inner:
    depth: int = field(default=1, metadata={"help": "h", "min": 1})


@dataclass(frozen=True)
class _Sequences:
    ints: list[int] = field(default_factory=lambda: [1, 2], metadata={"help": "h"})
    floats: tuple[float, ...] = field(default=(0.5,), metadata={"help": "h"})
    inner: _Inner = field(default_factory=_Inner, metadata={"help": "h"})


def test_list_and_tuple_fields_check_their_elements():
    # The schema has no sequence fields yet; exercise the generic checker directly.
    built = config_module._build(_Sequences, {"ints": [3, 4], "floats": [1, "1e-3"]}, "s")
    assert built.ints == [3, 4]
    assert built.floats == (1.0, 1e-3) and isinstance(built.floats, tuple)
    assert built.inner == _Inner()
    with pytest.raises(ConfigError, match=re.escape("config key 's.ints[1]' expects int, got str 'x'")):
        config_module._build(_Sequences, {"ints": [1, "x"]}, "s")
    with pytest.raises(ConfigError, match=re.escape("config key 's.floats' expects tuple[float, ...]")):
        config_module._build(_Sequences, {"floats": 0.5}, "s")
    with pytest.raises(ConfigError, match=re.escape("config key 's.inner.depth' must be >= 1, got 0")):
        config_module._build(_Sequences, {"inner": {"depth": 0}}, "s")
    assert config_to_dict(built) == {"ints": [3, 4], "floats": [1.0, 1e-3], "inner": {"depth": 1}}


# --- errors name the dotted key -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("nosuch.x=1", "unknown config key 'nosuch' (known sections: run, model, data,"),
        ("train.lrr=1", "unknown config key 'train.lrr' (known keys in 'train': prompts_per_step,"),
        ("train.lr.x=1", "unknown config key 'train.lr.x' ('train.lr' is not a section)"),
        ("train=1", "config key 'train' is a section"),
        ("train.lr=abc", "config key 'train.lr' expects float, got str 'abc'"),
        ("train.lr=nan", "config key 'train.lr' expects float, got str 'nan'"),
        ("train.lr=true", "config key 'train.lr' expects float, got bool True"),
        ("run.steps=2.0", "config key 'run.steps' expects int, got float 2.0"),
        ("run.steps=true", "config key 'run.steps' expects int, got bool True"),
        ("run.steps=null", "config key 'run.steps' expects int, got null"),
        ("run.num_cpus=x", "config key 'run.num_cpus' expects int, got str 'x'"),
        ("rollout.enforce_eager=1", "config key 'rollout.enforce_eager' expects bool, got int 1"),
        (
            "train.loss_agg=foo",
            "config key 'train.loss_agg' must be one of "
            "['token-mean', 'seq-mean-token-mean', 'seq-mean-token-sum-norm'], got 'foo'",
        ),
        ("model.dtype=float16", "config key 'model.dtype' must be one of ['float32', 'bfloat16']"),
        ("run.steps=-1", "config key 'run.steps' must be >= 0, got -1"),
        ("train.lr=-1e-3", "config key 'train.lr' must be >= 0, got -0.001"),
        ("rollout.samples_per_prompt=1", "config key 'rollout.samples_per_prompt' must be >= 2, got 1"),
        ("eval.max_new_tokens=0", "config key 'eval.max_new_tokens' must be >= 1, got 0"),
        ("data.min_digits=4", "config key 'data.max_digits' must be >= data.min_digits (4), got 2"),
        ("train.dual_clip=0.5", "config key 'train.dual_clip' must be 0 (off) or > 1, got 0.5"),
        ("data.tasks=[code]", "config key 'data.task_weights' needs one weight > 0 per data.tasks entry (1), "
                              "got [2.0, 1.0, 1.0]"),
        ("rollout.top_p=0", "config key 'rollout.top_p' must be in (0, 1], got 0.0"),
        ("rollout.top_p=1.5", "config key 'rollout.top_p' must be in (0, 1], got 1.5"),
        ("train.lr", "bad override 'train.lr' (expected KEY=VALUE)"),
        ("=1", "bad override '=1' (expected KEY=VALUE)"),
        ("train.lr=[1,", "bad override 'train.lr=[1,': the value is not valid YAML"),
    ],
)
def test_bad_override_names_the_key(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, [override])


@pytest.mark.parametrize(
    ("tasks", "weights"),
    [("[arithmetic,poetry]", "[1,1]"), ("[code,code]", "[1,1]"), ("[]", "[]")],
)
def test_task_names_are_checked_against_the_task_registry(tasks, weights):
    data = load_config(None, [f"data.tasks={tasks}", f"data.task_weights={weights}"]).data
    names = yaml.safe_load(tasks)
    with pytest.raises(ConfigError, match=re.escape(
        f"config key 'data.tasks' must name distinct families from ['arithmetic', 'code', 'instruction'], got {names}"
    )):
        check_task_names(data)


def test_default_task_names_and_routes_pass_their_registries():
    cfg = load_config(TINY_CPU)
    check_task_names(cfg.data)
    check_routes(cfg.reward)


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("train:\n  lrr: 1\n", "unknown config key 'train.lrr'"),
        ("foo: {}\n", "unknown config key 'foo'"),
        ("train: 5\n", "config key 'train' expects a mapping, got int 5"),
        ("train:\n  lr: abc\n", "config key 'train.lr' expects float, got str 'abc'"),
        ("- 1\n- 2\n", "must be a mapping of sections, got list"),
        ("train: [1\n", "is not valid YAML"),
    ],
)
def test_bad_file_is_reported(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(path)


def test_bad_file_messages_name_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("[1, 2]\n")
    with pytest.raises(ConfigError, match=re.escape(f"config file '{path}'")):
        load_config(path)
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError, match=re.escape(f"cannot read config file '{missing}'")):
        load_config(missing)


def test_override_into_a_non_mapping_file_section_names_it(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train: 5\n")
    with pytest.raises(ConfigError, match=re.escape("config key 'train' expects a mapping, got int 5")):
        load_config(path, ["train.lr=1e-5"])


def test_empty_file_means_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing\n")
    assert load_config(path) == Config()


# --- saving, freezing, help -----------------------------------------------------------------------


def test_save_load_round_trip(tmp_path):
    cfg = load_config(
        TINY_CPU,
        ["train.lr=1e-5", "run.ray_address=auto", "eval.max_new_tokens=5", "model.dtype=bfloat16"],
    )
    path = tmp_path / "nested" / "config.yaml"
    save_config(cfg, path)
    assert load_config(path) == cfg
    assert yaml.safe_load(path.read_text())["train"]["lr"] == 1e-5


def test_config_to_dict_is_plain_and_complete():
    data = config_to_dict(Config())
    assert type(data) is dict and type(data["train"]) is dict
    assert data["train"]["lr"] == 2e-4 and data["run"]["ray_address"] is None
    assert sorted(_flat(data)) == sorted(_all_keys())
    assert yaml.safe_load(yaml.safe_dump(data)) == data


def test_config_is_frozen():
    cfg = load_config(None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.lr = 1.0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train = cfg.train  # type: ignore[misc]
    assert cfg.train.lr == 2e-4


def test_format_help_lists_every_key_with_type_and_default():
    text = format_help()
    for key in _all_keys():
        assert re.search(rf"^  {re.escape(key)}\s", text, re.MULTILINE), key
    assert re.search(r"^  train\.lr\s+float\s+\(default: 0\.0002\)\s+learning rate$", text, re.MULTILINE)
    assert re.search(r"^  run\.ray_address\s+str \| None\s+\(default: null\)", text, re.MULTILINE)
    assert re.search(r"^  rollout\.enforce_eager\s+bool\s+\(default: true\)", text, re.MULTILINE)
    assert "one of: token-mean, seq-mean-token-mean, seq-mean-token-sum-norm" in text
    assert re.search(r"^train: ", text, re.MULTILINE)


# --- command line ---------------------------------------------------------------------------------


def test_parse_cli_options_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("run:\n  steps: 7\n")
    cfg, args = parse_cli(
        ["--config", str(path), "train.lr=1e-5", "--ray-address", "auto", "--dry-run", "run.seed=3"]
    )
    assert (cfg.run.steps, cfg.run.seed, cfg.train.lr, cfg.run.ray_address) == (7, 3, 1e-5, "auto")
    assert args.dry_run is True
    assert args.overrides == ["train.lr=1e-5", "run.seed=3"]


def test_parse_cli_override_beats_ray_address_flag():
    cfg, args = parse_cli(["--config", str(TINY_CPU), "--ray-address", "auto", "run.ray_address=null"])
    assert cfg.run.ray_address is None
    assert args.dry_run is False


def test_parse_cli_default_config_depends_on_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    cfg, args = parse_cli([])
    assert args.config == "configs/tiny_cpu.yaml" and cfg == Config()
    monkeypatch.chdir(tmp_path)
    cfg, args = parse_cli(["run.steps=2"])
    assert args.config is None and cfg.run.steps == 2


def test_parse_cli_bad_override_exits_2_naming_the_key(capsys):
    with pytest.raises(SystemExit) as exc:
        parse_cli(["--config", str(TINY_CPU), "train.lr=abc"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert "config key 'train.lr' expects float, got str 'abc'" in err


def test_parse_cli_missing_file_exits_2(tmp_path, capsys):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(SystemExit) as exc:
        parse_cli(["--config", str(missing)])
    assert exc.value.code == 2
    assert f"error: cannot read config file '{missing}'" in capsys.readouterr().err


def test_parse_cli_help_exits_0_and_lists_keys(capsys):
    with pytest.raises(SystemExit) as exc:
        parse_cli(["--help"], description="Run RL post-training.")
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: ")
    assert "Run RL post-training." in out
    assert "--ray-address ADDR" in out and "--dry-run" in out
    assert re.search(r"^  train\.lr\s+float", out, re.MULTILINE)
    assert re.search(r"^  eval\.after\s+bool", out, re.MULTILINE)


def test_reward_lists_and_their_errors(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text('reward:\n  custom: ["my_pkg.mod:fn", "rewards/x.py:g"]\n  routes: ["math=math:1.0,format:0.1"]\n')
    cfg = load_config(path, ["reward.timeout_s=2.5", "train.advantage_norm_per_domain=true"])
    assert cfg.reward.custom == ("my_pkg.mod:fn", "rewards/x.py:g")
    assert cfg.reward.routes == ("math=math:1.0,format:0.1",)
    assert (cfg.reward.timeout_s, cfg.train.advantage_norm_per_domain) == (2.5, True)
    check_routes(cfg.reward)
    with pytest.raises(ConfigError, match=re.escape("config key 'reward.routes[1]': route 'math=math:x'")):
        check_routes(load_config(None, ['reward.routes=["code=code", "math=math:x"]']).reward)
    with pytest.raises(ConfigError, match=re.escape("config key 'reward.timeout_s' must be > 0, got 0.0")):
        load_config(None, ["reward.timeout_s=0"])
    with pytest.raises(ConfigError, match=re.escape("config key 'reward.custom[0]' expects str, got int 3")):
        load_config(None, ["reward.custom=[3]"])


def test_reward_sandbox_is_a_nested_section_checked_at_load():
    cfg = load_config(None, ["reward.sandbox.wall_s=2", "reward.sandbox.isolation=uid", "reward.sandbox.cgroup=false"])
    assert (cfg.reward.sandbox.wall_s, cfg.reward.sandbox.isolation, cfg.reward.sandbox.cgroup) == (2.0, "uid", False)
    assert cfg.reward.sandbox.memory_bytes == 1 << 30  # the rest keep their defaults
    for override, message in [
        ("reward.sandbox.memory_bytes=8589934592", "'reward.sandbox.memory_bytes' must be in (0, 4 GiB]"),
        ("reward.sandbox.wall_s=0", "'reward.sandbox.wall_s' must be > 0"),
        ("reward.sandbox.isolation=chroot", "'reward.sandbox.isolation' must be one of"),
        ("reward.sandbox.walls=1", "unknown config key 'reward.sandbox.walls'"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_config(None, [override])
