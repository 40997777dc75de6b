"""Turn a finished run directory into plots and a short markdown summary.

    python -m rl.report RUN_DIR        # writes RUN_DIR/report/{*.png, report.md}

Inputs (every metric key is optional; a plot is drawn only from what exists):

* ``metrics.jsonl``  one JSON object per RL step (required);
* ``summary.json``   held-out pass rates before/after RL (optional);
* ``ledger.parquet`` or ``ledger.jsonl``  per-prompt mining rows (optional).

Outputs: ``reward.png``, ``heldout.png``, ``phases.png``, ``training.png``, plus ``expert_load.png``,
``mining.png`` and ``ledger.png`` when their data exist, and ``report.md`` linking them.

Matplotlib is used through ``Figure`` objects only (no pyplot), so the report never touches the
process-wide backend or figure registry of whatever driver imports it.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from rl.jsonl import dumps, iter_jsonl, non_finite_floats

DPI = 120
PARITY_BAR = 1e-4  # trainer-vs-rollout log-prob gap below which the two engines count as matching
PHASES = ("generate", "reward", "train", "sync")  # the top-level phases that partition a step
OUTPUTS = ("reward.png", "heldout.png", "phases.png", "training.png", "expert_load.png", "mining.png",
           "ledger.png", "report.md")
EXPERT_LOAD_PREFIX = "moe/expert_load/"
MINING_PREFIX = "mining/band/"
# Bookkeeping keys that are not worth a panel of their own.
NOT_PLOTTED = {"step", "wall_time", "policy_version"}

# Known panels of training.png: title, [(key, legend label)], y label, y scale ("fraction" = linear from 0).
TRAINING_PANELS = [
    ("Policy loss", [("train/loss", None)], "loss (unitless)", "linear"),
    ("Entropy", [("train/entropy", None)], "entropy (nats / token)", "linear"),
    ("Clip fraction", [("train/clip_fraction", None)], "clipped tokens (fraction)", "fraction"),
    ("Gradient norm", [("train/grad_norm", None)], "global L2 norm", "linear"),
    ("Response length", [("response/length_mean", None)], "tokens / response", "linear"),
    ("Truncated responses", [("response/truncated_fraction", None)], "fraction of responses", "fraction"),
    ("Log-prob gap, trainer vs rollout",
     [("rollout/logprob_abs_diff_max", "max"), ("rollout/logprob_abs_diff_mean", "mean")],
     "|Δ log p| (nats, log scale)", "log"),
    ("Throughput", [("perf/tokens_per_second", None)], "tokens / s", "linear"),
]


class ReportError(Exception):
    """A run directory that cannot be reported on; the message names the offending file."""


class ReportWarning(UserWarning):
    """Something in the run directory was skipped, e.g. a malformed JSON line."""


@dataclass
class Run:
    """Everything read from a run directory, with the per-step metrics as aligned columns."""

    run_dir: Path
    steps: np.ndarray  # [S] step numbers, ascending and unique
    columns: dict[str, np.ndarray]  # scalar key -> [S] values, NaN where a step lacks the key
    rows: list[dict[str, Any]]  # the raw records, in step order (for list-valued keys)
    summary: dict[str, Any]
    ledger: list[dict[str, Any]] | None
    notes: list[str]  # things skipped, shown in report.md


# ----------------------------------------------------------------------------------------- reading


def read_jsonl(path: Path) -> tuple[list[dict[str, Any]], list[int]]:
    """Parse one JSON object per line; return (records, 1-based numbers of skipped malformed lines).

    A run killed mid-write leaves a truncated last line, so a bad line is warned about and
    skipped rather than failing the whole report.
    """
    records, skipped = [], []
    for lineno, record in iter_jsonl(path):
        if not isinstance(record, dict):
            reason = record.msg if isinstance(record, json.JSONDecodeError) else "not a JSON object"
            warnings.warn(f"{path}: skipping malformed line {lineno} ({reason})", ReportWarning, stacklevel=2)
            skipped.append(lineno)
            continue
        records.append(record)
    return records, skipped


def load_metrics(path: Path) -> tuple[list[dict[str, Any]], list[int]]:
    """Read ``metrics.jsonl`` (its "nan", "inf" and "-inf" strings as floats); raise ReportError
    naming the file when it is missing or has no records."""
    if not path.is_file():
        raise ReportError(f"metrics file not found: {path}")
    rows, skipped = read_jsonl(path)
    rows = [non_finite_floats(row) for row in rows]
    if not rows:
        detail = f" ({len(skipped)} malformed lines skipped)" if skipped else ""
        raise ReportError(f"metrics file has no records: {path}{detail}")
    return rows, skipped


def by_step(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Order records by step, keeping the last record of a repeated step (a resumed run re-logs it)."""
    latest: dict[float, dict[str, Any]] = {}
    for index, row in enumerate(rows):
        step = row.get("step", index)
        latest[step if _is_number(step) else index] = row
    return [latest[s] for s in sorted(latest)]


