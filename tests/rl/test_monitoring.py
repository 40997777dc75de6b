"""Monitoring: jsonl key -> Ray metric mapping, progress display, TensorBoard, dashboard auth,
the RL metrics on Ray's Prometheus endpoint after a real run, and --dry-run checks."""

from __future__ import annotations

import io
import json
import math
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import run_rl
from rl.config import ConfigError, MonitorConfig, load_config
from rl.jsonl import non_finite_floats
from rl.metrics import MetricsLog, PhaseTimer, Progress, ray_metric, scalars

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


# --- key -> metric name ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key, name, domain",
    [
        ("reward/mean", "rl_reward_mean", "all"),
        ("reward/mean/math", "rl_reward_mean", "math"),
        ("reward/pass_rate/code", "rl_reward_pass_rate", "code"),
        ("mining/band/medium/code", "rl_mining_band_medium", "code"),
        ("reward/errors/math", "rl_reward_errors", "math"),
        ("filter/zero_variance_fraction", "rl_filter_zero_variance_fraction", "all"),
        ("filter/groups/too-easy", "rl_filter_groups_too_easy", "all"),  # a reason, not a domain
        ("rollout/logprob_abs_diff_max", "rl_rollout_logprob_abs_diff_max", "all"),
        ("time/generate", "rl_time_generate", "all"),
        ("perf/tokens_per_second", "rl_perf_tokens_per_second", "all"),
        ("policy_version", "rl_policy_version", "all"),
        ("math", "rl_math", "all"),  # a bare key is a metric, never only a tag
    ],
)
def test_key_maps_to_name_and_domain_tag(key, name, domain):
    assert ray_metric(key, {"math", "code"}) == (name, {"domain": domain})


def test_metric_names_are_prometheus_legal():
    for key in ("a.b/c d", "moe/expert_load/math/layer0", "x/ünï/9", "time/weight-sync", "3/x"):
        name, _ = ray_metric(key, {"math"})
        assert PROMETHEUS_NAME.fullmatch(name), name


def test_scalars_keep_numbers_non_finite_ones_included():
    got = scalars({"a": 1, "b": 0.5, "c": True, "d": float("nan"), "e": [1.0, 2.0], "f": "x", "g": math.inf})
    assert {k: v for k, v in got.items() if k != "d"} == {"a": 1.0, "b": 0.5, "c": 1.0, "g": math.inf}
    assert math.isnan(got["d"])


