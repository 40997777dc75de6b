"""Iterative hard-example mining: spend rollouts on the prompts the current policy can learn from.

A GRPO group whose completions all pass or all fail has zero advantage and teaches nothing. The
miner keeps a per-prompt pass-rate ledger (`data_mining.ledger`) and uses it four ways:

* offline pass: before RL, k samples per train prompt estimate its pass rate with the starting
  policy; prompts outside the learnable band (too_hard_max, solved_min) are parked;
* online dynamic sampling (DAPO, Yu et al. 2025, arXiv:2503.14476, made durable by the ledger):
  each step draws prompts by their chance of a group with reward variance under the ledger's
  posterior: by default Thompson sampling (`thompson_pick`: a pass rate sampled from each prompt's
  Beta, the best chances win, so prompts known to sit near 0.5 are exploited and uncertain ones
  explored in proportion to their chance of being useful), or in proportion to that chance under
  the whole posterior (`mining.draw: weighted`, `Ledger.useful`); parked prompts count
  `parked_draw_weight` as much, rarely but never never. Each draw is sized to fill the step with
  probability `draw_confidence` at the recent keep rate (`draw_size`); zero-variance groups are
  dropped, and it draws again until the batch is full or the draw budget (`overdraw_budget` x
  prompts_per_step prompts) is spent; then it trains on what it has and records the short batch,
  never aborting;
* re-mining (`remine_count`, `overdue`): each step, parked prompts whose evidence the policy has
  outgrown (versions since their last evidence, their domain's pass-rate drift) are re-estimated,
  most overdue first, with a share of the step's rollouts that grows as the learnable pool
  shrinks; the re-estimate counts toward the step's draw budget, and when it samples
  samples_per_prompt completions its groups with reward variance join the batch;
* refill (`Miner.refill`, `data_mining.frontier`): a domain short of useful prompts gets new
  procedural prompts at the difficulty where its pass rate is near 0.5, or is reported exhausted;
* domain quotas: each draw is split across domains by share_d = floor + (1 - D floor) s_d / sum s,
  s_d = (learnable + unseen share of domain d) x (1 - mean pass rate of d), i.e. toward domains
  with more prompts left to learn and more headroom, never below the floor (the see-saw problem);
  a domain with less than one expected useful group left (every prompt solved or out of reach,
  nothing to refill it) gets no share while another has more: its parked prompts come back
  through re-mining only. Or by fixed weights.

With mining disabled it is the plain baseline: shuffled epochs (`EpochSampler`), one draw of
prompts_per_step prompts, zero-variance groups dropped; the ledger and metrics are kept either way.

Everything here is plain Python: `generate_and_score(rows, n)` (n scored Samples per row) is the
only link to the policy, so the miner runs the same with Ray actors or a scripted policy.
"""

from __future__ import annotations

import math
import random
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any, Callable, NamedTuple

import numpy as np

from data_mining.filters import filter_groups
from data_mining.frontier import Frontier
from data_mining.ledger import BANDS, PARKED, Ledger, thompson_pick, useful_probability
from data_mining.sampler import EpochSampler, rng_state, set_rng_state
from data_mining.sampler import weighted_sample
from data_mining.tasks import TASK_DOMAINS, TaskGenerator
from rl.config import Config, MiningConfig
from rl.types import Sample

GenerateAndScore = Callable[[list[dict[str, Any]], int], list[Sample]]
OFFLINE_CHUNK = 256  # prompts per generate call in the offline pass


@dataclass
class Draw:
    rows: list[dict[str, Any]]  # prompts to generate for
    n: int  # completions per prompt
    remine: bool = False  # a re-estimate of parked prompts, not training data
    scored: int = 0  # rows whose groups have come back (asynchronous training returns them in parts)
    found: int = 0  # of those, groups with reward variance


@dataclass
class StepBatch:
    train: list[Sample]  # the samples of the groups the update uses
    generated: list[Sample]  # every sample drawn for training this step (re-mining excluded)
    metrics: dict[str, float] = field(default_factory=dict)