def to_columns(rows: list[dict[str, Any]]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Turn records into a step array and one float column per scalar key (NaN where absent)."""
    steps = np.array([row["step"] if _is_number(row.get("step")) else i for i, row in enumerate(rows)],
                     dtype=float)
    keys = sorted({k for row in rows for k, v in row.items() if _is_number(v)} - {"step"})
    columns = {}
    for key in keys:
        values = np.array([row[key] if _is_number(row.get(key)) else np.nan for row in rows], dtype=float)
        values[~np.isfinite(values)] = np.nan  # inf would wreck autoscaling and log axes
        columns[key] = values
    return steps, columns


def non_finite_notes(rows: list[dict[str, Any]]) -> list[str]:
    """A note naming each metric that was NaN or infinite and at which steps: the plots leave such
    values out, so the note is where they show."""
    steps: dict[str, list[Any]] = {}
    for row in rows:
        for key, value in row.items():
            if _is_number(value) and not math.isfinite(value):
                steps.setdefault(key, []).append(row.get("step"))
    return [f"`{key}` was NaN or infinite at steps {_line_list(at)} (left out of the plots)."
            for key, at in sorted(steps.items())]


def save_summary(path: Path, summary: dict[str, Any]) -> None:
    """Write ``summary.json`` as strict JSON (a non-finite number as "nan", "inf" or "-inf", which
    `load_summary` reads back as floats)."""
    path.write_text(dumps(summary, indent=2))


def load_summary(path: Path, notes: list[str]) -> dict[str, Any]:
    """Read ``summary.json`` if present; a broken one is noted, not fatal."""
    if not path.is_file():
        return {}
    try:
        summary = non_finite_floats(json.loads(path.read_text()))
    except json.JSONDecodeError as err:
        warnings.warn(f"{path}: unreadable ({err.msg} at line {err.lineno}); ignored", ReportWarning, stacklevel=2)
        notes.append(f"`{path.name}` is not valid JSON (line {err.lineno}); held-out results omitted.")
        return {}
    return summary if isinstance(summary, dict) else {}


def load_ledger(run_dir: Path, notes: list[str]) -> list[dict[str, Any]] | None:
    """Read the per-prompt ledger: parquet through pandas when importable, else the jsonl variant."""
    parquet, jsonl = run_dir / "ledger.parquet", run_dir / "ledger.jsonl"
    if parquet.is_file():
        try:
            import pandas as pd  # optional: only needed for the parquet ledger

            return pd.read_parquet(parquet).to_dict("records")
        except ImportError as err:
            notes.append(f"`{parquet.name}` skipped: reading parquet needs pandas with pyarrow ({err}).")
        except (OSError, ValueError) as err:  # a truncated or foreign file must not sink the report
            notes.append(f"`{parquet.name}` skipped: unreadable ({err}).")
    if jsonl.is_file():
        rows, skipped = read_jsonl(jsonl)
        if skipped:
            notes.append(f"`{jsonl.name}`: skipped malformed lines {_line_list(skipped)}.")
        return rows
    return None


def load_run(run_dir: str | Path) -> Run:
    """Read everything the report needs from a run directory."""
    run_dir = Path(run_dir)
    metrics_path = run_dir / "metrics.jsonl"
    rows, skipped = load_metrics(metrics_path)
    notes = [f"`{metrics_path.name}`: skipped malformed lines {_line_list(skipped)}."] if skipped else []
    rows = by_step(rows)
    notes += non_finite_notes(rows)
    steps, columns = to_columns(rows)
    summary = load_summary(run_dir / "summary.json", notes)
    ledger = load_ledger(run_dir, notes)
    return Run(run_dir, steps, columns, rows, summary, ledger, notes)


# --------------------------------------------------------------------------------------- numerics


def smoothing_window(n: int) -> int:
    """An odd moving-average window of about 4% of the run, at least 5 steps and at most n."""
    window = max(5, n // 25)
    window = min(window, n)
    return window if window % 2 else max(1, window - 1)


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Centered moving average; near the ends the window shrinks instead of padding with fake values."""
    if window <= 1 or values.size == 0:
        return values.astype(float)
    # np.convolve(mode="same") returns max(len(values), window) points: a key logged on fewer steps
    # than the window (one seen only in some steps) must not come back longer than it went in.
    window = min(window, values.size)
    kernel = np.ones(window)
    sums = np.convolve(values, kernel, mode="same")
    counts = np.convolve(np.ones_like(values, dtype=float), kernel, mode="same")
    return sums / counts


def valid(steps: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop the steps where a key was absent (NaN)."""
    mask = ~np.isnan(values)
    return steps[mask], values[mask]


def domains_of(columns: dict[str, np.ndarray], prefix: str) -> list[str]:
    """Domains that have a ``<prefix>/<domain>`` column, sorted."""
    return sorted(k[len(prefix) + 1:] for k in columns if k.startswith(prefix + "/"))


def heldout_rates(evaluation: dict[str, Any]) -> dict[str, float]:
    """``{"pass_rate": x, "pass_rate/math": y}`` -> ``{"all": x, "math": y}`` (numeric entries only)."""
    rates = {}
    for key, value in evaluation.items():
        if key == "pass_rate" and _is_number(value):
            rates["all"] = float(value)
        elif key.startswith("pass_rate/") and _is_number(value):
            rates[key[len("pass_rate/"):]] = float(value)
    return rates


def expert_loads(rows: list[dict[str, Any]]) -> tuple[float | None, dict[str, dict[int, list[float]]]]:
    """The last step that logged expert load, as {domain: {layer number: load per expert}}.

    Reads the trainer's form, `moe/expert_load/<domain>` = [layers][experts] (and
    `moe/expert_load` = all domains, shown as "all"), and one list per layer under
    `moe/expert_load/<domain>/layer<N>`."""
    pattern = re.compile(r"layer(\d+)$")
    for row in reversed(rows):
        per_domain: dict[str, dict[int, list[float]]] = {}
        for key, value in row.items():
            if key not in (EXPERT_LOAD_PREFIX.rstrip("/"),) and not key.startswith(EXPERT_LOAD_PREFIX):
                continue
            if not isinstance(value, list):
                continue
            if value and all(isinstance(layer, list) and layer and all(_is_number(v) for v in layer) for layer in value):
                domain = key[len(EXPERT_LOAD_PREFIX):] or "all"
                if "/" not in domain:
                    per_domain[domain] = dict(enumerate(value))
                continue
            domain, _, layer = key[len(EXPERT_LOAD_PREFIX):].rpartition("/")
            match = pattern.match(layer)
            if match and domain and all(_is_number(v) for v in value):
                per_domain.setdefault(domain, {})[int(match.group(1))] = value
        if per_domain:
            return row.get("step"), dict(sorted(per_domain.items()))
    return None, {}


def mining_bands(columns: dict[str, np.ndarray]) -> dict[str, dict[str, str]]:
    """{domain: {band: column key}} from ``mining/band/<band>/<domain>`` columns."""
    found: dict[str, dict[str, str]] = {}
    for key in columns:
        if key.startswith(MINING_PREFIX):
            band, _, domain = key[len(MINING_PREFIX):].partition("/")
            if band and domain:
                found.setdefault(domain, {})[band] = key
    return dict(sorted(found.items()))


def ledger_by_band(ledger: list[dict[str, Any]]) -> dict[str, dict[str, np.ndarray]]:
    """{band: {domain: pass rates}}, bands ordered from hardest (lowest median pass rate) to easiest."""
    groups: dict[str, dict[str, list[float]]] = {}
    for row in ledger:
        rate = row.get("pass_rate")
        if not _is_number(rate) or math.isnan(rate):
            continue
        band = str(row.get("band") or "(no band)")
        domain = str(row.get("domain") or "(no domain)")
        groups.setdefault(band, {}).setdefault(domain, []).append(float(rate))
    median = {band: np.median([r for rates in doms.values() for r in rates]) for band, doms in groups.items()}
    ordered = sorted(groups, key=median.get)
    return {band: {d: np.array(r) for d, r in sorted(groups[band].items())} for band in ordered}


def _pad_layers(layers: dict[int, list[float]]) -> tuple[list[int], np.ndarray]:
    """Stack per-layer lists into a [layers, experts] array ordered by layer number (ragged -> NaN)."""
    order = sorted(layers)
    width = max(len(v) for v in layers.values())
    grid = np.full((len(order), width), np.nan)
    for row, layer in enumerate(order):
        grid[row, : len(layers[layer])] = layers[layer]
    return order, grid


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _line_list(numbers: list[int], limit: int = 10) -> str:
    shown = ", ".join(map(str, numbers[:limit]))
    return shown + (f" and {len(numbers) - limit} more" if len(numbers) > limit else "")


# --------------------------------------------------------------------------------------- plotting


def _colors(names: list[str]) -> dict[str, str]:
    """A stable colour per name; "all" is always black so the aggregate stands out."""
    palette = [f"C{i}" for i in range(10)]
    others = [n for n in names if n != "all"]
    colors = {name: palette[i % len(palette)] for i, name in enumerate(others)}
    colors["all"] = "black"
    return colors


def _grid(n: int, ncols: int, panel: tuple[float, float]) -> tuple[Figure, list]:
    """A figure with n panels on a grid; leftover cells are hidden."""
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(panel[0] * ncols, panel[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _plot_smoothed(ax, steps, values, window, color, label=None, log=False) -> None:
    """Raw per-step values as a faint line, their moving average bold on top."""
    steps, values = valid(steps, values)
    if log:  # zeros (perfect agreement) cannot be drawn on a log axis
        keep = values > 0
        steps, values = steps[keep], values[keep]
    if values.size == 0:
        return
    ax.plot(steps, values, color=color, alpha=0.25, linewidth=0.8)
    smooth = np.exp(moving_average(np.log(values), window)) if log else moving_average(values, window)
    ax.plot(steps, smooth, color=color, linewidth=2.0, label=label)


def _save(fig: Figure, path: Path, caption: str | None = None) -> Path:
    if caption:
        fig.suptitle(caption, fontsize=10, color="dimgray")
    fig.savefig(path, dpi=DPI)
    return path


def _smoothing_caption(window: int) -> str:
    return f"faint: raw per step   bold: {window}-step moving average"


def plot_reward(run: Run, path: Path, window: int) -> Path | None:
    """Reward mean and pass rate over steps, per domain (and overall when there are several domains)."""
    panels = []
    for metric, title, ylabel, scale in (("reward/mean", "Mean reward", "reward (per sample)", 1.0),
                                         ("reward/pass_rate", "Pass rate", "pass rate (% of samples)", 100.0)):
        domains = domains_of(run.columns, metric)
        # With one domain the overall curve is that domain's curve: drawing it twice only hides it.
        names = domains + ["all"] if len(domains) != 1 and metric in run.columns else domains
        if names:
            panels.append((metric, title, ylabel, scale, names))
    if not panels:
        return None
    fig, axes = _grid(len(panels), 2, (6.5, 4.5))
    for ax, (metric, title, ylabel, scale, names) in zip(axes, panels):
        colors = _colors(names)
        for name in names:
            key = metric if name == "all" else f"{metric}/{name}"
            _plot_smoothed(ax, run.steps, run.columns[key] * scale, window, colors[name], label=name)
        ax.set(title=title, xlabel="RL step", ylabel=ylabel)
        if scale == 100.0:
            ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.legend(title="domain", loc="best")
    return _save(fig, path, _smoothing_caption(window))


def plot_heldout(run: Run, path: Path) -> Path | None:
    """Held-out pass rate per domain before and after RL as grouped bars, values on the bars."""
    before = heldout_rates(run.summary.get("heldout_before") or {})
    after = heldout_rates(run.summary.get("heldout_after") or {})
    names = sorted((set(before) | set(after)) - {"all"})
    names = names if len(names) == 1 else names + (["all"] if "all" in before or "all" in after else [])
    if not names:
        return None
    x = np.arange(len(names))
    width = 0.38
    fig = Figure(figsize=(max(5.0, 1.8 * len(names) + 2.5), 4.5), layout="constrained")
    ax = fig.subplots()
    for offset, label, rates, color in ((-width / 2, "before RL", before, "#9e9e9e"),
                                        (width / 2, "after RL", after, "#1f77b4")):
        if not rates:
            continue
        values = [100 * rates.get(n, np.nan) for n in names]
        bars = ax.bar(x + offset, values, width, label=label, color=color)
        ax.bar_label(bars, labels=["" if np.isnan(v) else f"{v:.1f}%" for v in values], padding=3, fontsize=9)
    ax.set_xticks(x, [_heldout_tick(n, before, after) for n in names])
    ax.set(title="Held-out pass rate before / after RL", ylabel="pass rate (% of samples)", xlabel="domain")
    ax.set_ylim(0, 110)  # headroom above 100 % for the value labels
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper left")
    return _save(fig, path)


def _heldout_tick(name: str, before: dict[str, float], after: dict[str, float]) -> str:
    if name in before and name in after:
        return f"{name}\n({100 * (after[name] - before[name]):+.1f} pts)"
    return name


def step_seconds(run: Run) -> tuple[np.ndarray, np.ndarray] | None:
    """Measured wall seconds per step from consecutive ``wall_time`` stamps (step 0 holds start-up)."""
    wall = run.columns.get("wall_time")
    if wall is None or run.steps.size < 2:
        return None
    return run.steps[1:], np.diff(wall)


def phase_stack(run: Run) -> tuple[list[str], np.ndarray, np.ndarray] | None:
    """The top-level phases timed in the run, and their seconds as [phase, step] on the steps where
    every one of them was timed (with those steps); None when no phase was timed."""
    phases = [p for p in PHASES if f"time/{p}" in run.columns]
    if not phases:
        return None
    stack = np.vstack([run.columns[f"time/{p}"] for p in phases])
    complete = ~np.isnan(stack).any(axis=0)
    return phases, run.steps[complete], stack[:, complete]


def plot_phases(run: Run, path: Path, window: int) -> Path | None:
    """Smoothed seconds per phase stacked, with the raw total and the measured step time for reference."""
    timed = phase_stack(run)
    if timed is None:
        return None
    phases, steps, stack = timed
    fig = Figure(figsize=(12, 4.8), layout="constrained")
    ax = fig.subplots()
    labels = [f"{p} (mean {stack[i].mean():.3g} s)" for i, p in enumerate(phases)]
    ax.stackplot(steps, *[moving_average(row, window) for row in stack], labels=labels, alpha=0.85)
    ax.plot(steps, stack.sum(axis=0), color="black", alpha=0.25, linewidth=0.8, label="sum of phases, raw")
    measured = step_seconds(run)
    if measured is not None:
        m_steps, m_secs = valid(*measured)
        ax.plot(m_steps, moving_average(m_secs, window), color="black", linestyle="--", linewidth=1.5,
                label="measured step time (wall clock)")
    ax.set(title="Seconds per phase per step (stacked)", xlabel="RL step", ylabel="seconds per step")
    # Clip the y-axis at a high percentile so a few start-up or GC spikes don't flatten the stack.
    top = np.percentile(stack.sum(axis=0), 99.5)
    ax.set_ylim(0, 1.15 * top)
    ax.set_xlim(steps.min(), steps.max())
    ax.grid(alpha=0.3)
    # Outside the axes: inside, the legend would cover the top of the stack, where the detail is.
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9)
    return _save(fig, path, f"stacked areas: {window}-step moving averages")


def training_panels(run: Run) -> list[tuple[str, list[tuple[str, str | None]], str, str]]:
    """The known training panels whose keys exist, then one panel per leftover scalar key."""
    panels = []
    used = set(NOT_PLOTTED)
    for title, series, ylabel, scale in TRAINING_PANELS:
        present = [(k, label) for k, label in series if k in run.columns]
        used.update(k for k, _ in series)
        if present:
            panels.append((title, present, ylabel, scale))
    # Keys a later version adds still get a panel; keys shown in other figures or the summary don't.
    shown_elsewhere = ("reward/mean", "reward/pass_rate", "time/", MINING_PREFIX)
    for key in sorted(run.columns):
        if key not in used and not key.startswith(shown_elsewhere):
            panels.append((key, [(key, None)], key.rsplit("/", 1)[-1], "linear"))
    return panels


def plot_training(run: Run, path: Path, window: int) -> Path | None:
    """Small multiples of the optimisation and rollout health metrics."""
    panels = training_panels(run)
    if not panels:
        return None
    fig, axes = _grid(len(panels), 4 if len(panels) > 6 else 3, (4.3, 3.3))
    for ax, (title, series, ylabel, scale) in zip(axes, panels):
        for i, (key, label) in enumerate(series):
            _plot_smoothed(ax, run.steps, run.columns[key], window, f"C{i}", label=label, log=scale == "log")
        ax.set(title=_panel_title(title, [run.columns[k] for k, _ in series]), xlabel="RL step", ylabel=ylabel)
        ax.grid(alpha=0.3)
        if scale == "log":
            _draw_parity_bar(ax)
        else:
            # Offset-free scientific ticks: tiny values (a learning rate) stay legible.
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 5), useOffset=False)
        if scale == "fraction":  # 0 is the floor, not the middle of the axis; a sliver below keeps 0 visible
            ax.set_ylim(-0.03 * ax.get_ylim()[1], ax.get_ylim()[1])
        if any(label for _, label in series):
            ax.legend(fontsize=8, loc="best")
    return _save(fig, path, _smoothing_caption(window))


def _panel_title(title: str, columns: list[np.ndarray]) -> str:
    """Say so when a metric never changed: a flat line alone looks like a plotting bug."""
    values = np.concatenate(columns)
    if values.size and not np.isnan(values).all() and np.nanmin(values) == np.nanmax(values):
        return f"{title} (constant {np.nanmin(values):.3g})"
    return title


def _draw_parity_bar(ax) -> None:
    """Dashed parity-bar line, labelled on the line itself, with a decade of headroom above it."""
    ax.set_yscale("log")
    low, high = ax.get_ylim()
    ax.set_ylim(low, max(high, PARITY_BAR) * 10)
    ax.axhline(PARITY_BAR, color="red", linestyle="--", linewidth=1.2)
    ax.text(0.98, PARITY_BAR * 1.3, f"parity bar ({PARITY_BAR:.0e})", color="red", fontsize=8,
            ha="right", va="bottom", transform=ax.get_yaxis_transform())


def plot_expert_load(run: Run, path: Path) -> Path | None:
    """Last step's expert load, one layer x expert heatmap per domain, centred on the uniform load."""
    step, loads = expert_loads(run.rows)
    if not loads:
        return None
    fig, axes = _grid(len(loads), 3, (5.5, 4.5))
    for ax, (domain, layers) in zip(axes, loads.items()):
        layer_ids, grid = _pad_layers(layers)
        uniform = 1.0 / grid.shape[1]
        # White = uniform routing; red = overloaded, blue = starved experts.
        norm = TwoSlopeNorm(vmin=0.0, vcenter=uniform, vmax=max(np.nanmax(grid), 2 * uniform))
        image = ax.imshow(grid, aspect="auto", cmap="RdBu_r", norm=norm, interpolation="nearest")
        ax.set(title=f"{domain} (step {step})", xlabel="expert index", ylabel="layer")
        # Rows are positions, not layer numbers (layers may be logged sparsely): label them by number.
        rows = range(0, len(layer_ids), math.ceil(len(layer_ids) / 16))
        ax.set_yticks(list(rows), [str(layer_ids[r]) for r in rows])
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        cbar = fig.colorbar(image, ax=ax)
        cbar.set_label(f"fraction of tokens (uniform = {uniform:.3g})")
    return _save(fig, path, "Expert load per layer at the last logged step")


def plot_mining(run: Run, path: Path) -> Path | None:
    """Prompt counts per difficulty band over steps, one panel per domain."""
    bands = mining_bands(run.columns)
    if not bands:
        return None
    all_bands = sorted({b for per_domain in bands.values() for b in per_domain})
    colors = _colors(all_bands)
    fig, axes = _grid(len(bands), 3, (5.5, 4.0))
    for ax, (domain, per_band) in zip(axes, bands.items()):
        for band, key in sorted(per_band.items()):
            ax.plot(*valid(run.steps, run.columns[key]), color=colors[band], linewidth=1.8, label=band)
        ax.set(title=f"Mining bands: {domain}", xlabel="RL step", ylabel="prompts (count)")
        ax.grid(alpha=0.3)
        ax.legend(title="band", fontsize=8)
    return _save(fig, path)


def plot_ledger(run: Run, path: Path) -> Path | None:
    """Histogram of per-prompt pass rates, one panel per band, stacked by domain."""
    groups = ledger_by_band(run.ledger or [])
    if not groups:
        return None
    domains = sorted({d for per_domain in groups.values() for d in per_domain})
    colors = _colors(domains)
    bins = np.linspace(0, 100, 21)
    fig, axes = _grid(len(groups), 4, (4.2, 3.5))
    for ax, (band, per_domain) in zip(axes, groups.items()):
        names = list(per_domain)
        ax.hist([100 * per_domain[d] for d in names], bins=bins, stacked=True, label=names,
                color=[colors[d] for d in names])
        count = sum(len(v) for v in per_domain.values())
        ax.set(title=f"band: {band} ({count} prompts)", xlabel="pass rate (%)", ylabel="prompts (count)")
        ax.set_xlim(0, 100)
        ax.grid(alpha=0.3)
        if len(domains) > 1:
            ax.legend(title="domain", fontsize=8)
    return _save(fig, path, "Ledger: per-prompt pass rate by band")


# --------------------------------------------------------------------------------------- markdown


def _pct(rate: float | None) -> str:
    return "n/a" if rate is None else f"{100 * rate:.1f}%"


def heldout_lines(summary: dict[str, Any]) -> list[str]:
    """The before -> after sentence and a per-domain table."""
    before = heldout_rates(summary.get("heldout_before") or {})
    after = heldout_rates(summary.get("heldout_after") or {})
    if not before and not after:
        return ["- Held-out pass rate: not recorded in `summary.json`"]
    lines = [f"- Held-out pass rate: {_heldout_change(before.get('all'), after.get('all'))}", "",
             "| domain | before | after | change |", "|---|---|---|---|"]
    names = sorted((set(before) | set(after)) - {"all"}) + (["all"] if "all" in before or "all" in after else [])
    for name in names:
        b, a = before.get(name), after.get(name)
        delta = "n/a" if a is None or b is None else f"{100 * (a - b):+.1f} pts"
        lines.append(f"| {name} | {_pct(b)} | {_pct(a)} | {delta} |")
    return lines + [""]


def _heldout_change(before: float | None, after: float | None) -> str:
    if before is None or after is None:
        return f"{_pct(before)} -> {_pct(after)}"
    return f"{_pct(before)} -> {_pct(after)} ({100 * (after - before):+.1f} pts)"


def reward_lines(run: Run, window: int) -> list[str]:
    """Final and best smoothed values of the overall reward and pass rate."""
    lines = []
    for key, label in (("reward/mean", "Reward (mean)"), ("reward/pass_rate", "Train pass rate")):
        if key not in run.columns:
            continue
        steps, values = valid(run.steps, run.columns[key])
        smooth = moving_average(values, window)
        best = int(np.argmax(smooth))
        lines.append(f"- {label}, {window}-step moving average: final {smooth[-1]:.3f}, "
                     f"best {smooth[best]:.3f} at step {steps[best]:.0f}")
    return lines


def gap_line(run: Run) -> str | None:
    """Largest trainer-vs-rollout log-prob gap, judged against the parity bar."""
    gap = run.columns.get("rollout/logprob_abs_diff_max")
    if gap is None or np.isnan(gap).all():
        return None
    worst = int(np.nanargmax(gap))
    verdict = "below" if gap[worst] < PARITY_BAR else "ABOVE"
    return (f"- Max log-prob gap (trainer vs rollout): {gap[worst]:.2e} at step {run.steps[worst]:.0f} "
            f"({verdict} the {PARITY_BAR:.0e} parity bar)")


def largest_phase_counts(run: Run) -> dict[str, int]:
    """For each top-level phase timer: on how many steps it took longest (steps missing one are skipped)."""
    timed = phase_stack(run)
    if timed is None:
        return {}
    phases, _, stack = timed
    winners = np.argmax(stack, axis=0)
    return {f"time/{p}": int((winners == i).sum()) for i, p in enumerate(phases)}


def phase_lines(run: Run) -> list[str]:
    """Mean seconds for every timer; the top-level phases first, then any nested or extra timers."""
    timers = [k for k in run.columns if k.startswith("time/")]
    if not timers:
        return []
    ordered = [f"time/{p}" for p in PHASES if f"time/{p}" in timers]
    largest = largest_phase_counts(run)
    ordered += sorted(set(timers) - set(ordered))
    lines = ["", "| timer | mean s / step | largest phase on |", "|---|---|---|"]
    lines += [f"| {k[len('time/'):]} | {np.nanmean(run.columns[k]):.4g} | "
              f"{f'{largest[k]} steps' if k in largest else ''} |" for k in ordered]
    measured = step_seconds(run)
    if measured is not None:
        lines.append(f"| *measured step (wall clock)* | {np.nanmean(measured[1]):.4g} |")
    return ["- Mean seconds per phase:"] + lines + [""]


def render_markdown(run: Run, window: int, written: list[Path]) -> str:
    """The short summary: run facts, outcomes, health, and the plots that were written."""
    lines = [f"# RL run report: {run.run_dir.name}", "", f"- Run dir: `{run.run_dir}`"]
    if "model" in run.summary:
        lines.append(f"- Model: `{run.summary['model']}`")
    lines.append(f"- Steps: {run.steps.size} (step {run.steps.min():.0f} to {run.steps.max():.0f})")
    wall = run.columns.get("wall_time")
    if wall is not None and not np.isnan(wall).all():
        seconds = float(np.nanmax(wall))
        lines.append(f"- Wall time: {seconds:.1f} s ({seconds / 60:.1f} min)")
    lines += reward_lines(run, window)
    lines += heldout_lines(run.summary)
    lines += [line for line in [gap_line(run)] if line]
    if "perf/tokens_per_second" in run.columns:
        lines.append(f"- Mean throughput: {np.nanmean(run.columns['perf/tokens_per_second']):.0f} tokens/s")
    lines += phase_lines(run)
    if "final_checkpoint" in run.summary:
        lines.append(f"- Final checkpoint: `{run.summary['final_checkpoint']}`")
    if run.notes:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in run.notes]
    lines += ["", "## Plots", ""]
    lines += [f"### {p.stem}\n\n![{p.stem}]({p.name})\n" for p in written]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ entry


