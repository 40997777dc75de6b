"""Routed experts: record them in vLLM while it generates, replay them in the trainer's forward.

A MoE router picks the top-k experts of every token in every layer. The rollout engine and the
trainer compute the router logits with different kernels, so near ties can flip an expert choice:
the trainer then scores a token with experts that never produced it, and the importance ratio and
the log-prob gap jump (most in bf16). Routing replay removes that source of mismatch: the rollout
records the experts each token was routed to, and the trainer's forward uses exactly those experts
(recomputing their gate weights from its own router logits with the family's own gate formula, so
the router still gets gradients).

Families differ in where the router sits, how it scores and how it turns scores into gate weights;
one `RouterAdapter` per family (`ADAPTERS`, keyed by the checkpoint's `model_type`) says so. A
checkpoint without an adapter is refused by `check_supported`, naming its family.

Layout of a recorded routing: an int16 array `[positions, moe_layers, top_k]` for the prompt and
the completion tokens the engine ran through the model (all but the last completion token, which is
sampled but never fed back); -1 where nothing was recorded. Token positions are absolute (0 is the
first prompt token), matching the trainer's right-padded rows. Layer j is the j-th decoder layer
that has a router (dense layers, e.g. DeepSeek-V3's first ones, have none), on both sides.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

# ---- family adapters -------------------------------------------------------------------------------


def softmax_gates(module: torch.nn.Module, logits: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """Qwen2/3-MoE, OLMoE: w_j = softmax(z)_{e_j}, renormalised w_j / sum_j w_j when `norm_topk_prob`.

    Shapes: logits [N, E], experts [N, k] -> [N, k] float32.
    """
    weights = torch.softmax(logits, dim=-1, dtype=torch.float).gather(-1, experts)  # [N, k]
    return weights / weights.sum(dim=-1, keepdim=True) if module.norm_topk_prob else weights


def renormalised_softmax_gates(module: torch.nn.Module, logits: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """Mixtral: w_j = softmax(z)_{e_j} / sum_j softmax(z)_{e_j} (always renormalised). [N, k] float32"""
    weights = torch.softmax(logits.float(), dim=-1).gather(-1, experts)  # [N, k]
    return weights / weights.sum(dim=-1, keepdim=True)


def topk_softmax_gates(module: torch.nn.Module, logits: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """gpt-oss, Granite-MoE: a softmax over the k chosen logits, w_j = exp(z_{e_j}) / sum_j' exp(z_{e_j'}).

    Shapes: logits [N, E], experts [N, k] -> [N, k] in the logits' dtype.
    """
    return torch.softmax(logits.gather(-1, experts), dim=-1, dtype=logits.dtype)


def sigmoid_gates(module: torch.nn.Module, logits: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """DeepSeek-V3 / Kimi-K2 / Pangu: w_j = sigmoid(z_{e_j}), over (sum_j w_j + 1e-20) when
    `norm_topk_prob`, times `routed_scaling_factor`. The correction bias only chooses the experts
    (with the group-limited top-k); it never enters a weight. [N, k] float32"""
    weights = logits.float().sigmoid().gather(-1, experts)  # [N, k]
    if module.norm_topk_prob:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    return weights * module.routed_scaling_factor


def dense_sigmoid_scores(module: torch.nn.Module, logits: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """Llama-4: a dense [N, E] score, sigmoid(z_e) on the chosen experts and 0 elsewhere (it scales
    the expert's input, not its output)."""
    chosen = torch.full_like(logits, float("-inf")).scatter(1, experts, logits.gather(1, experts))  # [N, E]
    return torch.sigmoid(chosen.float()).to(logits.dtype)


# A router's return value, per family: (unpack -> logits, own experts, weights slot; repack with new
# weights and experts). Granite returns its three tensors in the other order; Llama-4 returns a dense
# score and the logits, its experts being the top-k of the logits.
_LAYOUTS: dict[str, tuple[Callable, Callable]] = {
    "logits_weights_experts": (
        lambda out, module: (out[0], out[2], out[1]),
        lambda out, weights, experts: (out[0], weights, experts),
    ),
    "experts_weights_logits": (
        lambda out, module: (out[2], out[0], out[1]),
        lambda out, weights, experts: (experts, weights, out[2]),
    ),
    "scores_logits": (
        lambda out, module: (out[1], torch.topk(out[1], module.top_k, dim=1).indices, out[0]),
        lambda out, weights, experts: (weights, out[1]),
    ),
}

# The routing distribution the balance losses and the router entropy use, as logits: softmax of
# the returned tensor is the family's probability over experts. Sigmoid routers use the normalised
# scores s_e / sum_e' s_e' (DeepSeek-V3's balance loss), i.e. softmax(log sigmoid(z)).
_SCORING: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "softmax": lambda logits: logits,
    "sigmoid": lambda logits: F.logsigmoid(logits.float()),
}


