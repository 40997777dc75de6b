"""The rollout actor: owns a vLLM engine, turns prompt rows into Samples with log-probs.

The engine runs in-process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`), so weight updates are plain
tensor writes into the model that serves generation (see `rl.weight_sync`).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import ray

from rl.config import RolloutConfig
from rl.types import Sample

# Threaded actor groups (`build_actors`; a call picks one with `.options(concurrency_group=...)`):
# `submit`/`collect` ("stream") and `load_weights` ("weights") run beside a generation in progress,
# and the engine lock makes a weight load land between two engine steps.
CONCURRENCY_GROUPS = {"stream": 2, "weights": 1}


def _configure_cpu_engine(threads: int, kv_cache_gib: float) -> None:
    # vLLM reads these lazily, so setting them before the engine is built is enough.
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(int(kv_cache_gib))  # a whole number (RolloutConfig.validate)
    # Thread placement is the actor's budget, not vLLM's auto-binding to the last cores.
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "nobind"
    os.environ["OMP_NUM_THREADS"] = str(threads)
    # Per-request INFO lines would bury the step progress in the driver's output (vLLM's own
    # VLLM_LOGGING_LEVEL still wins when set, to debug the engine).
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    import torch

    torch.set_num_threads(threads)


def engine_nice(cfg: RolloutConfig) -> int:
    """What the engines add to their niceness: `cfg.nice`, or when unset 4 while generation overlaps
    training (the trainer then keeps its core, a 4-step lower weight giving the engines about 40% of
    the trainer's CPU share where they meet) and 0 in the synchronous loop."""
    if cfg.nice is not None:
        return cfg.nice
    return 4 if cfg.max_staleness > 0 else 0


def sampling_params(n: int, temperature: float, top_p: float, max_new_tokens: int) -> Any:
    """vLLM sampling settings of a rollout: `n` completions per prompt with the sampled tokens'
    log-probs. vLLM's own detokenizer is off (`detokenize=False`): completions are decoded once when
    they finish (`RolloutWorker._group`) instead of token by token, and the log-prob entries skip
    their token strings (on the 2-core default: 13% less time per token in `LLM.generate`, 3% less
    engine CPU per token inside an asynchronous run). No stop strings are used, which would need it."""
    from vllm import SamplingParams

    return SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens, logprobs=0,
                          detokenize=False)


def _lower_priority(niceness: int, every_thread: bool = False) -> None:
    """Run this thread (or every thread of the process) at `niceness`, where it is higher than now.

    Linux keeps a niceness per thread and a new thread inherits its creator's, so the threads that
    step the engine are set when they start; lowering a niceness needs privileges and is not tried.
    """
    if sys.platform != "linux":
        return
    tids = [int(t) for t in os.listdir("/proc/self/task")] if every_thread else [threading.get_native_id()]
    for tid in tids:
        try:
            if os.getpriority(os.PRIO_PROCESS, tid) < niceness:
                os.setpriority(os.PRIO_PROCESS, tid, niceness)
        except OSError:  # the thread ended meanwhile
            pass


def _native_rotary_for_strided_inputs() -> None:
    """Route vLLM's CPU rotary embedding through its PyTorch implementation for strided inputs.

    MLA (DeepSeek-V3 / Kimi-K2 / Pangu) rotates `q[..., nope:]` and a slice of the latent projection
    in place: views that are not contiguous, which the CPU rotary kernel mis-rotates (log-prob error
    ~1e-3 to 0.07 against transformers). Contiguous inputs keep the kernel. Idempotent.
    """
    from vllm.model_executor.layers.rotary_embedding.base import RotaryEmbedding

    kernel = RotaryEmbedding.forward_cpu
    if getattr(kernel, "_rl_strided_native", False):
        return

    def forward_cpu(self, positions, query, key=None):
        if not query.is_contiguous() or (key is not None and not key.is_contiguous()):
            return self.forward_native(positions, query, key)
        return kernel(self, positions, query, key)

    forward_cpu._rl_strided_native = True  # type: ignore[attr-defined]
    RotaryEmbedding.forward_cpu = forward_cpu


@dataclass
class _Job:
    """One `submit` call: the rows to generate for and with what."""

    tag: int
    rows: list[dict[str, Any]]
    prompt_ids: list[list[int]]
    params: Any  # vllm.SamplingParams
    record_routing: bool