def write_report(run_dir: str | Path) -> Path:
    """Write the plots and ``report.md`` into ``RUN_DIR/report/``; return the path of ``report.md``.

    Raises ReportError (naming the file) when ``metrics.jsonl`` is missing or holds no records.
    """
    run = load_run(run_dir)
    out = run.run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    for name in OUTPUTS:  # a plot whose data vanished since the last report must not linger
        (out / name).unlink(missing_ok=True)
    window = smoothing_window(run.steps.size)
    plots = [
        plot_reward(run, out / "reward.png", window),
        plot_heldout(run, out / "heldout.png"),
        plot_phases(run, out / "phases.png", window),
        plot_training(run, out / "training.png", window),
        plot_expert_load(run, out / "expert_load.png"),
        plot_mining(run, out / "mining.png"),
        plot_ledger(run, out / "ledger.png"),
    ]
    written = [p for p in plots if p is not None]
    report = out / "report.md"
    report.write_text(render_markdown(run, window, written))
    return report


def _warning_line(message, category, filename, lineno, line=None) -> str:
    """Warnings on the command line read as one plain line, not a source location."""
    return f"warning: {message}\n"


def finish_run(cfg: Any, actors: Any, miner: Any, run_dir: Path, heldout_rows: list[dict], summary: dict) -> None:
    """The end of a run: final checkpoint, held-out evaluation after RL, summary.json (with the
    miner's totals) and the report."""
    from rl import checkpoint
    from rl.actors import evaluate
    from rl.metrics import format_rates

    summary["mining"] = {**miner.totals, "rollouts_per_useful_group":
                         miner.totals["rollouts"] / max(1, miner.totals["useful_groups"])}
    final = run_dir / "final"
    checkpoint.save(cfg, actors, miner, final, summary["steps"])
    if cfg.eval.after:
        summary["heldout_after"] = evaluate(actors, heldout_rows, cfg)
    summary["final_checkpoint"] = str(final)
    miner.save(run_dir)
    save_summary(run_dir / "summary.json", summary)
    print(f"held-out sampled pass rate: before {format_rates(summary.get('heldout_before'))} -> after "
          f"{format_rates(summary.get('heldout_after'))}; checkpoint {final}", flush=True)
    try:  # everything is saved by now; a plotting failure must not fail the run
        print(f"report: {write_report(run_dir)}", flush=True)
    except Exception as exc:  # noqa: BLE001
        print(f"WARNING: the report could not be written ({type(exc).__name__}: {exc}); the run's results are "
              f"saved; retry with `python -m rl.report {run_dir}`", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rl.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="run directory containing metrics.jsonl")
    args = parser.parse_args(argv)
    warnings.formatwarning = _warning_line
    try:
        report = write_report(args.run_dir)
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"report written: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
