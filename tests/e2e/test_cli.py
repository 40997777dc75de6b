"""The driver's command line: validation errors exit 2 and name the key; --dry-run plans only."""

import json

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
    assert not (tmp_path / "run").exists()  # a dry run writes nothing


def test_dry_run_does_not_bootstrap(tmp_path, capsys):
    missing = tmp_path / "ckpt"
    assert run_rl.main([f"model.path={missing}", f"run.dir={tmp_path}/run", "--dry-run"]) == 0
    assert "to be bootstrapped" in capsys.readouterr().out
    assert not missing.exists()


def test_dry_run_stops_on_an_empty_dataset_naming_it(tmp_path):
    empty = tmp_path / "prompts.jsonl"
    empty.write_text("")
    with pytest.raises(SystemExit) as exc:
        run_rl.main([f"model.path={tmp_path}/ckpt", f"run.dir={tmp_path}/run", f"data.datasets=[{empty}]", "--dry-run"])
    assert exc.value.code == f"error: dataset '{empty}' is empty"


def test_dry_run_validates_datasets_and_reports_skipped_rows(tmp_path, capsys):
    path = tmp_path / "prompts.jsonl"
    rows = [{"id": f"p{i}", "domain": "math", "prompt": f"{i}+1=", "answer": str(i + 1)} for i in range(20)]
    path.write_text("".join(json.dumps(r) + "\n" for r in [*rows, {"id": "p0", "domain": "math", "prompt": "x"}]))
    code = run_rl.main([f"model.path={tmp_path}/ckpt", f"run.dir={tmp_path}/run", f"data.datasets=[{path}]", "--dry-run"])
    assert code == 0
    out = capsys.readouterr().out
    assert f"dataset {path}: 20 of 21 rows kept; skipped: missing_field 1" in out
    assert "20 train /" not in out and " train / " in out  # some rows are held out


def test_dry_run_reports_rows_no_reward_scores_with_their_lines(tmp_path, capsys):
    path = tmp_path / "prompts.jsonl"
    rows = [{"id": f"p{i}", "domain": "math", "prompt": f"{i}+1=", "answer": str(i + 1)} for i in range(20)]
    typo = {"id": "q", "domain": "Math", "prompt": "1+1=", "answer": "2"}
    path.write_text("".join(json.dumps(r) + "\n" for r in [*rows, typo]))
    assert run_rl.main([f"model.path={tmp_path}/ckpt", f"run.dir={tmp_path}/run", f"data.datasets=[{path}]",
                        "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"dataset {path}: 20 of 21 rows kept; skipped: unrouted_domain 1" in out
    assert "  line 21: unrouted_domain: no reward scores domain 'Math'" in out


def test_an_early_stop_says_what_to_do_next(tmp_path, capsys):
    from rl.config import load_config
    from rl.stop import EXIT_NON_FINITE, EXIT_RESUMABLE, RunStop
    from tests.rl.test_checkpoint import _complete

    cfg = load_config(None, [f"run.dir={tmp_path}", "run.steps=9"])
    _complete(tmp_path / "checkpoint-4", 4)
    guard = RunStop(max_skipped_steps=2)
    for step in (4, 5):
        guard.observe(step, {"train/skipped_steps": 1.0})
    assert run_rl.stop_early(cfg, None, None, None, tmp_path, guard, 6) == EXIT_NON_FINITE
    err = capsys.readouterr().err
    assert "the run stopped at step 6: 2 steps in a row (up to step 5)" in err
    assert f"Last checkpoint: {tmp_path / 'checkpoint-4'}" in err
    # Preempted right after the loop wrote checkpoint-4: nothing is saved again (no actors here to save).
    preempted = RunStop(max_skipped_steps=2)
    preempted.request("SIGTERM received", EXIT_RESUMABLE)
    assert run_rl.stop_early(cfg, None, None, None, tmp_path, preempted, 4) == EXIT_RESUMABLE
    out = capsys.readouterr().out
    assert f"stopped at step 4 of 9 (SIGTERM received); checkpoint written to {tmp_path / 'checkpoint-4'}" in out
    assert "run.resume=latest" in out


def test_a_dead_actor_stops_the_run_naming_the_last_checkpoint(tmp_path, capsys):
    import ray.exceptions

    from rl.stop import EXIT_ACTOR_DIED
    from tests.rl.test_checkpoint import _complete

    assert run_rl.actor_died(tmp_path, ray.exceptions.ActorDiedError()) == EXIT_ACTOR_DIED
    assert "Last checkpoint: none written yet" in capsys.readouterr().err
    _complete(tmp_path / "checkpoint-2", 2)
    assert run_rl.actor_died(tmp_path, ray.exceptions.ActorDiedError()) == EXIT_ACTOR_DIED
    err = capsys.readouterr().err
    assert "an actor died during the RL loop (ActorDiedError: The actor died unexpectedly" in err
    assert f"Last checkpoint: {tmp_path / 'checkpoint-2'} (continue with run.resume=latest)" in err