@dataclass
class _Stream:
    """An engine's streaming state: requests in flight, and finished groups on their way out.

    `live` is touched by the generation thread only; the rest under `cond`.
    """

    cond: threading.Condition = field(default_factory=threading.Condition)
    queued: list[_Job] = field(default_factory=list)  # submitted, not in the engine yet
    live: dict[str, tuple[_Job, int, str]] = field(default_factory=dict)  # request key -> (job, row, engine id)
    ready: list[tuple[_Job, int, list[Sample]]] = field(default_factory=list)  # finished, not sent to scoring
    outbox: list[tuple[list[tuple[int, int, int]], Any]] = field(default_factory=list)
    rewards: list[Any] = field(default_factory=list)  # the reward actors
    last: list[Any] = field(default_factory=list)  # each reward actor's call of ours in flight
    thread: threading.Thread | None = None
    error: BaseException | None = None
    restart_due: bool = False
    sent: int = 0
    idle_seconds: float = 0.0  # the engine had nothing to generate
    tokens: int = 0  # completion tokens of finished requests
    restarted: int = 0  # requests started again from their prompts after a weight load


class RolloutWorker:
    """Ray actor body (wrapped with ray.remote by the driver)."""

    def __init__(
        self, model_path: str, cfg: RolloutConfig = RolloutConfig(), *, dtype: str = "float32", seed: int = 0,
        max_model_len: int = 256,
    ) -> None:
        """An engine on `model_path` set up by `cfg` (threads, KV cache, eager mode, routing capture, priority)."""
        self._niceness = min(19, os.getpriority(os.PRIO_PROCESS, 0) + engine_nice(cfg))
        _lower_priority(self._niceness, every_thread=True)
        _configure_cpu_engine(cfg.threads, cfg.kv_cache_gib)
        from rl.routing import engine_overrides
        from rl.weight_sync import install_layout_recorder

        install_layout_recorder()
        _native_rotary_for_strided_inputs()
        from vllm import LLM

        t0 = time.perf_counter()
        self.llm = LLM(
            model=model_path,
            dtype=dtype,
            seed=seed,
            enforce_eager=cfg.enforce_eager,
            max_model_len=max_model_len,
            # Prefix caching would reuse KV computed under older weights after a sync.
            enable_prefix_caching=False,
            hf_overrides=engine_overrides(model_path) or None,
        )
        self.tokenizer = self.llm.get_tokenizer()
        self.routing = None
        if cfg.record_routing:  # the routed experts of every token, for routing replay in the trainer
            from rl.routing import VllmRoutingRecorder

            runner = self.llm.llm_engine.model_executor.driver_worker.worker.model_runner
            self.routing = VllmRoutingRecorder(runner)
        self.partial = cfg.partial
        self._engine_lock = threading.Lock()  # one engine step, request admission or weight load at a time
        self._stream = _Stream()
        self.version = 0
        self._label_version()
        self.startup_seconds = time.perf_counter() - t0

    def _label_version(self) -> None:
        # vLLM labels every sampled token with the weight version set when it was sampled.
        self.llm.llm_engine.set_weight_version(str(self.version))

    def info(self) -> dict[str, Any]:
        return {"startup_seconds": self.startup_seconds, "version": self.version, "pid": os.getpid()}

    def _start(self, rows: list[dict[str, Any]], n: int, temperature: float, top_p: float,
               max_new_tokens: int, record_routing: bool) -> tuple[Any, list[list[int]], Any]:
        """Sampling params, prompt token ids and the routing recorder to use (started), for `rows`."""
        params = sampling_params(n, temperature, top_p, max_new_tokens)
        prompt_ids = [self.tokenizer(row["prompt"], add_special_tokens=False)["input_ids"] for row in rows]
        routing = self.routing if record_routing else None
        if routing is not None:
            routing.start()
        return params, prompt_ids, routing

    def _group(self, row: dict[str, Any], ids: list[int], out: Any, n: int, routing: Any) -> list[Sample]:
        """The `n` Samples of one finished vLLM request (one prompt row)."""
        samples = []
        for k, comp in enumerate(out.outputs):
            token_ids = list(comp.token_ids)
            versions = [int(span.version) for span in comp.weight_versions or []
                        for _ in range(span.start, span.end)]
            if len(versions) != len(token_ids):  # no labels reported: the engine's current version
                versions = [self.version] * len(token_ids)
            samples.append(
                Sample(
                    prompt_id=row["id"],
                    domain=row["domain"],
                    prompt=row["prompt"],
                    prompt_ids=list(ids),
                    reference=dict(row.get("reference", {})),
                    group_index=k,
                    completion=self.tokenizer.decode(token_ids, skip_special_tokens=True),
                    completion_ids=token_ids,
                    rollout_logprobs=[lp[t].logprob for lp, t in zip(comp.logprobs, token_ids)],
                    finish_reason="length" if comp.finish_reason == "length" else "stop",
                    policy_version=min(versions, default=self.version),
                    token_versions=versions,
                    routed_experts=None if routing is None else routing.take_output(
                        out.request_id, comp.index, n, len(ids) + len(token_ids) - 1
                    ),
                )
            )
        return samples

    def _run(self, rows: list[dict[str, Any]], n: int, temperature: float, top_p: float, max_new_tokens: int,
             record_routing: bool, on_step: Callable[[dict[int, list[Sample]]], None]) -> None:
        """Generate `n` completions per row, stepping the engine; after each engine step, the rows
        whose `n` completions finished in it go to `on_step({row index: samples})` (maybe empty).

        Steps the engine as `LLM.generate` does (same requests, added by `LLM.enqueue`), so the
        same samples come out for the same engine RNG state whatever the callback does.
        """
        _lower_priority(self._niceness)
        params, prompt_ids, routing = self._start(rows, n, temperature, top_p, max_new_tokens, record_routing)
        engine = self.llm.llm_engine
        added: list[str] = []
        finished: set[str] = set()
        try:
            added = self.llm.enqueue([{"prompt_token_ids": ids} for ids in prompt_ids], params, use_tqdm=False)
            # The engine's request ids are "<counter>-<random suffix>"; outputs carry the counter part.
            row_of = {rid.split("-")[0]: i for i, rid in enumerate(added)}
            while engine.has_unfinished_requests():
                done = {}
                with self._engine_lock:
                    outputs = engine.step()
                for out in outputs:
                    if out.finished:
                        finished.add(out.request_id)
                        i = row_of[out.request_id]
                        done[i] = self._group(rows[i], prompt_ids[i], out, n, routing)
                on_step(done)
        except BaseException:
            # Leave the engine empty: requests left in it would come out of the next call's steps.
            unfinished = [rid for rid in added if rid.split("-")[0] not in finished]
            if unfinished:
                engine.abort_request(unfinished, internal=True)
            raise
        finally:
            if routing is not None:
                routing.stop()

    def generate(self, rows: list[dict[str, Any]], *, n: int, temperature: float = 1.0, top_p: float = 1.0,
                 max_new_tokens: int = 16, record_routing: bool = True) -> list[Sample]:
        """`n` sampled completions for each row (`id`, `domain`, `prompt`, `reference`), row by row.

        With a routing recorder (and `record_routing`), each Sample carries its routed experts.
        """
        groups: dict[int, list[Sample]] = {}
        self._run(rows, n, temperature, top_p, max_new_tokens, record_routing, groups.update)
        return [s for i in range(len(rows)) for s in groups[i]]

    def generate_scored(self, rows: list[dict[str, Any]], reward_actors: list[Any], *, n: int,
                        temperature: float = 1.0, top_p: float = 1.0, max_new_tokens: int = 16,
                        record_routing: bool = True) -> list[tuple[list[int], Any]]:
        """`generate`, with scoring started while the engine still generates.

        After each engine step, the prompts whose `n` completions all finished wait until a reward
        actor has no call of ours in flight and then go to it in one call, so a busy scorer gets
        larger batches (its worker threads and sandbox pool stay full) and an idle one starts at
        once. Whatever is left when generation ends goes out then. Returns `(row indices, ObjectRef
        of that actor's (scored samples, stats))` per call, each call's samples in row order, `n` per
        row, like `generate`.
        """
        import ray

        calls: list[tuple[list[int], Any]] = []
        last: list[Any] = [None] * len(reward_actors)  # each actor's call in flight
        ready: dict[int, list[Sample]] = {}  # finished rows not sent yet

        def send(actor: int) -> None:
            done = sorted(ready)
            last[actor] = reward_actors[actor].score.remote([s for i in done for s in ready.pop(i)])
            calls.append((done, last[actor]))

        def on_step(done: dict[int, list[Sample]]) -> None:
            ready.update(done)
            if not ready:
                return
            idle = [a for a, ref in enumerate(last) if ref is None or ray.wait([ref], timeout=0)[0]]
            if idle:
                send(idle[0])

        self._run(rows, n, temperature, top_p, max_new_tokens, record_routing, on_step)
        if ready:
            send(len(calls) % len(reward_actors))
        return calls

    # ---- streaming (asynchronous training) -------------------------------------------------------

    def submit(self, tag: int, rows: list[dict[str, Any]], reward_actors: list[Any], *, n: int,
               temperature: float = 1.0, top_p: float = 1.0, max_new_tokens: int = 16,
               record_routing: bool = True) -> None:
        """Queue `n` completions for each row and return at once; a generation thread keeps the engine
        stepping while anything is queued or in flight, weight loads landing between its steps.

        Each finished row's group goes to a reward actor as in `generate_scored` (an idle one at once,
        else batched until one is idle); `collect` hands out those calls, tagged with `tag`.
        """
        params = sampling_params(n, temperature, top_p, max_new_tokens)
        ids = [self.tokenizer(row["prompt"], add_special_tokens=False)["input_ids"] for row in rows]
        st = self._stream
        with st.cond:
            if st.error is not None:
                raise RuntimeError("the engine's generation thread failed") from st.error
            if not st.rewards:
                st.rewards, st.last = list(reward_actors), [None] * len(reward_actors)
            st.queued.append(_Job(tag, list(rows), ids, params, record_routing and self.routing is not None))
            if st.thread is None:
                st.thread = threading.Thread(target=self._serve, name="rollout-stream", daemon=True)
                st.thread.start()
            st.cond.notify_all()

    def set_rewards(self, reward_actors: list[Any]) -> None:
        """Send finished groups to these reward actors from now on (one of them was replaced)."""
        st = self._stream
        with st.cond:
            st.rewards, st.last = list(reward_actors), [None] * len(reward_actors)

    def collect(self, timeout: float = 1.0) -> dict[str, Any]:
        """The scoring calls sent since the last collect, waiting up to `timeout` s for one: `calls` is
        [([(tag, row index, completions), ...], ObjectRef of the reward actor's (samples, stats))],
        samples in the listed order; plus the engine's counters and weight version."""
        st = self._stream
        with st.cond:
            st.cond.wait_for(lambda: st.outbox or st.error is not None, timeout=timeout)
            if st.error is not None:
                raise RuntimeError("the engine's generation thread failed") from st.error
            calls, st.outbox = st.outbox, []
            return {"calls": calls, "idle_seconds": st.idle_seconds, "tokens": st.tokens,
                    "restarted": st.restarted, "version": self.version,
                    "in_flight": len(st.live) + sum(len(j.rows) for j in st.queued)}

    def _serve(self) -> None:
        """The generation thread: admit queued rows, restart after a weight load when asked, step."""
        st, engine = self._stream, self.llm.llm_engine
        _lower_priority(self._niceness)
        try:
            while True:
                with st.cond:
                    if not st.queued and not st.live:
                        self._send_ready(force=True)
                        t0 = time.perf_counter()
                        st.cond.wait_for(lambda: st.queued)
                        st.idle_seconds += time.perf_counter() - t0
                    jobs, st.queued = st.queued, []
                with self._engine_lock:
                    for job in jobs:
                        self._admit(job, list(range(len(job.rows))))
                    if st.restart_due:
                        self._restart_live()
                    outputs = engine.step() if engine.has_unfinished_requests() else []
                finished = []
                for out in outputs:
                    if out.finished:
                        job, i, _ = st.live.pop(out.request_id)
                        group = self._group(job.rows[i], job.prompt_ids[i], out, job.params.n,
                                            self.routing if job.record_routing else None)
                        finished.append((job, i, group))
                with st.cond:
                    st.tokens += sum(len(s.completion_ids) for _, _, g in finished for s in g)
                    st.ready += finished
                    self._send_ready(force=False)
        except BaseException as exc:  # reported to the driver by the next collect or submit
            with st.cond:
                st.error = exc
                st.cond.notify_all()

    def _admit(self, job: _Job, rows: list[int]) -> None:
        """Put `job`'s `rows` into the engine (the engine lock held)."""
        st = self._stream
        if job.record_routing and not self.routing.enabled:
            self.routing.start()  # nothing of ours is in flight, so nothing recorded is dropped
        added = self.llm.enqueue([{"prompt_token_ids": job.prompt_ids[i]} for i in rows], job.params, use_tqdm=False)
        for i, rid in zip(rows, added):
            # The engine's request ids are "<counter>-<random suffix>"; outputs carry the counter part.
            st.live[rid.split("-")[0]] = (job, i, rid)

    def _restart_live(self) -> None:
        """rollout.partial=restart: requests in flight start again from their prompts under the new weights."""
        st = self._stream
        st.restart_due = False
        entries = list(st.live.values())
        if not entries:
            return
        st.live.clear()
        self.llm.llm_engine.abort_request([rid for _, _, rid in entries], internal=True)
        if self.routing is not None:
            self.routing.discard([rid for _, _, rid in entries])
        by_job: dict[int, tuple[_Job, list[int]]] = {}
        for job, i, _ in entries:
            by_job.setdefault(id(job), (job, []))[1].append(i)
        for job, rows in by_job.values():
            self._admit(job, rows)
        st.restarted += len(entries)

    def _send_ready(self, force: bool) -> None:
        """Finished groups to a reward actor with no call of ours in flight (any, when `force`); `cond` held."""
        st = self._stream
        if not st.ready:
            return
        idle = [a for a, ref in enumerate(st.last) if ref is None or ray.wait([ref], timeout=0)[0]]
        if not idle and not force:
            return
        actor = idle[0] if idle else st.sent % len(st.rewards)
        groups, st.ready = st.ready, []
        st.last[actor] = st.rewards[actor].score.remote([s for _, _, g in groups for s in g])
        st.outbox.append(([(job.tag, i, len(g)) for job, i, g in groups], st.last[actor]))
        st.sent += 1
        st.cond.notify_all()

    def rng_state(self) -> Any:
        """The sampler's random state: vLLM's CPU sampler draws its Gumbel noise from this process's
        global torch generator, so this state fixes the samples still to come."""
        import torch

        return torch.get_rng_state()

    def restore(self, rng_state: Any | None, version: int) -> None:
        """Continue as an engine that had `rng_state` (None: keep the current one) and held weights `version`."""
        import torch

        if rng_state is not None:
            torch.set_rng_state(rng_state)
        self.version = version
        self._label_version()

    def load_weights(self, weights: dict, version: int) -> float:
        """Write Hugging Face-named weights (tensors, or `rl.weight_sync.to_shared`'s form) into the
        engine in place; returns seconds spent.

        While the engine streams (`submit`), the load lands between two engine steps: requests in
        flight continue under the new weights (their tokens keep the version that sampled them) or,
        with `rollout.partial=restart`, start again from their prompts.
        """
        from rl.weight_sync import from_shared, is_shared, load_hf_weights

        t0 = time.perf_counter()
        if is_shared(weights):
            weights = from_shared(weights)
        with self._engine_lock:
            self.llm.llm_engine.apply_model(lambda model: load_hf_weights(model, weights.items()))
            self.version = version
            self._label_version()
            if self.partial == "restart":
                self._stream.restart_due = True
        return time.perf_counter() - t0

    def receive_weights(self, published: list[Any], version: int) -> dict[str, float]:
        """Fetch the weights `published[0]` refers to (`rl.broadcast`) and load them; what it took:
        bytes received, seconds fetching, seconds loading."""
        from rl.weight_sync import from_shared, is_shared

        t0 = time.perf_counter()
        weights = ray.get(published[0])
        if is_shared(weights):  # views of the object store's memory: no copy (`rl.weight_sync.to_shared`)
            weights = from_shared(weights)
        fetched = time.perf_counter() - t0
        size = float(sum(t.numel() * t.element_size() for t in weights.values()))
        return {"bytes": size, "fetch_seconds": fetched, "load_seconds": self.load_weights(weights, version)}

    def sequence_logprobs(self, sequences: list[list[int]]) -> list[list[float]]:
        """Log-prob of every token after the first in each sequence, under the engine's weights.

        Used to prove the engine computes what the trainer computes with the same weights.
        """
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=1.0)
        outputs = self.llm.generate([{"prompt_token_ids": s} for s in sequences], params, use_tqdm=False)
        return [
            [lp[t].logprob for lp, t in zip(out.prompt_logprobs[1:], seq[1:])]
            for out, seq in zip(outputs, sequences, strict=True)
        ]
