"""Data-parallel trainer actors as the driver starts them (`rl.actors.start_trainers`, `rl.actors.train`):
two actors in one gloo group update the policy as one does on the same global batch, and a
checkpoint written by two resumes on two or on one exactly as the uninterrupted run continues."""

from __future__ import annotations

import pytest
import ray
import torch

from rl.actors import Actors, start_trainers, train
from rl.config import load_config
from rl.placement import reserve, roles
from tests.rl.test_dp import CASES, _samples, model_dirs  # noqa: F401  (model_dirs is a fixture)

CASE = "replay"  # routing replay on, two micro-batches per process


def _config(actors: int):
    # cfg.train like test_dp's case, with `actors` trainers; no engine or reward actor is started here.
    overrides = [f"train.{k}={v}" for k, v in CASES[CASE][1].items()]
    return load_config(None, ["rollout.max_staleness=0", *overrides, "train.lr=1e-4", "train.lr_schedule=constant", f"train.num_actors={actors}",
                              "run.steps=2", "rollout.max_new_tokens=8", "rollout.num_actors=1",
                              "rollout.cpus_per_actor=0", "train.cpus=1"])


class Trainers:
    """`n` trainer actors in their reserved bundles, started from `model_path`."""

    def __init__(self, n: int, model_path: str) -> None:
        cfg = _config(n)
        self.placement = reserve([r for r in roles(cfg) if r.name == "trainer"], timeout_s=60)
        trainers = start_trainers(cfg, self.placement, model_path)
        self.actors = Actors([], [], trainers[0], trainers)

    def step(self) -> dict:
        return train(self.actors, _samples(CASE))

    def weights(self) -> dict[str, torch.Tensor]:
        return ray.get(self.actors.trainer.weights.remote())

    def close(self) -> None:
        for t in self.actors.trainers:
            ray.kill(t)
        self.placement.release()


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def two_steps(ray_session, model_dirs, tmp_path_factory):  # noqa: F811
    """Two trainer actors: weights at the start, after one step (saved) and after two steps."""
    model = model_dirs[CASES[CASE][0]]
    pair = Trainers(2, model)
    try:
        start = pair.weights()
        stats = pair.step()
        saved = str(tmp_path_factory.mktemp("dp_ckpt") / "checkpoint-1")
        ray.get(pair.actors.trainer.save.remote(saved))
        one_step = pair.weights()
        pair.step()
        return dict(model=model, start=start, stats=stats, one_step=one_step, two_steps=pair.weights(), saved=saved)
    finally:
        pair.close()


def test_two_trainer_actors_update_as_one(two_steps):
    single = Trainers(1, two_steps["model"])
    try:
        stats = single.step()
        weights = single.weights()
    finally:
        single.close()
    moved, diff = _max_diff(two_steps["one_step"], two_steps["start"]), _max_diff(weights, two_steps["one_step"])
    print(f"max update {moved:.2e}, max |1 trainer - 2 trainers| {diff:.2e}")
    assert moved > 5e-5  # the step moved the weights, so agreement below is not vacuous
    assert diff < 1e-5  # fp32 rounding, as in test_dp
    assert two_steps["stats"]["train/grad_norm"] == pytest.approx(stats["train/grad_norm"], rel=1e-4)


@pytest.mark.parametrize("resumed_on", [2, 1])
def test_a_two_trainer_checkpoint_resumes_on_any_number_of_trainers(two_steps, resumed_on):
    resumed = Trainers(resumed_on, two_steps["saved"])
    try:
        versions = ray.get([t.load_state.remote(two_steps["saved"]) for t in resumed.actors.trainers])
        assert versions == [1] * resumed_on
        resumed.step()
        weights = resumed.weights()
    finally:
        resumed.close()
    moved, diff = _max_diff(two_steps["two_steps"], two_steps["one_step"]), _max_diff(weights, two_steps["two_steps"])
    print(f"resumed on {resumed_on}: second step's update {moved:.2e}, max |resumed - uninterrupted| {diff:.2e}")
    assert moved > 5e-5
    assert diff < 1e-5