@dataclass(frozen=True)
class RouterAdapter:
    """How one MoE family routes (transformers 5 module layout)."""

    family: str  # the checkpoint's config.model_type
    router: str  # the router module below `layers.N.`
    scoring: str  # key of _SCORING
    gates: Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]  # the family's gate formula
    layout: str = "logits_weights_experts"  # key of _LAYOUTS
    notes: str = ""  # what else the family has (shared experts, bias, groups, dense layers)
    # vLLM config overrides that make the engine route as transformers does.
    engine_overrides: dict[str, Any] = field(default_factory=dict)

    def find_routers(self, model: torch.nn.Module) -> list[tuple[int, torch.nn.Module]]:
        """(decoder layer index, router module) of every MoE layer, in layer order."""
        pattern = re.compile(rf"layers\.(\d+)\.{re.escape(self.router)}$")
        found = [(int(m.group(1)), mod) for name, mod in model.named_modules() if (m := pattern.search(name))]
        return sorted(found, key=lambda item: item[0])

    def route_logits(self, logits: torch.Tensor) -> torch.Tensor:
        return _SCORING[self.scoring](logits)

    def describe(self) -> str:
        """One line for a run plan: 'deepseek_v3: router layers.N.mlp.gate, sigmoid scores (MLA, ...)'."""
        return f"{self.family}: router layers.N.{self.router}, {self.scoring} scores" + (
            f" ({self.notes})" if self.notes else "")


ADAPTERS: dict[str, RouterAdapter] = {}


def register_adapter(adapter: RouterAdapter) -> RouterAdapter:
    ADAPTERS[adapter.family] = adapter
    return adapter


for _adapter in (
    RouterAdapter("qwen3_moe", "mlp.gate", "softmax", softmax_gates),
    RouterAdapter("qwen2_moe", "mlp.gate", "softmax", softmax_gates, notes="sigmoid-gated shared expert"),
    RouterAdapter("olmoe", "mlp.gate", "softmax", softmax_gates),
    RouterAdapter("mixtral", "mlp.gate", "softmax", renormalised_softmax_gates,
                  notes="block_sparse_moe on disk"),
    RouterAdapter("gpt_oss", "mlp.router", "softmax", topk_softmax_gates, notes="router bias, expert biases"),
    RouterAdapter("granitemoe", "block_sparse_moe.router", "softmax", topk_softmax_gates,
                  layout="experts_weights_logits"),
    RouterAdapter("llama4_text", "feed_forward.router", "sigmoid", dense_sigmoid_scores, layout="scores_logits",
                  notes="top-1 sigmoid, shared expert, interleaved MoE layers"),
    RouterAdapter("deepseek_v3", "mlp.gate", "sigmoid", sigmoid_gates,
                  notes="MLA, sigmoid + correction bias, group-limited top-k, routed_scaling_factor, "
                        "shared experts, dense first layers",
                  # transformers always routes DeepSeek-V3 this way but does not save these keys;
                  # without them vLLM scores with a softmax.
                  engine_overrides={"topk_method": "noaux_tc", "scoring_func": "sigmoid"}),
):
    register_adapter(_adapter)


