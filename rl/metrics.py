"""The one place that records metrics.

`MetricsLog.log(step, metrics)` sends one step's metrics (a flat dict keyed like `reward/mean/math`) to:

* `metrics.jsonl` in the run directory: the canonical record, one JSON object per step;
* Ray metrics (`ray.util.metrics.Gauge`, set from the driver): the Ray dashboard's Metrics view and
  each node's Prometheus endpoint (`http://<node ip>:<metrics export port>/metrics`) show them;
* TensorBoard event files in `<run dir>/tensorboard`, tagged with the jsonl keys themselves;
* Weights & Biases, when `monitor.wandb` is on;
* a progress display on stdout (`Progress`).

Only numeric values go to the Ray, TensorBoard and W&B sinks; lists (e.g. per-expert loads) stay in
the jsonl record. A NaN or infinite value is a symptom, so every sink records it as such: the jsonl
stays strict JSON and writes the strings `"nan"`, `"inf"` or `"-inf"` in its place (`float()` reads
them back; `rl.jsonl.non_finite_floats` converts a whole record), the Ray, TensorBoard and W&B sinks
get the float itself, so the dashboards show it rather than a gap that looks like a normal step, and
the report lists the steps where it happened.

Key -> Ray metric (`ray_metric`), so that every new key exports without registration:

1. split the key on `/`; when the last part is a domain (one seen in `reward/mean/<domain>`, which
   `sample_metrics` writes for every domain in the batch, or one passed to `MetricsLog`), it becomes
   the `domain` tag; otherwise the value is an overall one and the tag is `domain="all"`;
2. the remaining parts, each with characters outside `[a-zA-Z0-9_]` replaced by `_`, are joined with
   `_` behind the prefix `rl_`.

    reward/mean                 -> rl_reward_mean{domain="all"}
    reward/pass_rate/math       -> rl_reward_pass_rate{domain="math"}
    mining/band/medium/code     -> rl_mining_band_medium{domain="code"}
    time/generate               -> rl_time_generate{domain="all"}
    train/kl                    -> rl_train_kl{domain="all"}

Every gauge also carries `run` (the run directory's name). Ray prefixes application metrics with
`ray_` on the Prometheus endpoint: `ray_rl_reward_mean{domain="math",run="tiny_cpu",...}`. The
driver's `step` is exported too (`rl_step`), so a time series can be read against the RL step.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import shutil
import sys
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any, Callable, Iterator, TextIO

from rl.config import MonitorConfig
from rl.jsonl import dumps

DOMAIN_KEY_PREFIX = "reward/mean/"  # `sample_metrics` writes reward/mean/<domain> for every domain seen
_ILLEGAL = re.compile(r"[^a-zA-Z0-9_]")

# The display of the open MetricsLog: PhaseTimer reports the phase it enters there, so the live
# progress can say what the step is doing without the driver's loop passing a display around.
_display: Progress | None = None


class PhaseTimer:
    """Named, timed phases of one step: `with timer("generate"): ...` -> `time/generate`."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        if _display is not None:
            _display.phase(name)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[f"time/{name}"] = self.seconds.get(f"time/{name}", 0.0) + time.perf_counter() - t0


def ray_metric(key: str, domains: Collection[str]) -> tuple[str, dict[str, str]]:
    """The Prometheus-legal Ray metric name and tags of a jsonl key (rules in the module docstring)."""
    parts = key.split("/")
    domain = "all"
    if len(parts) > 1 and parts[-1] in domains:
        domain = parts.pop()
    return "rl_" + "_".join(_ILLEGAL.sub("_", p) for p in parts), {"domain": domain}


def scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """The numeric entries of a metrics dict, NaN and infinities included, as floats (bools count as 0/1)."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}


class Progress:
    """Per-step progress: one line rewritten in place on a terminal, a plain line per step otherwise.

    `mode` is "bar" (in place), "lines" (a line per step) or "auto" (in place when `stream` is a TTY,
    so CI logs and redirected output get plain lines). In place, the line also has a bar and names
    the phase that is running. ETA = mean seconds per step x steps left; the mean is taken over the
    steps after the first, so set-up, evaluation or a mining pass before step 0 (which run phases
    too) stop counting once there are two steps; the first step alone is timed from its first phase.
    """

    PHASE_KEYS = ("generate", "reward", "train", "sync")

    def __init__(self, total_steps: int, mode: str = "auto", stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout
        isatty = getattr(self.stream, "isatty", None)
        self.in_place = mode == "bar" or (mode == "auto" and bool(isatty and isatty()))
        self.total = total_steps
        self.done = 0
        self.t0: float | None = None  # first phase seen
        self.first_end: float | None = None  # end of the first step
        self.head, self.body = f"step 0/{total_steps}", ""
        self.drawn = False

    def phase(self, name: str) -> None:
        if self.t0 is None:
            self.t0 = time.time()
        if self.in_place:  # the running phase goes first: a line wider than the terminal is cut
            self._draw(" | ".join(part for part in (self.head, f"now: {name}", self.body) if part))

    def step(self, step: int, m: dict[str, Any]) -> None:
        now = time.time()
        if self.t0 is None:
            self.t0 = now
        self.done += 1
        if self.first_end is None:
            self.first_end = now
            per_step = now - self.t0
        else:
            per_step = (now - self.first_end) / (self.done - 1)
        eta = per_step * max(0, self.total - step - 1)
        phases = " ".join(f"{p} {m[f'time/{p}']:.1f}s" for p in self.PHASE_KEYS if f"time/{p}" in m)
        bar = ""
        if self.in_place:  # 12 cells, one '#' per finished twelfth of the run
            filled = (step + 1) * 12 // max(1, self.total)
            bar = " [" + "#" * filled + "." * (12 - filled) + "]"
        self.head = f"step {step + 1}/{self.total}{bar} | eta {_clock(eta)}"
        self.body = (
            f"reward {m.get('reward/mean', 0.0):.3f} pass {m.get('reward/pass_rate', 0.0):.3f} | "
            f"{m.get('perf/tokens_per_second', 0.0):.0f} tok/s | {phases} | "
            + (f"gap {m['rollout/logprob_abs_diff_max']:.1e}" if "rollout/logprob_abs_diff_max" in m else "gap n/a")
        )
        if m.get("rollout/staleness_max"):  # asynchronous training: how old the batch's tokens were
            self.body += f" | stale {m['rollout/staleness_max']:.0f}"
        if self.in_place:
            self._draw(f"{self.head} | {self.body}")
        else:
            print(f"{self.head} | {self.body}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.drawn:  # leave the last state on screen, and the cursor on a fresh line
            self.stream.write("\n")
            self.stream.flush()
            self.drawn = False

    def _draw(self, line: str) -> None:
        # A line longer than the terminal wraps, and "\r" then rewrites only its last row.
        width = shutil.get_terminal_size().columns - 1
        self.stream.write("\r\033[K" + line[:width])
        self.stream.flush()
        self.drawn = True


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class _RayMetrics:
    """One Gauge per metric name, created on first use, tagged (domain, run)."""

    def __init__(self, run: str, domains: Collection[str]) -> None:
        self.run = run
        self.domains = set(domains)
        self.gauges: dict[str, Any] = {}

    def write(self, values: dict[str, float]) -> None:
        from ray.util.metrics import Gauge

        self.domains.update(k[len(DOMAIN_KEY_PREFIX):] for k in values if k.startswith(DOMAIN_KEY_PREFIX))
        for key, value in values.items():
            name, tags = ray_metric(key, self.domains)
            gauge = self.gauges.get(name)
            if gauge is None:
                base = key if tags["domain"] == "all" else key.rpartition("/")[0]
                gauge = self.gauges[name] = Gauge(
                    name, description=f"metrics.jsonl key {base}[/<domain>]", tag_keys=("domain", "run")
                )
            gauge.set(value, tags={**tags, "run": self.run})


class MetricsLog:
    """Records each step's metrics in every enabled sink (see the module docstring).

    `monitor` is the config's `monitor` section (None: jsonl, Ray metrics when Ray is up, and
    progress lines; no TensorBoard or W&B); `domains` are the run's capability domains, known
    up front from the datasets (more are learned from `reward/mean/<domain>` keys).
    """

    def __init__(
        self, run_dir: str | Path, total_steps: int, monitor: MonitorConfig | None = None,
        domains: Collection[str] = (), start_step: int | None = None,
    ) -> None:
        """`start_step`: the run's first step (0 for a fresh start, a resumed run's checkpoint step);
        what an earlier start in this directory logged from that step on (after the checkpoint a run
        resumes from, or all of it for a fresh start) is cut from metrics.jsonl and hidden in
        TensorBoard, so that no step is recorded twice. None keeps everything."""
        global _display
        run_dir = Path(run_dir)
        self.path = run_dir / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if start_step is not None:
            truncate_metrics(self.path, start_step)
        self.start = time.time()
        self._file = self.path.open("a")
        self.progress = Progress(total_steps, monitor.progress if monitor else "auto")
        _display = self.progress

        self._ray = None
        if monitor is None or monitor.ray_metrics:
            import ray

            if ray.is_initialized():
                self._ray = _RayMetrics(run_dir.resolve().name, domains)
        self._tb = None
        if monitor is not None and monitor.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_step)
        self._wandb = None
        if monitor is not None and monitor.wandb:
            self._wandb = _start_wandb(run_dir)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        record = {"step": step, "wall_time": round(time.time() - self.start, 3), **metrics}
        self._file.write(dumps(record) + "\n")
        self._file.flush()
        values = scalars(metrics)
        if self._ray is not None:
            self._ray.write({"step": float(step), **values})
        if self._tb is not None:
            for key, value in values.items():
                self._tb.add_scalar(key, value, step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log(values, step=step)
        self.progress.step(step, metrics)

    def close(self) -> None:
        global _display
        if _display is self.progress:
            _display = None
        self.progress.close()
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def truncate_metrics(path: Path, step: int) -> int:
    """Drop the records of `step` and later (and any line that does not parse, such as the torn last
    line of a crashed run) from the jsonl at `path`, rewriting it atomically; returns how many lines
    went, printing the count when some did."""
    if not path.exists():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
            keep = isinstance(record, dict) and int(record["step"]) < step
        except (ValueError, KeyError, TypeError):
            keep = False
        if keep:
            kept.append(line + "\n")
        elif line.strip():
            dropped += 1
    if dropped:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(kept))
        tmp.replace(path)
        print(f"{path}: dropped {dropped} record(s) of step {step} and later, logged by an earlier start of "
              "a run in this directory" + (" after the checkpoint this run resumes from" if step else ""), flush=True)
    return dropped


def _start_wandb(run_dir: Path) -> Any:
    try:
        import wandb
    except ImportError:
        raise RuntimeError(
            "monitor.wandb is true but the wandb package is not installed (pip install wandb)"
        ) from None
    import yaml

    config_path = run_dir / "config.yaml"
    config = yaml.safe_load(config_path.read_text()) if config_path.exists() else None
    return wandb.init(name=run_dir.resolve().name, dir=str(run_dir), config=config)


def sample_metrics(samples: list, prefix: str = "reward") -> dict[str, float]:
    """Reward mean and pass rate, overall and per domain, plus completion length and truncation."""
    out: dict[str, float] = {}
    if not samples:
        return out
    groups: dict[str, list] = {"": samples}
    for s in samples:
        groups.setdefault(s.domain, []).append(s)
    for domain, items in groups.items():
        suffix = f"/{domain}" if domain else ""
        out[f"{prefix}/mean{suffix}"] = sum(s.reward for s in items) / len(items)
        out[f"{prefix}/pass_rate{suffix}"] = sum(s.passed for s in items) / len(items)
    out["response/length_mean"] = sum(len(s.completion_ids) for s in samples) / len(samples)
    out["response/truncated_fraction"] = sum(s.truncated for s in samples) / len(samples)
    return out


def step_metrics(batch: Any, reward_stats: dict[str, float], train_stats: dict[str, Any], timer: PhaseTimer,
                 step: int, gap_warn: float) -> dict[str, Any]:
    """One RL step's record: the generated samples' rewards, reward and mining stats, the trainer's
    metrics, phase seconds and generation throughput; warns when the rollout/trainer log-prob gap
    exceeds `gap_warn` (the weight sync or the engine is then wrong)."""
    tokens = sum(len(s.completion_ids) for s in batch.generated)
    # Asynchronous steps generate throughout (`time/step`); synchronous ones in their generate phase.
    seconds = timer.seconds.get("time/generate") or timer.seconds["time/step"]
    metrics = {**sample_metrics(batch.generated), **reward_stats, **batch.metrics, **train_stats, **timer.seconds,
               "perf/tokens_per_second": tokens / seconds, "perf/generated_tokens": float(tokens)}
    gap = metrics.get("rollout/logprob_abs_diff_max", 0.0)
    if gap > gap_warn:
        print(f"WARNING: rollout/trainer log-prob gap {gap:.2e} exceeds {gap_warn:.0e} at step {step}", flush=True)
    return metrics


def cores_busy(pids: Callable[[], list[int]] | list[int], cores: float) -> Callable[[], float]:
    """A function returning the busy fraction of `cores` cores taken by the processes `pids` names
    (the run's driver and actors on this node, every thread and child included) since its last call
    (since this call, the first time): CPU seconds used / (wall seconds x cores). `pids` may be a
    function, asked again at every call: a process it names for the first time (a replaced actor)
    counts from then on, and one that is gone stops counting with what it used up to its last
    reading. NaN when none can be read."""
    import psutil

    current = pids if callable(pids) else (lambda: list(pids))
    procs: dict[int, Any] = {}
    seconds: dict[int, float] = {}  # CPU seconds of each process at its last reading

    def read(proc: Any) -> float:
        t = proc.cpu_times()
        return t.user + t.system + t.children_user + t.children_system

    def add_new() -> None:
        for pid in current():
            if pid not in procs:
                try:
                    proc = psutil.Process(pid)
                    procs[pid], seconds[pid] = proc, read(proc)
                except psutil.Error:  # gone already
                    pass

    add_new()
    last = [time.perf_counter()]

    def busy() -> float:
        used = 0.0
        for pid, proc in list(procs.items()):
            try:
                now_seconds = read(proc)
            except psutil.Error:  # exited since the last reading
                del procs[pid], seconds[pid]
                continue
            used, seconds[pid] = used + now_seconds - seconds[pid], now_seconds
        now, before = time.perf_counter(), last[0]
        last[0] = now
        readable = bool(procs)
        add_new()
        if not readable or now <= before or cores <= 0:
            return math.nan
        return used / ((now - before) * cores)

    return busy


def format_rates(result: dict | None) -> str:
    """'0.292 (code 0.559, instruction 0.641, math 0.133)' from an evaluation's result; 'n/a' without one."""
    if not result:
        return "n/a"
    domains = ", ".join(f"{k.split('/', 1)[1]} {v:.3f}" for k, v in sorted(result.items()) if "/" in k)
    return f"{result['pass_rate']:.3f}" + (f" ({domains})" if domains else "")


def describe_plan(cfg: Any, model_path: str, n_train: int, n_heldout: int, start_step: int) -> str:
    """What a run with `cfg` would do (the `--dry-run` output): steps, data, sinks, resume point."""
    m = cfg.monitor
    sinks = [name for name, on in (("metrics.jsonl", True), ("Ray metrics", m.ray_metrics),
                                   ("TensorBoard", m.tensorboard), ("W&B", m.wandb)) if on]
    where = "the cluster's" if cfg.run.ray_address else f"{m.dashboard_host}:{m.dashboard_port}"
    lines = [f"plan: {cfg.run.steps} steps x {cfg.train.prompts_per_step} prompts x "
             f"{cfg.rollout.samples_per_prompt} samples on {model_path}; {n_train} train / "
             f"{n_heldout} held-out prompts; run dir {Path(cfg.run.dir)}",
             f"monitor: Ray dashboard on {where}; metrics to {', '.join(sinks)}; progress {m.progress}"]
    if cfg.run.resume:
        lines.append(f"resume: from {cfg.run.resume} at step {start_step}")
    return "\n".join(lines)
