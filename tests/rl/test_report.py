"""rl.report: plots and report.md from a synthetic run directory, and the error paths of its CLI."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from rl.config import MonitorConfig
from rl.report import ReportError, ReportWarning, by_step, moving_average, write_report

REPO = Path(__file__).resolve().parents[2]
DOMAINS = ("math", "code")
STEPS = 60
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EXPECTED_PNGS = {"reward.png", "heldout.png", "phases.png", "training.png", "expert_load.png", "mining.png",
                 "ledger.png"}


def synthetic_step(step: int, rng: np.random.Generator) -> dict:
    """One plausible, noisy metrics record; expert load only every 10th step, like a sparse logger."""
    progress = step / STEPS
    record = {"step": step, "wall_time": round(2.0 + 0.4 * step + rng.normal(0, 0.01), 3)}
    for i, domain in enumerate(DOMAINS):
        rate = float(np.clip(0.2 + 0.1 * i + 0.3 * progress + rng.normal(0, 0.08), 0, 1))
        record[f"reward/mean/{domain}"] = rate
        record[f"reward/pass_rate/{domain}"] = rate
        for band, count in (("hard", 40 - 20 * progress), ("medium", 30.0), ("easy", 10 + 20 * progress)):
            record[f"mining/band/{band}/{domain}"] = round(count)
        if step % 10 == 0:  # the trainer's form: [layers][experts] per domain
            record[f"moe/expert_load/{domain}"] = [rng.dirichlet(np.full(8, 5.0)).tolist() for _ in range(4)]
    record["reward/mean"] = float(np.mean([record[f"reward/mean/{d}"] for d in DOMAINS]))
    record["reward/pass_rate"] = record["reward/mean"]
    record.update({
        "train/loss": float(rng.normal(0, 0.01)),
        "train/entropy": 0.9 - 0.5 * progress + float(rng.normal(0, 0.03)),
        "train/clip_fraction": float(abs(rng.normal(0.02, 0.01))),
        "train/grad_norm": float(abs(rng.normal(2.0, 0.5))),
        "response/length_mean": 120 + float(rng.normal(0, 10)),
        "response/truncated_fraction": float(abs(rng.normal(0.01, 0.005))),
        "rollout/logprob_abs_diff_max": float(10 ** rng.normal(-5, 0.3)),
        "rollout/logprob_abs_diff_mean": float(10 ** rng.normal(-6.5, 0.2)),
        "perf/tokens_per_second": 5000 + float(rng.normal(0, 300)),
        "time/generate": 0.15 + float(abs(rng.normal(0, 0.02))),
        "time/reward": 0.01 + float(abs(rng.normal(0, 0.002))),
        "time/train": 0.2 + float(abs(rng.normal(0, 0.02))),
        "time/sync": 0.03 + float(abs(rng.normal(0, 0.005))),
    })
    return record


def make_run(run_dir: Path, malformed_at: int | None = None) -> Path:
    """A finished run: metrics.jsonl (optionally with one broken line), summary.json, ledger.jsonl."""
    rng = np.random.default_rng(0)
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(synthetic_step(step, rng)) for step in range(STEPS)]
    if malformed_at is not None:
        lines[malformed_at - 1] = '{"step": 2, "reward/mean": 0.3'  # a write cut off mid-line
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    summary = {
        "model": "checkpoints/tiny-moe",
        "heldout_before": {"pass_rate": 0.26, "pass_rate/math": 0.22, "pass_rate/code": 0.30},
        "heldout_after": {"pass_rate": 0.50, "pass_rate/math": 0.46, "pass_rate/code": 0.54},
        "final_checkpoint": "runs/x/final",
    }
    (run_dir / "summary.json").write_text(json.dumps(summary))
    ledger = [{"prompt_id": f"p{i}", "domain": DOMAINS[i % 2], "pass_rate": float(rate),
               "band": "hard" if rate < 0.25 else "medium" if rate < 0.75 else "easy"}
              for i, rate in enumerate(rng.integers(0, 9, size=200) / 8)]
    (run_dir / "ledger.jsonl").write_text("".join(json.dumps(row) + "\n" for row in ledger))
    return run_dir


def assert_valid_png(path: Path) -> None:
    """Real PNG bytes of a non-trivial size that matplotlib can decode into an RGB(A) image."""
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    assert len(data) > 10_000, path
    image = imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4), path
    assert image.shape[0] >= 300 and image.shape[1] >= 400, (path, image.shape)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    """The report of one full synthetic run, shared by the tests that only read it."""
    return write_report(make_run(tmp_path_factory.mktemp("run") / "run"))


def test_every_plot_is_written_as_a_valid_png(report):
    assert report.name == "report.md" and report.parent.name == "report"
    assert {p.name for p in report.parent.glob("*.png")} == EXPECTED_PNGS
    for name in EXPECTED_PNGS:
        assert_valid_png(report.parent / name)


def test_report_md_summarises_the_run_and_links_each_plot(report):
    text = report.read_text()
    assert "26.0% -> 50.0% (+24.0 pts)" in text
    assert "| math | 22.0% | 46.0% | +24.0 pts |" in text
    assert f"Steps: {STEPS}" in text
    assert "Max log-prob gap" in text and "parity bar" in text
    assert "| generate |" in text and "| sync |" in text
    # How often each top-level phase was the step's longest, counted here from the metrics.
    records = [json.loads(line) for line in (report.parents[1] / "metrics.jsonl").read_text().splitlines()]
    phases = ("generate", "reward", "train", "sync")
    longest = [max(phases, key=lambda p: r[f"time/{p}"]) for r in records]
    assert longest.count("reward") == 0 and longest.count("train") > STEPS // 2
    for phase in phases:
        row = next(line for line in text.splitlines() if line.startswith(f"| {phase} |"))
        assert row.endswith(f"| {longest.count(phase)} steps |"), row
    for name in EXPECTED_PNGS:
        assert f"]({name})" in text


def test_optional_plots_are_skipped_and_stale_ones_removed(tmp_path):
    run = make_run(tmp_path / "run")
    write_report(run)
    # The same run, reduced to a bare reward log and no summary or ledger.
    rows = [{"step": s, "reward/mean": 0.1 * s} for s in range(5)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "summary.json").unlink()
    (run / "ledger.jsonl").unlink()
    report = write_report(run)
    assert {p.name for p in report.parent.glob("*.png")} == {"reward.png"}
    text = report.read_text()
    assert "not recorded" in text and "](reward.png)" in text and "](heldout.png)" not in text


def test_missing_metrics_is_a_clear_error_naming_the_file(tmp_path):
    with pytest.raises(ReportError, match=r"not found: .*metrics\.jsonl"):
        write_report(tmp_path)


def test_empty_metrics_is_a_clear_error_naming_the_file(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("\n")
    with pytest.raises(ReportError, match=r"no records: .*metrics\.jsonl"):
        write_report(tmp_path)


def test_malformed_line_is_skipped_with_a_warning_giving_its_number(tmp_path):
    run = make_run(tmp_path / "run", malformed_at=3)
    with pytest.warns(ReportWarning, match=r"metrics\.jsonl: skipping malformed line 3 "):
        report = write_report(run)
    text = report.read_text()
    assert f"Steps: {STEPS - 1}" in text
    assert "skipped malformed lines 3" in text


def test_parquet_ledger_is_read_when_pandas_is_available(tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    run = make_run(tmp_path / "run")
    rows = [json.loads(line) for line in (run / "ledger.jsonl").read_text().splitlines()]
    (run / "ledger.jsonl").unlink()
    pd.DataFrame(rows).to_parquet(run / "ledger.parquet")
    assert_valid_png(write_report(run).parent / "ledger.png")


def test_moving_average_keeps_a_constant_constant_up_to_the_edges():
    assert np.allclose(moving_average(np.full(20, 3.0), 7), 3.0)
    assert np.allclose(moving_average(np.arange(5.0), 1), np.arange(5.0))


def test_a_repeated_step_keeps_its_last_record():
    rows = [{"step": 0, "x": 1}, {"step": 1, "x": 2}, {"step": 1, "x": 3}, {"step": 2, "x": 4}]
    assert [r["x"] for r in by_step(rows)] == [1, 3, 4]


def run_cli(run_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "rl.report", str(run_dir)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)


def test_cli_exits_0_and_names_the_report(tmp_path):
    result = run_cli(make_run(tmp_path / "run", malformed_at=5))
    assert result.returncode == 0, result.stderr
    assert "report.md" in result.stdout
    assert "warning:" in result.stderr and "line 5" in result.stderr
    assert (tmp_path / "run" / "report" / "report.md").is_file()


def test_cli_exits_2_without_a_traceback_when_metrics_are_missing(tmp_path):
    result = run_cli(tmp_path)
    assert result.returncode == 2
    assert "metrics.jsonl" in result.stderr
    assert "Traceback" not in result.stderr


def test_expert_loads_reads_the_trainer_form_and_per_layer_keys():
    from rl.report import expert_loads

    rows = [
        {"step": 0, "moe/expert_load": [[0.5, 0.5], [1.0, 0.0]], "moe/expert_load/code": [[0.25, 0.75], [0.5, 0.5]]},
        {"step": 1, "moe/expert_load/math/layer1": [0.9, 0.1], "moe/expert_load/math/layer0": [0.2, 0.8]},
        {"step": 2, "train/loss": 0.1},
    ]
    step, loads = expert_loads(rows)
    assert step == 1 and loads == {"math": {0: [0.2, 0.8], 1: [0.9, 0.1]}}
    step, loads = expert_loads(rows[:1])
    assert step == 0 and loads == {"all": {0: [0.5, 0.5], 1: [1.0, 0.0]}, "code": {0: [0.25, 0.75], 1: [0.5, 0.5]}}


def test_moving_average_of_fewer_points_than_the_window_keeps_its_length():
    from rl.report import moving_average

    values = np.arange(5, dtype=float)
    smooth = moving_average(values, 27)
    assert smooth.shape == values.shape
    assert smooth[2] == pytest.approx(2.0) and smooth[0] == pytest.approx(1.0)  # the window shrinks at the ends


def test_report_survives_a_key_logged_on_few_steps(tmp_path):
    from rl.report import write_report

    with (tmp_path / "metrics.jsonl").open("w") as f:
        for step in range(300):
            record = {"step": step, "reward/mean": step / 300, "train/loss": 0.1}
            if step % 60 == 0:  # logged on fewer steps than the smoothing window
                record["mining/remine_moves"] = 3.0
            f.write(json.dumps(record) + "\n")
    out = write_report(tmp_path)
    assert (out.parent / "training.png").stat().st_size > 0


def test_non_finite_metrics_are_read_back_and_named_in_the_notes(tmp_path):
    from rl.metrics import MetricsLog
    from rl.report import load_run

    log = MetricsLog(tmp_path, 4, MonitorConfig(ray_metrics=False, progress="lines"))
    for step, loss in enumerate([0.5, float("nan"), math.inf, 0.25]):
        log.log(step, {"reward/mean": 0.5, "train/loss": loss})
    log.close()
    run = load_run(tmp_path)
    assert np.isnan(run.columns["train/loss"][1:3]).all() and run.columns["train/loss"][3] == 0.25
    assert run.rows[2]["train/loss"] == math.inf
    assert run.notes == ["`train/loss` was NaN or infinite at steps 1, 2 (left out of the plots)."]
    assert "`train/loss` was NaN or infinite at steps 1, 2" in write_report(tmp_path).read_text()


def test_summary_is_written_as_strict_json_and_read_back_with_its_non_finite_numbers(tmp_path):
    from rl.report import load_summary, save_summary

    summary = {"steps": 3, "heldout_after": {"pass_rate": float("nan"), "pass_rate/math": 0.5},
               "mining": {"rollouts_per_useful_group": float("inf")}}
    path = tmp_path / "summary.json"
    save_summary(path, summary)

    def refuse(token: str) -> None:
        raise ValueError(f"bare {token} in summary.json")

    strict = json.loads(path.read_text(), parse_constant=refuse)  # no NaN / Infinity tokens
    assert strict["heldout_after"]["pass_rate"] == "nan" and strict["mining"]["rollouts_per_useful_group"] == "inf"
    back = load_summary(path, notes=[])
    assert math.isnan(back["heldout_after"]["pass_rate"]) and back["heldout_after"]["pass_rate/math"] == 0.5
    assert back["mining"]["rollouts_per_useful_group"] == math.inf and back["steps"] == 3