class UnsupportedFamilyError(ValueError):
    """A checkpoint's MoE family has no router adapter; the message names it and the way out."""


def _model_config(model_config: Any) -> Any:
    if isinstance(model_config, (str, bytes)) or hasattr(model_config, "__fspath__"):
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(str(model_config))
    return model_config


def family_adapter(model_config: Any) -> RouterAdapter | None:
    """The adapter of a transformers config (or checkpoint path), None for a family without one."""
    return ADAPTERS.get(getattr(_model_config(model_config), "model_type", None))


def check_supported(model_config: Any) -> RouterAdapter:
    """The router adapter of `model_config` (a transformers config or a checkpoint path).

    Raises UnsupportedFamilyError naming the family, its architectures and the supported families,
    and how to run it anyway (no routing replay, no balance loss).
    """
    config = _model_config(model_config)
    adapter = family_adapter(config)
    if adapter is None:
        family = getattr(config, "model_type", None)
        arch = ", ".join(getattr(config, "architectures", None) or ["?"])
        raise UnsupportedFamilyError(
            f"model family {family!r} ({arch}) has no MoE router adapter in rl.routing: routing replay, "
            f"the balance losses and the expert metrics do not know where its router sits or how it "
            f"scores. Supported families: {', '.join(sorted(ADAPTERS))}. To post-train it without them, "
            f"set train.routing_replay=false and train.aux_loss_coef=0."
        )
    return adapter


def engine_overrides(model_path: str) -> dict[str, Any]:
    """vLLM `hf_overrides` that make the engine route `model_path`'s family as transformers does."""
    adapter = family_adapter(model_path)
    return dict(adapter.engine_overrides) if adapter else {}


# ---- rollout side: vLLM ----------------------------------------------------------------------------


