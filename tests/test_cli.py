"""The driver's command line: validation errors exit 2 and name the key; --dry-run plans only."""

import pytest

import run_rl


def test_unknown_key_exits_2_naming_it(capsys):
    with pytest.raises(SystemExit) as exc:
        run_rl.main(["train.lrr=1e-5"])
    assert exc.value.code == 2
    assert "train.lrr" in capsys.readouterr().err


def test_wrong_type_exits_2_naming_it(capsys):
    with pytest.raises(SystemExit) as exc:
        run_rl.main(["rollout.samples_per_prompt=many"])
    assert exc.value.code == 2
    assert "rollout.samples_per_prompt" in capsys.readouterr().err


def test_missing_checkpoint_without_bootstrap_names_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(SystemExit) as exc:
        run_rl.main([f"model.path={missing}", "model.bootstrap=false", f"run.dir={tmp_path}/run", "--dry-run"])
    assert str(missing) in str(exc.value.code)


def test_dry_run_prints_the_plan(tiny_checkpoint, tmp_path, capsys):
    code = run_rl.main([f"model.path={tiny_checkpoint}", f"run.dir={tmp_path}/run", "run.steps=3", "--dry-run"])
    assert code == 0
    out = capsys.readouterr().out
    assert "plan: 3 steps" in out and tiny_checkpoint in out
    assert (tmp_path / "run" / "config.yaml").exists()


def test_dry_run_does_not_bootstrap(tmp_path, capsys):
    missing = tmp_path / "ckpt"
    assert run_rl.main([f"model.path={missing}", f"run.dir={tmp_path}/run", "--dry-run"]) == 0
    assert "to be bootstrapped" in capsys.readouterr().out
    assert not missing.exists()
