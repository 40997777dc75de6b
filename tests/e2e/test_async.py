"""Asynchronous training on the real actors (vLLM engines, reward actor, trainer): the engines keep
generating while the trainer updates, weights land between engine steps, and every token keeps the
policy version that sampled it."""

from __future__ import annotations

import pytest

import run_rl
from data_mining.prompts import load_prompts
from rl.actors import stop_actors
from rl.config import load_config
from rl.metrics import MetricsLog, step_metrics
from rl.pipeline import run_async

OVERRIDES = [
    "run.steps=5", "train.prompts_per_step=4", "rollout.samples_per_prompt=4", "rollout.num_actors=2",
    "data.train_prompts=64", "data.heldout_prompts=8", "data.max_digits=1", "rollout.max_new_tokens=6",
    "data.tasks=[arithmetic]", "data.task_weights=[1]",
    "train.drop_zero_variance_groups=false",  # every step updates, so versions are exact
]


class Recorder:
    """The trainer's batches, as the pipeline hands them over (a spy around `train_step`)."""

    def __init__(self, trainer, ray) -> None:
        self.trainer, self.ray, self.batches = trainer, ray, []
        self.train_step = self

    def remote(self, samples):
        self.batches.append(samples)
        return self.trainer.train_step.remote(samples)

    def __getattr__(self, name):
        return getattr(self.trainer, name)


def _run(ray, tiny_checkpoint: str, run_dir, *extra: str):
    cfg = load_config("configs/tiny_cpu.yaml", [f"model.path={tiny_checkpoint}", f"run.dir={run_dir}",
                                                "monitor.ray_metrics=false", *OVERRIDES, *extra])
    train_rows, _ = load_prompts(cfg)
    actors, miner, _ = run_rl.setup_run(cfg, tiny_checkpoint, train_rows)
    spy = Recorder(actors.trainer, ray)
    actors.trainer = spy
    log = MetricsLog(run_dir, cfg.run.steps)
    rows: dict[int, dict] = {}

    def metrics(*args):
        out = step_metrics(*args, 1e-4)
        rows[args[-1]] = out
        return out

    try:
        steps, _ = run_async(cfg, actors, miner, log, run_dir, metrics, save=None)
    finally:
        log.close()
        actors.trainer = spy.trainer
        stop_actors(actors)  # the actors, their bundles and names
    return cfg, steps, rows, spy.batches, miner


@pytest.mark.slow
def test_continue_keeps_each_tokens_version_and_the_staleness_bound(tiny_checkpoint, ray_session, tmp_path):
    cfg, steps, rows, batches, miner = _run(ray_session, tiny_checkpoint, tmp_path, "rollout.max_staleness=1",
                                           "rollout.partial=continue")
    assert steps == 5 and sorted(rows) == list(range(5))
    for step, (metrics, batch) in enumerate(zip((rows[s] for s in sorted(rows)), batches)):
        assert metrics["policy_version"] == step + 1
        for s in batch:
            assert len(s.token_versions) == len(s.completion_ids)
            assert s.token_versions == sorted(s.token_versions)  # versions only move forward in a sample
            assert s.policy_version == s.token_versions[0]
            assert step - s.policy_version <= 1  # trained by version `step`: at most K newer
    assert max(r["rollout/staleness_max"] for r in rows.values()) <= 1
    assert any(r["rollout/staleness_max"] == 1 for r in rows.values())  # generation ran ahead of training
    # Tokens sampled by the trainer's current weights match its log-probs (the sync is exact).
    gaps = [r["rollout/logprob_abs_diff_max"] for r in rows.values() if "rollout/logprob_abs_diff_max" in r]
    assert gaps and max(gaps) < 1e-4
    assert not miner.in_flight


@pytest.mark.slow
def test_restart_regenerates_requests_under_the_new_weights(tiny_checkpoint, ray_session, tmp_path):
    cfg, steps, rows, batches, _ = _run(ray_session, tiny_checkpoint, tmp_path, "rollout.max_staleness=2",
                                       "rollout.partial=restart", "rollout.max_new_tokens=12")
    assert steps == 5
    for step, batch in enumerate(batches):
        for s in batch:
            assert len(set(s.token_versions)) == 1  # a restarted request is sampled by one version only
            assert step - s.policy_version <= 2
    assert max(r["rollout/staleness_max"] for r in rows.values()) <= 2
