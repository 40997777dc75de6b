"""Routed experts: record them in vLLM while it generates, replay them in the trainer's forward.

A MoE router picks the top-k experts of every token in every layer. The rollout engine and the
trainer compute the router logits with different kernels, so near ties can flip an expert choice:
the trainer then scores a token with experts that never produced it, and the importance ratio and
the log-prob gap jump (most in bf16). Routing replay removes that source of mismatch: the rollout
records the experts each token was routed to, and the trainer's forward uses exactly those experts
(recomputing their gate weights from its own router logits, so the router still gets gradients).

Layout of a recorded routing: an int16 array `[positions, layers, top_k]` for the prompt and the
completion tokens the engine ran through the model (all but the last completion token, which is
sampled but never fed back); -1 where nothing was recorded. Token positions are absolute (0 is the
first prompt token), matching the trainer's right-padded rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

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
        self.num_layers = max(layer for layer, _ in routers) + 1
        self.top_k = None
        for layer, router in routers:
            router.set_capture_fn(lambda ids, layer=layer: self._capture(layer, ids))
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
            n = min(len(r), seq_len)
            out[i, :n] = torch.from_numpy(r[:n].astype(np.int64))
    return out.permute(2, 0, 1, 3).reshape(num_layers, len(routings) * seq_len, top_k)


class RoutingReplay:
    """Observe, and optionally force, the expert choices of a Hugging Face MoE model's forward.

    Works with routers that return `(router_logits, top_k_weights, top_k_indices)` and score with a
    softmax over the experts (Qwen3-MoE, Qwen2-MoE). A forced token gets the given experts, with
    gate weights `softmax(logits)[experts]` (renormalised over the k when `norm_topk_prob`), so the
    gradient still reaches the router through its logits. Tokens whose forced row holds -1 keep the
    model's own choice.

        replay = RoutingReplay(model)
        with replay.apply(forced):          # forced: [layers, B * S, k] or None (observe only)
            out = model(...)
        replay.agreement(recorded, valid)   # fraction of token-layer top-k sets that matched
    """

    def __init__(self, model: torch.nn.Module) -> None:
        import re

        self.gates: list[tuple[int, torch.nn.Module]] = []
        for name, module in model.named_modules():
            m = re.search(r"layers\.(\d+)\.mlp\.gate$", name)
            if m and hasattr(module, "top_k") and hasattr(module, "norm_topk_prob"):
                self.gates.append((int(m.group(1)), module))
        self.num_layers = max((layer for layer, _ in self.gates), default=-1) + 1
        self.top_k = self.gates[0][1].top_k if self.gates else 0
        self.num_experts = self.gates[0][1].num_experts if self.gates else 0
        self.own: dict[int, torch.Tensor] = {}  # per layer: the model's own top-k [N, k]
        self.used: dict[int, torch.Tensor] = {}  # per layer: the experts the forward ran [N, k]
        self.logits: dict[int, torch.Tensor] = {}  # per layer: router logits, with their graph [N, E]

    def __bool__(self) -> bool:
        return bool(self.gates)

    def apply(self, forced: torch.Tensor | None):
        import contextlib

        @contextlib.contextmanager
        def ctx():
            self.own, self.used, self.logits = {}, {}, {}
            handles = [
                gate.register_forward_hook(lambda mod, inp, out, layer=layer: self._hook(mod, out, layer, forced))
                for layer, gate in self.gates
            ]
            try:
                yield self
            finally:
                for h in handles:
                    h.remove()

        return ctx()

    def _hook(self, module, output, layer: int, forced: torch.Tensor | None):
        logits, scores, idx = output
        self.own[layer] = self.used[layer] = idx.detach()
        self.logits[layer] = logits
        if forced is None:
            return None
        want = forced[layer]  # [N, k]
        use = (want >= 0).all(-1)  # [N]
        if not bool(use.any()):
            return None
        new_idx = torch.where(use[:, None], want, idx)  # [N, k]
        weights = torch.softmax(logits, dim=-1, dtype=torch.float).gather(-1, new_idx)  # [N, k]
        if module.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        self.used[layer] = new_idx.detach()
        return logits, weights.to(scores.dtype), new_idx

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