def _useful(samples: list[Sample]) -> int:
    """Number of groups (prompts) with non-zero reward variance."""
    rewards: dict[str, set] = {}
    for s in samples:
        rewards.setdefault(s.prompt_id, set()).add(s.reward)
    return sum(len(r) > 1 for r in rewards.values())


def apportion(n: int, shares: dict[str, float], caps: dict[str, int]) -> dict[str, int]:
    """Split n slots across domains in proportion to `shares` (Sainte-Lague: each next slot goes to
    the open domain with the largest share / (2 alloc + 1)), never past a domain's cap."""
    alloc = {d: 0 for d in shares}
    for _ in range(min(n, sum(caps.values()))):
        open_ = [d for d in shares if alloc[d] < caps.get(d, 0) and shares[d] > 0]
        if not open_:
            break
        best = max(open_, key=lambda d: shares[d] / (2 * alloc[d] + 1))
        alloc[best] += 1
    return alloc


def draw_size(need: int, keep: float, confidence: float) -> int:
    """Prompts to draw for `need` more useful groups when each drawn group has reward variance with
    probability `keep`: the least n whose useful groups, Binomial(n, keep), reach `need` with
    probability about `confidence` (normal approximation with continuity correction:
    n keep - z sqrt(n keep (1 - keep)) >= need - 1/2, z the confidence's standard normal quantile).
    0.5 gives need / keep; more draws up front what
    would otherwise take another, smaller round of generation."""
    if need <= 0:
        return 0
    if confidence <= 0.5:
        return math.ceil(need / keep)
    z = NormalDist().inv_cdf(min(confidence, 0.999))
    root = z * math.sqrt(1.0 - keep)
    x = (root + math.sqrt(root * root + 4.0 * (need - 0.5))) / 2.0  # x = sqrt(n keep); continuity-corrected
    return math.ceil(x * x / keep - 1e-9)


def remine_count(supply: float, reserve: float, step_rollouts: int, cfg: MiningConfig) -> int:
    """Prompts to re-estimate this step: share x step_rollouts / estimate_samples, where the share
    grows from remine_min_share (the learnable and unseen bands' supply of useful groups is
    `reserve` or more) to remine_max_share (it is empty) in proportion to what is missing."""
    if not cfg.remine_after_versions:
        return 0
    missing = max(0.0, 1.0 - supply / reserve) if reserve > 0 else 0.0
    share = cfg.remine_min_share + (cfg.remine_max_share - cfg.remine_min_share) * missing
    return round(share * step_rollouts / cfg.estimate_samples)


def overdue(ledger: Ledger, pids: list[str], version: int, cfg: MiningConfig) -> list[str]:
    """The parked prompts among `pids` whose evidence the policy has outgrown, most overdue first:
    due = versions / remine_after_versions + drift / remine_drift >= 1, with versions the policy
    versions since the prompt's last evidence and drift how far its domain's pooled pass rate has
    moved since then. Ties keep the order of `pids`."""
    if not cfg.remine_after_versions:
        return []
    due = []
    for i, pid in enumerate(pids):
        e = ledger.entries[pid]
        if e.band in PARKED:
            drift = abs(ledger.domain_rate(e.domain) - e.domain_rate)
            score = (version - e.policy_version) / cfg.remine_after_versions + drift / cfg.remine_drift
            if score >= 1:
                due.append((-score, i, pid))
    return [pid for *_, pid in sorted(due)]


class Candidates(NamedTuple):
    """Prompts a draw may pick, with their Beta posterior (a, b) at the current policy version, their
    factor (base weight, times parked_draw_weight when parked) and weight = factor x the chance of a
    group with reward variance under (a, b)."""

    pids: list[str]
    a: np.ndarray
    b: np.ndarray
    factor: np.ndarray
    weight: np.ndarray