class VllmRoutingRecorder:
    """Records the top-k experts of every token vLLM runs, per request and position.

    Hooks the routers' capture point (`BaseRouter.set_capture_fn`, called with the logical top-k
    ids of each forward) and the model runner's `_prepare_inputs`/`_model_forward`, which tell
    which request and position each row of the flattened batch belongs to. Works with the engine
    in-process and eager (no CUDA graphs / torch.compile around the routers).
    """

    def __init__(self, runner: Any) -> None:
        self.runner = runner
        self.enabled = False
        routers = []
        for module in runner.get_model().modules():
            router = getattr(module, "router", None)
            if router is not None and hasattr(router, "set_capture_fn") and hasattr(module, "layer_id"):
                routers.append((int(module.layer_id), router))
        if not routers:
            raise RuntimeError("no MoE routers with a capture point found in the vLLM model")
        # Recorded layer j is the j-th MoE layer, as in the trainer (dense layers have no router).
        routers.sort(key=lambda item: item[0])
        self.num_layers = len(routers)
        self.top_k = None
        for rank, (_, router) in enumerate(routers):
            router.set_capture_fn(lambda ids, rank=rank: self._capture(rank, ids))
        self._step: tuple[list[str], np.ndarray] | None = None  # req ids and token counts of this forward
        self._buffer: np.ndarray | None = None  # [tokens, layers, k] for the forward in flight
        self._records: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        prepare, forward = runner._prepare_inputs, runner._model_forward

        def prepare_inputs(scheduler_output, num_scheduled_tokens, *args, **kwargs):
            if self.enabled:
                num_reqs = len(num_scheduled_tokens)
                self._step = (list(runner.input_batch.req_ids[:num_reqs]), np.asarray(num_scheduled_tokens).copy())
            return prepare(scheduler_output, num_scheduled_tokens, *args, **kwargs)

        def model_forward(*args, **kwargs):
            if not self.enabled or self._step is None:
                return forward(*args, **kwargs)
            positions = kwargs.get("positions")
            self._buffer = None
            try:
                return forward(*args, **kwargs)
            finally:
                self._commit(positions)

        runner._prepare_inputs = prepare_inputs
        runner._model_forward = model_forward

    def _capture(self, layer: int, topk_ids: torch.Tensor) -> None:
        if not self.enabled or self._step is None:
            return
        n_tokens = int(self._step[1].sum())
        if self._buffer is None:
            self.top_k = topk_ids.shape[-1]
            self._buffer = np.full((n_tokens, self.num_layers, self.top_k), -1, dtype=np.int16)
        ids = topk_ids[:n_tokens].to("cpu", torch.int16).numpy()
        self._buffer[: ids.shape[0], layer] = ids

    def _commit(self, positions: torch.Tensor | None) -> None:
        req_ids, counts = self._step
        self._step = None
        if self._buffer is None or positions is None:
            return
        pos = positions[: self._buffer.shape[0]].to("cpu").numpy().astype(np.int64)
        start = 0
        for req_id, count in zip(req_ids, counts.tolist()):
            rows = slice(start, start + count)
            self._records.setdefault(req_id, []).append((pos[rows], self._buffer[rows]))
            start += count
        self._buffer = None

    def start(self) -> None:
        self._records.clear()
        self.enabled = True

    def stop(self) -> None:
        self.enabled = False
        self._step = None

    def take(self, req_id: str, length: int) -> np.ndarray:
        """The routing of request `req_id` over positions [0, length), -1 where unrecorded."""
        out = np.full((length, self.num_layers, self.top_k or 1), -1, dtype=np.int16)
        for pos, ids in self._records.pop(req_id, []):
            keep = pos < length
            out[pos[keep]] = ids[keep]
        return out

    def discard(self, request_ids: list[str]) -> None:
        """Drop what was recorded for engine requests `request_ids` (aborted) and their parallel-sampling children."""
        gone = set(request_ids)
        for rid in list(self._records):
            if rid in gone or rid.partition("_")[2] in gone:
                del self._records[rid]

    def request_ids(self) -> list[str]:
        return list(self._records)

    def take_output(self, request_id: str, index: int, n: int, length: int) -> np.ndarray:
        """Routing of completion `index` of `LLM.generate`'s output `request_id` (with `n` per prompt).

        vLLM runs completion k of a parallel-sampled request as child request `{k}_{request_id}`,
        and the engine appends a `-<suffix>` to every request id.
        """
        prefix = f"{index}_{request_id}-" if n > 1 else f"{request_id}-"
        matches = [rid for rid in self._records if rid.startswith(prefix)]
        if len(matches) != 1:
            raise RuntimeError(
                f"routing of request {request_id!r} completion {index} not recorded "
                f"(candidates {matches}); is the engine in-process and eager?"
            )
        return self.take(matches[0], length)


# ---- trainer side: Hugging Face ----------------------------------------------------------------------


def routing_tensor(routings: list[np.ndarray | None], seq_len: int, num_layers: int, top_k: int) -> torch.Tensor:
    """Stack per-sample routings into the trainer's flattened token order. [layers, B * seq_len, k]

    Row `i * seq_len + p` is position p of sample i (right-padded rows, as in `CompletionBatch`);
    -1 where a sample has no recorded routing.
    """
    out = torch.full((len(routings), seq_len, num_layers, top_k), -1, dtype=torch.long)  # [B, S, L, k]
    for i, r in enumerate(routings):
        if r is not None and len(r):
            if r.shape[1:] != (num_layers, top_k):
                raise ValueError(
                    f"recorded routing has {r.shape[1]} MoE layers x top-{r.shape[2]}, the trainer's model "
                    f"{num_layers} x top-{top_k}: engine and trainer run different models"
                )
            n = min(len(r), seq_len)
            out[i, :n] = torch.from_numpy(r[:n].astype(np.int64))
    return out.permute(2, 0, 1, 3).reshape(num_layers, len(routings) * seq_len, top_k)