def test_non_finite_values_reach_every_sink_as_such(tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    import ray.util.metrics

    gauges: dict[str, list[float]] = {}

    class RecordingGauge:  # stands in for Ray's Gauge: what the Ray sink sets
        def __init__(self, name, **_):
            self.name = name

        def set(self, value, tags):
            gauges.setdefault(self.name, []).append(value)

    monkeypatch.setattr(ray.util.metrics, "Gauge", RecordingGauge)
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    log = MetricsLog(tmp_path, 1, MonitorConfig(ray_metrics=True, tensorboard=True, progress="lines"))
    log.log(0, {"train/loss": float("nan"), "train/grad_norm": math.inf, "reward/mean": 0.5,
                "moe/expert_load/math/layer0": [0.5, -math.inf]})
    log.close()

    def strict(token):
        raise AssertionError(f"bare {token} in metrics.jsonl")

    record = json.loads((tmp_path / "metrics.jsonl").read_text(), parse_constant=strict)
    assert (record["train/loss"], record["train/grad_norm"], record["reward/mean"]) == ("nan", "inf", 0.5)
    assert record["moe/expert_load/math/layer0"] == [0.5, "-inf"]
    assert math.isnan(float(record["train/loss"])) and non_finite_floats(record)["train/grad_norm"] == math.inf
    assert math.isnan(gauges["rl_train_loss"][0]) and gauges["rl_train_grad_norm"] == [math.inf]
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert math.isnan(events.Scalars("train/loss")[0].value)
    assert events.Scalars("train/grad_norm")[0].value == math.inf


def test_grafana_dashboard_plots_every_monitored_metric():
    dashboard = json.loads((ROOT / "configs" / "grafana" / "rl_dashboard.json").read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    exprs = " ".join(t["expr"] for p in panels for t in p["targets"])
    keys = ["reward/mean", "reward/pass_rate", "reward/errors", "mining/band/", "filter/zero_variance_fraction",
            "train/kl", "train/entropy", "train/clip_fraction", "response/length_mean",
            "response/truncated_fraction", "rollout/logprob_abs_diff_max", "perf/tokens_per_second",
            "time/sync", "time/weight_sync_engine", "step"]
    for key in keys:
        assert "ray_" + ray_metric(key, ())[0] in exprs, key
    assert "ray_rl_time_(generate|reward|train|sync)" in exprs and "ray_rl_moe_.*violation" in exprs
    assert all(t["datasource"]["uid"] == "${datasource}" for p in panels for t in p["targets"])


# --- progress -------------------------------------------------------------------------------------


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


STEP = {"reward/mean": 0.25, "reward/pass_rate": 0.5, "perf/tokens_per_second": 1234.0, "time/generate": 1.5,
        "rollout/logprob_abs_diff_max": 2e-6}


def test_progress_prints_plain_lines_when_not_a_terminal():
    out = io.StringIO()
    progress = Progress(4, "auto", stream=out)
    progress.phase("generate")  # no live phase display in a log
    progress.step(0, STEP)
    progress.step(1, STEP)
    progress.close()
    lines = out.getvalue().split("\n")
    assert "\r" not in out.getvalue() and "\033" not in out.getvalue()
    assert re.fullmatch(r"step 1/4 \| eta \d+:\d\d:\d\d \| reward 0\.250 pass 0\.500 \| 1234 tok/s \| "
                        r"generate 1\.5s \| gap 2\.0e-06", lines[0]), lines[0]
    assert lines[1].startswith("step 2/4 | eta ")
    # An asynchronous step whose tokens all came from older weights has no gap to show, and says how stale.
    progress = Progress(4, "lines", stream=out)
    progress.step(2, {"reward/mean": 0.5, "time/train": 0.3, "rollout/staleness_max": 1.0})
    assert out.getvalue().rstrip().endswith("train 0.3s | gap n/a | stale 1")
    assert lines[2:] == [""]


def test_progress_updates_one_line_in_place_on_a_terminal():
    out = _Terminal()
    progress = Progress(4, "auto", stream=out)
    progress.phase("generate")
    progress.step(0, STEP)
    progress.phase("train")
    text = out.getvalue()
    assert "\n" not in text  # everything so far rewrote the same line
    draws = text.split("\r\033[K")[1:]
    assert draws[0] == "step 0/4 | now: generate"
    assert draws[1].startswith("step 1/4 [###.........] | eta ") and "| reward 0.250" in draws[1]
    assert re.match(r"step 1/4 \[###\.{9}\] \| eta \d+:\d\d:\d\d \| now: train \| reward 0\.250", draws[2])
    progress.close()
    assert out.getvalue().endswith("\n")


def test_eta_uses_the_pace_after_the_first_step(monkeypatch):
    clock = iter([0.0, 100.0, 110.0])  # a first phase, then a first step slowed by work before it
    monkeypatch.setattr("rl.metrics.time.time", lambda: next(clock))
    out = io.StringIO()
    progress = Progress(12, "lines", stream=out)
    progress.phase("generate")
    progress.step(0, STEP)
    progress.step(1, STEP)
    first, second = out.getvalue().splitlines()
    assert "eta 0:18:20" in first  # 100 s x 11 steps left
    assert "eta 0:01:40" in second  # 10 s x 10 steps left


@pytest.mark.parametrize("mode, tty, in_place", [("lines", True, False), ("bar", False, True), ("auto", True, True)])
def test_progress_mode_overrides_the_terminal_check(mode, tty, in_place):
    assert Progress(1, mode, stream=_Terminal() if tty else io.StringIO()).in_place is in_place


def test_phase_timer_reports_the_running_phase_to_the_open_log(tmp_path, capsys):
    log = MetricsLog(tmp_path, 2, MonitorConfig(ray_metrics=False, tensorboard=False, progress="bar"))
    with PhaseTimer()("reward"):
        pass
    log.close()
    assert "now: reward" in capsys.readouterr().out
    with PhaseTimer()("train"):  # a closed log no longer shows phases
        pass
    assert capsys.readouterr().out == ""


# --- sinks ----------------------------------------------------------------------------------------


def test_tensorboard_gets_the_jsonl_scalars(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log = MetricsLog(tmp_path, 2, MonitorConfig(ray_metrics=False, progress="lines"))
    steps = [{"reward/mean": 0.25, "reward/mean/math": 0.5, "moe/expert_load/math/layer0": [0.5, 0.5]},
             {"reward/mean": 0.75, "reward/mean/math": 1.0, "moe/expert_load/math/layer0": [0.4, 0.6]}]
    for step, metrics in enumerate(steps):
        log.log(step, metrics)
    log.close()

    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [sorted(r) for r in records] == [sorted(["step", "wall_time", *m]) for m in steps]  # schema unchanged
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == ["reward/mean", "reward/mean/math"]  # lists stay in the jsonl
    assert [(e.step, e.value) for e in events.Scalars("reward/mean/math")] == [(0, 0.5), (1, 1.0)]
    assert len(capsys.readouterr().out.strip().splitlines()) == 2  # a progress line per step


@pytest.mark.skipif(__import__("importlib").util.find_spec("wandb") is not None, reason="wandb is installed")
def test_wandb_without_the_package_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError, match=r"monitor\.wandb.*wandb package is not installed"):
        load_config(None, ["monitor.wandb=true"])


# --- dry run --------------------------------------------------------------------------------------


@pytest.fixture
def dry_run(tmp_path):
    """run_rl.main(--dry-run) on the built-in defaults (an empty config file) plus overrides."""
    empty = tmp_path / "defaults.yaml"
    empty.write_text("")

    def run(*overrides: str) -> int:
        return run_rl.main(["--config", str(empty), f"run.dir={tmp_path}/run", *overrides, "--dry-run"])

    return run


def test_dry_run_bad_monitor_value_exits_2_naming_the_key(dry_run, capsys):
    with pytest.raises(SystemExit) as exc:
        dry_run("monitor.progress=fancy")
    assert exc.value.code == 2
    assert "monitor.progress" in capsys.readouterr().err


def test_dry_run_missing_checkpoint_without_bootstrap_exits_naming_it(dry_run, tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(SystemExit) as exc:
        dry_run(f"model.path={missing}", "model.bootstrap=false")
    assert isinstance(exc.value.code, str) and str(missing) in exc.value.code and "does not exist" in exc.value.code


def test_dry_run_refuses_a_directory_that_is_not_a_checkpoint_and_keeps_it(dry_run, tmp_path):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "keep.txt").write_text("mine")
    for bootstrap in ("true", "false"):
        with pytest.raises(SystemExit) as exc:
            dry_run(f"model.path={notes}", f"model.bootstrap={bootstrap}")
        assert str(notes) in exc.value.code and "not a Hugging Face checkpoint" in exc.value.code
    assert (notes / "keep.txt").read_text() == "mine"  # bootstrapping there would have replaced it


def test_dry_run_refuses_an_unknown_model_config(dry_run, tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({"model_type": "no_such_model"}))
    with pytest.raises(SystemExit) as exc:
        dry_run(f"model.path={ckpt}")
    assert str(ckpt) in exc.value.code and "no usable config.json" in exc.value.code


@pytest.mark.slow  # the tiny_checkpoint fixture bootstraps a model when no earlier test did
def test_dry_run_names_missing_weights_or_tokenizer_and_plans_a_good_checkpoint(
    dry_run, tiny_checkpoint, tmp_path, capsys
):
    for missing, problem in (("*.safetensors", "no weight files"), ("tokenizer*", "no tokenizer")):
        hollow = tmp_path / f"hollow-{problem[3:7]}"
        shutil.copytree(tiny_checkpoint, hollow, ignore=shutil.ignore_patterns(missing))
        with pytest.raises(SystemExit) as exc:
            dry_run(f"model.path={hollow}")
        assert str(hollow) in exc.value.code and problem in exc.value.code

    assert dry_run(f"model.path={tiny_checkpoint}") == 0
    out = capsys.readouterr().out
    assert "monitor: Ray dashboard on 127.0.0.1:8265; metrics to metrics.jsonl, Ray metrics, TensorBoard" in out


# --- the dashboard --------------------------------------------------------------------------------


def _get(url: str, token: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_start_ray_prints_the_dashboard_which_refuses_requests_without_the_token():
    token = secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}  # no cluster to join, default auth
    env.update(RAY_AUTH_TOKEN=token, OMP_NUM_THREADS="1")
    script = ("import sys\nfrom rl.actors import start_ray\nfrom rl.config import load_config\n"
              "start_ray(load_config(None, ['run.num_cpus=1', 'monitor.dashboard_port=18265']))\n"
              "print('READY', flush=True)\nsys.stdin.readline()\n")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("READY"):
                break
        out = "".join(lines)
        url = re.search(r"Ray dashboard: (http://127\.0\.0\.1:\d+)", out)
        assert url, out
        assert "ray get-auth-token" in out and "$RAY_AUTH_TOKEN" in out and token not in out
        api = url.group(1) + "/nodes?view=summary"
        assert _get(api) == 401
        assert _get(api, token="not-" + token) == 403
        assert _get(api, token=token) == 200
        metrics = re.search(r"Prometheus metrics of this node: (http://\S+/metrics)", out)
        assert metrics and _get(metrics.group(1)) == 200
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)


# --- a real run, read back from Prometheus --------------------------------------------------------


def _prometheus(url: str) -> list[tuple[str, dict[str, str], float]]:
    """(name, labels, value) of every sample in a Prometheus text exposition."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    samples = []
    for line in text.splitlines():
        m = re.fullmatch(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)(?: \d+)?", line)
        if m and not line.startswith("#"):
            labels = dict(re.findall(r'([a-zA-Z_]\w*)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
            samples.append((m.group(1), labels, float(m.group(3))))
    return samples


@pytest.mark.slow
def test_short_run_exports_rl_metrics_to_prometheus_and_tensorboard(tiny_checkpoint, ray_session, tmp_path):
    import ray
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from data_mining.sampler import EpochSampler
    from rl.actors import build_actors, stop_actors
    from data_mining.miner import Miner
    from data_mining.prompts import load_prompts
    from rewards.pool import RewardWorker
    from run_rl import rl_loop

    run_dir = tmp_path / f"mon-{secrets.token_hex(3)}"  # the `run` tag tells this run's series apart
    cfg = load_config(
        None,  # the built-in defaults (equal to configs/tiny_cpu.yaml)
        [
            f"model.path={tiny_checkpoint}", f"run.dir={run_dir}", "run.steps=2", "train.prompts_per_step=8",
            "rollout.samples_per_prompt=4", "data.train_prompts=64", "data.heldout_prompts=8",
            "data.tasks=[arithmetic]", "data.task_weights=[1]",
            "data.max_digits=1", "rollout.max_new_tokens=6", "train.kl_coef=0.01", "rollout.max_staleness=0",
        ],
    )
    actors = build_actors(cfg, tiny_checkpoint, RewardWorker)
    train_rows, _ = load_prompts(cfg)
    log = MetricsLog(run_dir, cfg.run.steps, cfg.monitor, domains={r["domain"] for r in train_rows})
    rl_loop(cfg, actors, Miner.from_config(cfg, train_rows, sampler=EpochSampler(train_rows, seed=0)), log, run_dir)
    log.close()
    stop_actors(actors)
    last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])

    # Ray exports on an interval (~10 s here): poll until the last step's values are out.
    node = next(n for n in ray.nodes() if n["Alive"])
    url = f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
    deadline = time.time() + 90
    while True:
        ours = {(name, labels["domain"]): value for name, labels, value in _prometheus(url)
                if labels.get("run") == run_dir.name}
        if ours.get(("ray_rl_step", "all")) == 1.0 or time.time() > deadline:
            break
        time.sleep(2)

    expected = {
        ("ray_rl_reward_mean", "all"), ("ray_rl_reward_mean", "math"), ("ray_rl_reward_pass_rate", "math"),
        ("ray_rl_filter_zero_variance_fraction", "all"), ("ray_rl_train_kl", "all"),
        ("ray_rl_train_entropy", "all"), ("ray_rl_train_clip_fraction", "all"),
        ("ray_rl_response_length_mean", "all"), ("ray_rl_response_truncated_fraction", "all"),
        ("ray_rl_rollout_logprob_abs_diff_max", "all"), ("ray_rl_perf_tokens_per_second", "all"),
        ("ray_rl_time_generate", "all"), ("ray_rl_time_train", "all"), ("ray_rl_time_sync", "all"),
        ("ray_rl_step", "all"),
    }
    assert expected <= set(ours), sorted(expected - set(ours))
    # Every scalar of the last record is on the endpoint with its value: new keys export by themselves.
    for key, value in scalars(last).items():
        if key == "wall_time":
            continue
        name, tags = ray_metric(key, {"math"})
        assert ours[("ray_" + name, tags["domain"])] == pytest.approx(value, rel=1e-6, abs=1e-12), key
    for name in ("ray_rl_reward_mean", "ray_rl_reward_pass_rate"):
        assert 0.0 <= ours[(name, "math")] <= 1.0
    assert 0.0 <= ours[("ray_rl_response_truncated_fraction", "all")] <= 1.0
    assert ours[("ray_rl_train_entropy", "all")] > 0 and ours[("ray_rl_perf_tokens_per_second", "all")] > 0
    assert ours[("ray_rl_rollout_logprob_abs_diff_max", "all")] < 1e-3
    assert ours[("ray_rl_time_generate", "all")] > 0

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert set(events.Tags()["scalars"]) >= set(scalars(last)) - {"step", "wall_time"}
    assert events.Scalars("reward/mean")[-1].value == pytest.approx(last["reward/mean"])


def test_a_fresh_start_in_a_used_run_directory_drops_the_earlier_records(tmp_path, capsys):
    # run.resume=latest after a crash before the first checkpoint starts afresh at step 0
    monitor = MonitorConfig(ray_metrics=False, progress="lines")
    log = MetricsLog(tmp_path, 3, monitor)
    for step in range(2):
        log.log(step, {"reward/mean": float(step)})
    log.close()
    again = MetricsLog(tmp_path, 3, monitor, start_step=0)
    for step in range(3):
        again.log(step, {"reward/mean": 10.0 + step})
    again.close()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["reward/mean"]) for r in records] == [(0, 10.0), (1, 11.0), (2, 12.0)]
    assert "dropped 2 record(s) of step 0 and later, logged by an earlier start" in capsys.readouterr().out


def test_a_resumed_log_drops_the_steps_after_its_checkpoint(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monitor = MonitorConfig(ray_metrics=False, tensorboard=True, progress="lines")
    log = MetricsLog(tmp_path, 5, monitor)
    for step in range(4):  # the run crashes after step 3; its checkpoint was written after step 1
        log.log(step, {"reward/mean": float(step)})
    log.close()
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 4, "rew')  # torn last line
    resumed = MetricsLog(tmp_path, 5, monitor, start_step=2)
    for step in range(2, 5):
        resumed.log(step, {"reward/mean": 10.0 + step})
    resumed.close()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["reward/mean"]) for r in records] == [(0, 0.0), (1, 1.0), (2, 12.0), (3, 13.0), (4, 14.0)]
    assert "dropped 3 record(s) of step 2 and later" in capsys.readouterr().out
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("reward/mean")] == [
        (0, 0.0), (1, 1.0), (2, 12.0), (3, 13.0), (4, 14.0)]


def test_dry_run_writes_nothing_into_the_run_directory(dry_run, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("the run's own config\n")
    ckpt = tmp_path / "ckpt"
    assert dry_run(f"model.path={ckpt}") == 0
    assert [p.name for p in run.iterdir()] == ["config.yaml"]
    assert (run / "config.yaml").read_text() == "the run's own config\n"
    assert not ckpt.exists()


def test_dry_run_loads_custom_rewards_and_routes(dry_run, tmp_path, capsys, restore_registry):
    mine = tmp_path / "my_rewards.py"
    mine.write_text("from rewards.registry import RewardResult\n\ndef rhymes(sample):\n    return RewardResult(1.0)\n")
    broken = tmp_path / "broken.py"
    broken.write_text("import no_such_module_here\n")
    rows = tmp_path / "poems.jsonl"
    rows.write_text("".join(json.dumps({"id": f"p{i}", "domain": "poetry", "prompt": "A poem."}) + "\n"
                            for i in range(20)))
    base = [f"model.path={tmp_path / 'ckpt'}", f"data.datasets=[{rows}]", "eval.before=false", "eval.after=false"]
    with pytest.raises(SystemExit) as exc:
        dry_run(*base)  # no reward scores 'poetry': every row is a bad row
    assert "none of its 20 rows is valid (unrouted_domain 20)\n  line 1: unrouted_domain: no reward scores domain " \
           "'poetry'" in exc.value.code
    assert dry_run(*base, f"reward.custom=[{mine}:rhymes]", "reward.routes=[poetry=rhymes]") == 0
    with pytest.raises(SystemExit) as exc:
        dry_run(*base, f"reward.custom=[{broken}:rhymes]", "reward.routes=[poetry=rhymes]")
    assert exc.value.code == 2 and "ModuleNotFoundError: No module named 'no_such_module_here'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        dry_run(*base, f"reward.custom=[{mine}:rhymes]", "reward.routes=[poetry=rhyme]")  # a typo in the route
    assert "route for domain 'poetry' names unknown reward(s) ['rhyme']" in capsys.readouterr().err


def test_dry_run_catches_a_truncated_weight_file(dry_run, tiny_dir, tmp_path):
    cut = tmp_path / "cut"
    shutil.copytree(tiny_dir, cut)
    weights = cut / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    with pytest.raises(SystemExit) as exc:
        dry_run(f"model.path={cut}")
    assert str(cut) in exc.value.code and "model.safetensors is truncated" in exc.value.code


def test_prompt_plus_completion_beyond_the_model_context_is_refused(tiny_dir):
    from transformers import AutoConfig

    from rl.checkpoint import check_context
    from rl.config import load_config

    context = AutoConfig.from_pretrained(tiny_dir).max_position_embeddings
    fits = load_config(None, [f"data.max_prompt_tokens={context - 24}", "rollout.max_new_tokens=24"])
    check_context(fits, Path(tiny_dir))
    over = load_config(None, [f"data.max_prompt_tokens={context - 23}", "rollout.max_new_tokens=24"])
    with pytest.raises(SystemExit) as exc:
        check_context(over, Path(tiny_dir))
    assert f"data.max_prompt_tokens ({context - 23}) + max_new_tokens (24" in exc.value.code
    assert f"max_position_embeddings {context}" in exc.value.code


@pytest.mark.parametrize("value, ok", [(1, True), (2.0, True), (0.5, False), (1.5, False)])
def test_kv_cache_gib_is_a_whole_number_of_gib_or_refused(value, ok):
    from rl.config import ConfigError, load_config

    if ok:
        assert load_config(None, [f"rollout.kv_cache_gib={value}"]).rollout.kv_cache_gib == value
        return
    with pytest.raises(ConfigError, match=f"rollout.kv_cache_gib.*got {value}"):
        load_config(None, [f"rollout.kv_cache_gib={value}"])


def test_actors_that_cannot_be_placed_are_refused_before_ray_starts(dry_run, capsys):
    with pytest.raises(SystemExit) as exc:
        dry_run("run.num_cpus=1")  # the default roles: 2 engines x 0.5 + a reward actor x 0 + the trainer's 1
    assert "the actors need 2 Ray CPUs (rollout 2 x 0.5, reward 1 x 0, trainer 1 x 1" in exc.value.code
    assert "run.num_cpus is 1" in exc.value.code
    assert dry_run("run.num_cpus=2") == 0


def test_cores_busy_counts_a_process_from_its_first_reading_and_drops_one_that_exits():
    import time

    from rl.metrics import cores_busy

    pids: list[int] = []
    busy = cores_busy(lambda: list(pids), cores=1.0)
    assert math.isnan(busy())  # nothing to read yet
    spin = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time() + 30\nwhile time.time() < t: pass"])
    try:
        time.sleep(0.3)  # CPU it uses before it is named must not count
        pids.append(spin.pid)
        assert math.isnan(busy())  # first named at this reading: nothing measured for it yet
        time.sleep(0.6)
        share = busy()
        assert 0.2 < share <= 1.05  # a spinning process: near one core (less when the cores are shared)
    finally:
        spin.kill()
        spin.wait()
    pids.remove(spin.pid)
    time.sleep(0.1)
    after = busy()  # it exited: it stops counting, and what it had used is not taken back
    assert math.isnan(after) or after >= 0