class Miner:
    def __init__(
        self,
        rows: list[dict[str, Any]],
        cfg: MiningConfig,
        prompts_per_step: int,
        samples_per_prompt: int,
        seed: int = 0,
        drop_zero_variance: bool = True,
        sampler: EpochSampler | None = None,
        generators: dict[str, TaskGenerator] | None = None,
    ) -> None:
        if not rows:
            raise ValueError("the train prompt pool is empty")
        self.cfg = cfg
        self.prompts_per_step, self.samples_per_prompt = prompts_per_step, samples_per_prompt
        self.drop_zero_variance = drop_zero_variance
        self.rows: dict[str, dict[str, Any]] = {}
        self.base_weight: dict[str, float] = {}
        self.by_domain: dict[str, list[str]] = {}
        self.ledger = Ledger(cfg.too_hard_max, cfg.solved_min, cfg.evidence_half_life, cfg.prior_strength,
                             cfg.park_min_evidence, cfg.decay)
        self._add_rows(rows)
        weights = [self.base_weight[r["id"]] for r in rows] if any("weight" in r for r in rows) else None
        self.sampler = sampler or EpochSampler(rows, seed=seed, weights=weights)
        self.rng = random.Random(seed)
        self.fixed_weights = {d: float(w) for d, _, w in (t.partition("=") for t in cfg.domain_weights)}
        self.keep_rate = 1.0  # running share of drawn groups that were useful; sizes the next draw
        self.in_flight: set[str] = set()  # prompts drawn whose groups are not scored yet (any step)
        self.version = 0  # the newest policy version seen in a scored group
        self.frontier = Frontier(generators or {}, cfg)
        self.warned: set[str] = set()  # domains whose exhaustion was reported
        self.starved = False  # the last step finished short: its prompts' records overstate the supply
        self.domain_keep: dict[str, float] = {}  # running share of drawn groups with reward variance
        self.last_supply = 0.0  # all domains' `supply` at the last plan_step (sizes the re-estimate)
        self.totals: Counter = Counter()  # run totals: rollouts, useful_groups, short_batches

    @classmethod
    def from_config(cls, cfg: Config, rows: list[dict[str, Any]], sampler: EpochSampler | None = None) -> "Miner":
        """The run's miner; procedural tasks (no data.datasets) get their generators for refills."""
        generators = {} if cfg.data.datasets or not cfg.mining.refill else {
            TASK_DOMAINS[t]: TaskGenerator(t, cfg.run.seed, cfg.mining.refill_max_difficulty) for t in cfg.data.tasks}
        return cls(rows, cfg.mining, cfg.train.prompts_per_step, cfg.rollout.samples_per_prompt,
                   seed=cfg.run.seed, drop_zero_variance=cfg.train.drop_zero_variance_groups, sampler=sampler,
                   generators=generators)

    def _add_rows(self, rows: list[dict[str, Any]]) -> None:
        """Rows into the pool and the ledger (unseen); a row without `weight` weighs what its
        domain's rows weigh on average."""
        default = {d: sum(self.base_weight[p] for p in ids) / len(ids) for d, ids in self.by_domain.items()}
        for r in rows:
            if r["id"] in self.rows:
                continue
            ids = self.by_domain.setdefault(r["domain"], [])
            self.rows[r["id"]] = r
            self.base_weight[r["id"]] = float(r.get("weight", default.get(r["domain"], 1.0)))
            ids.append(r["id"])
            self.ledger.add(r["id"], r["domain"], int(r.get("difficulty", -1)))

    def refill(self) -> dict[str, float]:
        """Domains whose supply of useful groups (`supply`) fell below their reserve
        (learnable_reserve x prompts_per_step x the domain's share), and, while a domain holds fewer
        than refill_prompts unseen prompts, one whose drawn groups had reward variance less often
        than refill_keep_rate of late or any domain after a short step (the ledger lags a policy that
        learns its prompts), get generated prompts at their frontier; unseen prompts already waiting
        are tried before more are made. A domain below its reserve that nothing can refill is
        reported exhausted (a metric each step, a warning once)."""
        if not self.cfg.enabled:
            return {}
        supply = self.supply()
        self.last_supply = sum(supply.values())
        metrics: dict[str, float] = {}
        self.frontier.steer(self.ledger, {d: max(self.ledger.entries[p].difficulty for p in ids)
                                          for d, ids in self.by_domain.items()})
        unseen = Counter(e.domain for e in self.ledger.entries.values() if e.band == "unseen")
        for d, share in self.domain_shares(skip_exhausted=False).items():
            reserve = self.cfg.learnable_reserve * self.prompts_per_step * share
            metrics[f"mining/supply/{d}"] = supply[d]
            lagging = self.starved or self.domain_keep.get(d, 1.0) < self.cfg.refill_keep_rate
            if supply[d] >= reserve and not (lagging and unseen[d] < self.cfg.refill_prompts):
                continue
            rows = self.frontier.refill(d, set(self.rows)) if self.cfg.refill else []
            self._add_rows(rows)
            metrics[f"mining/refill/{d}"] = float(len(rows))
            metrics[f"mining/exhausted/{d}"] = float(not rows and supply[d] < reserve)
            if metrics[f"mining/exhausted/{d}"] and d not in self.warned:
                self.warned.add(d)
                print(f"warning: mining: domain {d!r} is down to {supply[d]:.1f} expected useful groups in its "
                      f"learnable and unseen prompts (reserve {reserve:.0f}) and nothing can generate more; its share falls to "
                      "mining.domain_floor, to none below one expected useful group, and its parked prompts come back only "
                      "through re-mining", file=sys.stderr, flush=True)
        metrics.update({f"mining/frontier/{d}": x for d, x in self.frontier.knobs.items()})
        self.starved = False
        return metrics

    # --- offline pass -------------------------------------------------------------------------

    def offline_pass(self, generate_and_score: GenerateAndScore, step: int = 0) -> dict[str, float]:
        """Estimate every pool prompt's pass rate with `estimate_samples` samples; record them."""
        ids = list(self.rows)
        spent = 0
        for i in range(0, len(ids), OFFLINE_CHUNK):
            samples = generate_and_score([self.rows[p] for p in ids[i:i + OFFLINE_CHUNK]], self.cfg.estimate_samples)
            self.record(samples, step)
            spent += len(samples)
        self.totals["rollouts"] += spent
        return {"mining/offline_rollouts": float(spent), **self.band_metrics()}

    # --- drawing -------------------------------------------------------------------------------

    def domain_shares(self, skip_exhausted: bool = True) -> dict[str, float]:
        """Each domain's share of a draw (module docstring). Adaptive mixing leaves out a domain with
        less than one expected useful group in its learnable and unseen prompts while another domain
        has more (`skip_exhausted`): its groups would come back uniform and teach nothing, and
        re-mining still re-estimates its parked prompts as the policy moves."""
        domains = sorted(self.by_domain)
        if self.cfg.domain_mixing == "fixed":
            raw = {d: self.fixed_weights.get(d, 1.0) for d in domains}
            total = sum(raw.values())
            return {d: (w / total if total > 0 else 1.0 / len(domains)) for d, w in raw.items()}
        if skip_exhausted:
            supply = self.supply()
            live = [d for d in domains if supply[d] >= 1.0] or domains
        else:
            live = domains
        score = {}
        for d in live:
            entries = [self.ledger.entries[p] for p in self.by_domain[d]]
            open_share = sum(e.band in ("learnable", "unseen") for e in entries) / len(entries)
            a, b = self.ledger.posteriors([e for e in entries if e.attempts or e.evidence], None)
            rates = (a / (a + b)).tolist()
            score[d] = open_share * (1.0 - (sum(rates) / len(rates) if rates else 0.5))
        floor = self.cfg.domain_floor if self.cfg.domain_floor * len(live) < 1 else 1.0 / len(live)
        total = sum(score.values())
        return {d: floor + (1 - floor * len(live)) * (score[d] / total if total > 0 else 1.0 / len(live))
                if d in score else 0.0 for d in domains}

    def _candidates(self, pids: list[str]) -> Candidates:
        """The prompts of `pids` that may be drawn (weight > 0), with what a draw needs of each,
        computed once (`Candidates`)."""
        entries = [self.ledger.entries[p] for p in pids]
        a, b = self.ledger.posteriors(entries, self.version)
        factor = np.asarray([self.base_weight[p] * (self.cfg.parked_draw_weight if e.band in PARKED else 1.0)
                             for p, e in zip(pids, entries)], dtype=float)
        weight = useful_probability(a, b, self.samples_per_prompt) * factor
        keep = weight > 0
        return Candidates([p for p, k in zip(pids, keep.tolist()) if k], a[keep], b[keep], factor[keep], weight[keep])

    def _pick(self, c: Candidates, k: int) -> list[str]:
        """k of the candidates `c`, by `mining.draw`: Thompson sampling (`thompson_pick`) or in
        proportion to their weight."""
        if k <= 0:
            return []
        if self.cfg.draw == "weighted":
            return weighted_sample(self.rng, zip(c.pids, c.weight.tolist()), k)
        picks = thompson_pick(c.a, c.b, c.factor, self.samples_per_prompt, k, self.rng.getrandbits(64))
        return [c.pids[i] for i in picks]

    def record(self, samples: list[Sample], step: int) -> list[tuple[str, str, str]]:
        """Scored samples into the ledger; the policy version they reached becomes the current one."""
        self.version = max([self.version, *(s.policy_version for s in samples)])
        return self.ledger.record_samples(samples, step)

    def supply(self) -> Counter:
        """{domain: expected useful groups in its learnable and unseen bands}: the sum of their
        prompts' chance of a group with reward variance at the current policy version."""
        out: Counter = Counter({d: 0.0 for d in self.by_domain})
        entries = [e for e in self.ledger.entries.values() if e.band in ("learnable", "unseen")]
        useful = useful_probability(*self.ledger.posteriors(entries, self.version), self.samples_per_prompt)
        for e, u in zip(entries, useful.tolist()):
            out[e.domain] += u
        return out

    def remine_rows(self) -> list[str]:
        """This step's re-estimate: the most overdue parked prompts not in flight (see `remine_count`;
        the supply is the one `refill` measured when the step was planned)."""
        n = remine_count(self.last_supply, self.cfg.learnable_reserve * self.prompts_per_step,
                         self.prompts_per_step * self.samples_per_prompt, self.cfg)
        if n <= 0:
            return []
        return overdue(self.ledger, [p for p in self.rows if p not in self.in_flight], self.version, self.cfg)[:n]

    def draw(self, n: int, exclude: set[str]) -> list[dict[str, Any]]:
        """Up to n prompts drawn by `_pick`, split by the domain shares, counting the prompts in flight
        toward their domains. When no prompt has weight, the prompts seen longest ago (their evidence
        is stalest). Prompts in flight are never drawn twice."""
        exclude = exclude | self.in_flight
        candidates = {d: self._candidates([p for p in ids if p not in exclude]) for d, ids in self.by_domain.items()}
        if not any(c.pids for c in candidates.values()):
            stale = sorted((p for p in self.rows if p not in exclude), key=lambda p: self.ledger.entries[p].last_step)
            return [self.rows[p] for p in stale[:n]]
        quotas = self._quotas(n, {d: len(c.pids) for d, c in candidates.items()})
        picked = [p for d in sorted(quotas) for p in self._pick(candidates[d], quotas[d])]
        return [self.rows[p] for p in picked]

    def _quotas(self, n: int, caps: dict[str, int]) -> dict[str, int]:
        """n slots split by the domain shares; with prompts in flight, each domain's slots are its part
        of the split of (in flight + n) less what it already has in flight, so a stream of draws keeps
        the shares. A domain past its part gets slots only when the others cannot take them."""
        shares = self.domain_shares()
        flying = Counter(self.rows[p]["domain"] for p in self.in_flight)
        if not flying:
            return apportion(n, shares, caps)
        whole = apportion(n + sum(flying.values()), shares, {d: caps.get(d, 0) + flying[d] for d in shares})
        deficit = {d: max(0, whole[d] - flying[d]) + 1e-6 * shares[d] for d in shares}
        return apportion(n, deficit, caps)

    def plan_step(self, step: int) -> "StepFill":
        """The draws of RL step `step`, one at a time: the driver generates and scores each (see `StepFill`)."""
        fill = StepFill(self, step)
        fill.metrics.update(self.refill())
        return fill

    def next_batch(self, step: int, generate_and_score: GenerateAndScore) -> StepBatch:
        """Draw, generate, score and filter until prompts_per_step useful groups (or the budget)."""
        fill = self.plan_step(step)
        while (draw := fill.next_draw()) is not None:
            fill.add(draw, generate_and_score(draw.rows, draw.n))
        return fill.finish()

    def band_metrics(self) -> dict[str, float]:
        return {f"mining/band/{b}/{d}": float(n) for (b, d), n in sorted(self.ledger.band_counts().items())
                if b in BANDS}

    # --- state ---------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {"rng": rng_state(self.rng), "sampler": self.sampler.state(), "keep_rate": self.keep_rate,
                "totals": dict(self.totals), "version": self.version, "frontier": self.frontier.state(),
                "warned": sorted(self.warned), "starved": self.starved,
                "domain_keep": dict(self.domain_keep), "last_supply": self.last_supply}

    def load_state(self, state: dict[str, Any]) -> None:
        set_rng_state(self.rng, state["rng"])
        self.sampler.load_state(state["sampler"])
        self.keep_rate = state["keep_rate"]
        self.totals = Counter(state["totals"])
        # Absent in ledgers written before the posterior:
        self.version = state.get("version", 0)
        self.warned, self.starved = set(state.get("warned", ())), state.get("starved", False)
        self.domain_keep, self.last_supply = dict(state.get("domain_keep", {})), state.get("last_supply", 0.0)
        if "frontier" in state:
            self.frontier.load_state(state["frontier"])
            self._add_rows(self.frontier.generated)

    def save(self, path: str | Path) -> Path:
        """Ledger and sampler state into `path` (a directory gets `ledger.parquet`)."""
        return self.ledger.save(path, self.state())

    def load(self, path: str | Path) -> None:
        """Restore what `save` wrote; pool prompts the saved ledger lacks start unseen."""
        ledger, state = Ledger.load(path)
        if state is None:
            raise ValueError(f"{str(path)!r} holds a ledger without sampler state")
        for pid, entry in self.ledger.entries.items():
            ledger.entries.setdefault(pid, entry)
        for key, value in self.ledger.config().items():  # this run's mining config, not the saved one
            setattr(ledger, key, value)
        self.ledger = ledger
        self.load_state(state)