class RoutingReplay:
    """Observe, and optionally force, the expert choices of a Hugging Face MoE model's forward.

    The model's family adapter finds its routers and gives the gate formula: a forced token gets the
    given experts with the weights the family computes for them from its own router logits (so the
    gradient still reaches the router). Tokens whose forced row holds -1 keep the model's own choice.
    `logits` holds, per MoE layer, the family's routing distribution as logits (softmax of it is the
    probability over experts: the raw logits for softmax routers, log sigmoid for sigmoid routers),
    with its graph, for the balance losses and the router entropy.

        replay = RoutingReplay(model)
        with replay.apply(forced):          # forced: [layers, B * S, k] or None (observe only)
            out = model(...)
        replay.agreement(recorded, valid)   # fraction of token-layer top-k sets that matched

    A model whose family has no adapter gives an empty replay (falsy), or, with `required`, raises
    UnsupportedFamilyError.
    """

    def __init__(self, model: torch.nn.Module, required: bool = False) -> None:
        config = getattr(model, "config", None)
        self.adapter = check_supported(config) if required else family_adapter(config)
        found = self.adapter.find_routers(model) if self.adapter else []
        if required and not found:
            raise UnsupportedFamilyError(
                f"no {self.adapter.router!r} routers found under layers.N in this "
                f"{self.adapter.family!r} model: it has no MoE layers to replay or balance"
            )
        self.gates = [module for _, module in found]  # MoE layer j -> its router
        self.num_layers = len(self.gates)
        self.top_k = self.gates[0].top_k if self.gates else 0
        self.num_experts = self.gates[0].num_experts if self.gates else 0
        self.own: dict[int, torch.Tensor] = {}  # per MoE layer: the model's own top-k [N, k]
        self.used: dict[int, torch.Tensor] = {}  # per MoE layer: the experts the forward ran [N, k]
        self.logits: dict[int, torch.Tensor] = {}  # per MoE layer: routing distribution as logits [N, E]

    def __bool__(self) -> bool:
        return bool(self.gates)

    @contextlib.contextmanager
    def apply(self, forced: torch.Tensor | None):
        self.own, self.used, self.logits = {}, {}, {}
        handles = [
            gate.register_forward_hook(lambda mod, inp, out, layer=layer: self._hook(mod, out, layer, forced))
            for layer, gate in enumerate(self.gates)
        ]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()

    def _hook(self, module, output, layer: int, forced: torch.Tensor | None):
        unpack, repack = _LAYOUTS[self.adapter.layout]
        logits, idx, slot = unpack(output, module)
        self.own[layer] = self.used[layer] = idx.detach()
        self.logits[layer] = self.adapter.route_logits(logits)
        if forced is None:
            return None
        want = forced[layer]  # [N, k]
        use = (want >= 0).all(-1)  # [N]
        if not bool(use.any()):
            return None
        new_idx = torch.where(use[:, None], want, idx)  # [N, k]
        weights = self.adapter.gates(module, logits, new_idx).to(slot.dtype)
        self.used[layer] = new_idx.detach()
        return repack(output, weights, new_idx)

    def agreement(self, recorded: torch.Tensor, valid: torch.Tensor, used: bool = False) -> tuple[float, float]:
        """(matching, total) token-layer pairs: the model's own top-k set vs `recorded`.

        recorded: [layers, N, k] with -1 where unknown; valid: [N] bool (real, non-pad tokens).
        With `used`, compares the experts the forward actually ran instead (after replay).
        """
        match = total = 0.0
        for layer, own in (self.used if used else self.own).items():
            rec = recorded[layer]  # [N, k]
            known = valid & (rec >= 0).all(-1)  # [N]
            same = (own.sort(-1).values == rec.sort(-1).values).all(-1)  # [N]
            match += float((same & known).sum())
            total += float(known.sum())
        return match, total