class StepFill:
    """One RL step's draws: draw -> (the caller generates and scores) -> filter, until the batch is full.

        fill = miner.plan_step(step)
        while (draw := fill.next_draw()) is not None:
            fill.add(draw, generate_and_score(draw.rows, draw.n))
        batch = fill.finish()

    When parked prompts are overdue, the first draw re-estimates them (`Draw.remine`; its groups
    with reward variance train too when it samples samples_per_prompt). Then each draw asks for the
    prompts still missing, scaled up by the recent keep rate (`draw_size`), by usefulness (mining on) or
    the next shuffled prompts (mining off, one draw); `add` records every group in the ledger and
    keeps the groups with reward variance. The draws stop at
    `prompts_per_step` useful groups or at the draw budget, and `finish` returns what there is.

    Asynchronous training asks for draws while earlier ones are still being generated and hands
    back their groups in parts, in any order: the prompts in flight count toward the step (scaled
    by the keep rate), and the step is `settled` once nothing is in flight and no draw is due.
    """

    def __init__(self, miner: Miner, step: int) -> None:
        self.miner, self.step = miner, step
        cfg = miner.cfg
        self.target = miner.prompts_per_step
        self.budget = math.floor(cfg.overdraw_budget * self.target) if cfg.enabled else self.target
        self.metrics: dict[str, float] = {}
        self.generated: list[Sample] = []
        self.train: list[Sample] = []
        self.reasons: Counter = Counter()
        self.drawn: set[str] = set()
        self.remined: set[str] = set()
        self.useful = self.rounds = 0
        self.pending = 0  # rows of training draws not scored yet
        self.remine_pending = 0  # rows of the re-estimate not scored yet
        self.remine_due = cfg.enabled and bool(cfg.remine_after_versions)  # planned at the first draw
        self.done = False

    def next_draw(self) -> Draw | None:
        """The next prompts to generate for, or None when the step's batch is settled."""
        miner, cfg = self.miner, self.miner.cfg
        if self.remine_due:
            self.remine_due = False
            if draw := self._remine():
                return draw
        if self._exhausted():
            return None
        need = self.target - self.useful - math.ceil(self.pending * max(miner.keep_rate, 0.25))
        if need <= 0:  # what is in flight should fill the step
            return None
        if cfg.enabled:
            size = draw_size(need, max(miner.keep_rate, 0.25), cfg.draw_confidence)
            rows = miner.draw(min(size, self.budget - len(self.drawn)),
                              self.drawn | self.remined)
        else:
            rows = miner.sampler.next(need)
        if not rows:
            self.done = self.pending == 0
            return None
        self.drawn.update(r["id"] for r in rows)
        miner.in_flight.update(r["id"] for r in rows)
        self.pending += len(rows)
        return Draw(rows, miner.samples_per_prompt)

    def _remine(self) -> Draw | None:
        """The re-estimate of overdue parked prompts; its rollouts come out of the step's draw budget
        (in groups of samples_per_prompt), never below prompts_per_step."""
        miner, cfg = self.miner, self.miner.cfg
        chosen = miner.remine_rows()
        self.metrics.update({"mining/remined_prompts": float(len(chosen)), "mining/remine_moves": 0.0,
                             "mining/remine_rollouts": 0.0, "mining/remine_useful_groups": 0.0})
        if not chosen:
            return None
        cost = math.ceil(len(chosen) * cfg.estimate_samples / miner.samples_per_prompt)
        self.budget = max(self.target, self.budget - cost)
        miner.in_flight.update(chosen)
        self.remined = set(chosen)  # not drawn again this step: one group per prompt in the batch
        self.remine_pending = len(chosen)
        return Draw([miner.rows[p] for p in chosen], cfg.estimate_samples, remine=True)

    def _exhausted(self) -> bool:
        return self.done or self.useful >= self.target or len(self.drawn) >= self.budget

    def settled(self) -> bool:
        """Nothing in flight and no draw due (call `next_draw` until it returns None first): `finish` may be called."""
        return not self.remine_due and self.pending == 0 and self.remine_pending == 0 and self._exhausted()

    def add(self, draw: Draw, samples: list[Sample]) -> None:
        """Record scored samples of `draw` (all its rows, or a part): the ledger, then (training
        draws) the groups worth training on."""
        miner = self.miner
        miner.in_flight.difference_update(s.prompt_id for s in samples)
        groups = len({s.prompt_id for s in samples})
        draw.scored += groups
        if draw.remine:
            self.remine_pending -= groups
            miner.totals["rollouts"] += len(samples)
            self.metrics["mining/remine_rollouts"] += len(samples)
            for _, old, new in miner.record(samples, self.step):
                if old != new:
                    self.metrics["mining/remine_moves"] += 1
                    key = f"mining/moves/{old}_to_{new}"
                    self.metrics[key] = self.metrics.get(key, 0.0) + 1
            if draw.n == miner.samples_per_prompt:  # a group like any other: with reward variance it trains
                kept, _ = filter_groups(samples)
                found = _useful(samples)
                self.useful += found
                self.metrics["mining/remine_useful_groups"] += found
                self.train += kept
            return
        self.pending -= groups
        complete = draw.scored >= len(draw.rows)
        self.rounds += complete
        self.generated += samples
        miner.record(samples, self.step)
        kept, stats = filter_groups(samples)
        self.reasons.update({k: v for k, v in stats.items() if k.startswith("filter/groups/")})
        found = _useful(samples)
        draw.found += found
        self.useful += found
        self.train += kept if miner.drop_zero_variance else samples
        if not miner.cfg.enabled:
            self.done = self.done or complete
            return
        if complete:
            miner.keep_rate = 0.7 * miner.keep_rate + 0.3 * draw.found / len(draw.rows)

    def __getstate__(self) -> dict[str, Any]:  # checkpointed without its miner (`attach` puts it back)
        return {k: v for k, v in self.__dict__.items() if k != "miner"}

    def attach(self, miner: Miner) -> "StepFill":
        """This fill (restored from a checkpoint) drawing on `miner` again."""
        self.miner = miner
        return self

    def _update_domain_keep(self) -> None:
        """Each drawn domain's running share of groups with reward variance (a refill trigger)."""
        groups: dict[str, set] = {}
        for s in self.generated:
            groups.setdefault(s.prompt_id, set()).add(s.reward)
        drawn, useful = Counter(), Counter()
        for pid, rewards in groups.items():
            domain = self.miner.rows[pid]["domain"]
            drawn[domain] += 1
            useful[domain] += len(rewards) > 1
        for d, n in drawn.items():
            self.miner.domain_keep[d] = 0.7 * self.miner.domain_keep.get(d, 1.0) + 0.3 * useful[d] / n

    def finish(self) -> StepBatch:
        """The step's batch and its mining metrics; the run totals updated."""
        miner, cfg, useful = self.miner, self.miner.cfg, self.useful
        groups = int(sum(self.reasons.values()))  # every group drawn for training this step
        train_groups = len({s.prompt_id for s in self.train})
        miner.totals["rollouts"] += len(self.generated)
        miner.totals["useful_groups"] += useful
        short = cfg.enabled and useful < self.target
        miner.totals["short_batches"] += short
        miner.starved = miner.starved or short
        self._update_domain_keep()
        # This step's rollouts: its groups and its re-estimates (other steps' fills may be open too).
        spent = len(self.generated) + int(self.metrics.get("mining/remine_rollouts", 0))
        metrics = self.metrics
        metrics.update({
            **self.reasons,
            "filter/zero_variance_fraction": 1.0 - useful / max(1, groups),
            "mining/zero_variance_fraction_before": 1.0 - useful / max(1, groups),
            "mining/zero_variance_fraction_after": 1.0 - useful / max(1, train_groups) if train_groups else 0.0,
            "mining/prompts_drawn": float(len(self.drawn)),
            "mining/draw_rounds": float(self.rounds),
            "mining/rollouts": float(spent),
            "mining/useful_groups": float(useful),
            "mining/short_batch": float(short),
            "mining/keep_rate": miner.keep_rate,
            "mining/total_rollouts_per_useful_group": miner.totals["rollouts"] / max(1, miner.totals["useful_groups"]),
            **miner.band_metrics(),
        })
        if useful:
            metrics["mining/rollouts_per_useful_group"] = spent / useful
        if cfg.enabled:
            metrics.update({f"mining/quota/{d}": s for d, s in miner.domain_shares().items()})
        return StepBatch(self.train, self.generated, metrics)
