"""Trainer-to-vLLM weight transfer, in place, and the parity check that proves it.

vLLM turns loaded weights into a runtime format after loading: on CPU every Linear is packed into a
oneDNN (or small-GEMM) handle and its `.weight` emptied, and fused-MoE expert weights are prepacked.
Its generic reload path re-runs that post-processing in "update" mode, which on CPU skips the expert
prepack and leaves the experts wrong. So a correct sync must reproduce *exactly* what the initial
load produced:

1. while the engine loads, record every parameter object as the loader left it (loaded format,
   before post-processing), with its shape and dtype (`install_layout_recorder`);
2. on sync, put those parameter objects back (fresh storage where post-processing replaced them),
   feed the tensors, named and shaped as in the checkpoint on disk (`rl.policy.hf_state_dict`:
   per-expert weights, Mixtral's `block_sparse_moe`, MLA's low-rank projections), through the
   model's own `load_weights` (which does the fusing and sharding: qkv, MLA's q_a + kv_a, gate/up,
   per-expert -> stacked experts), then run vLLM's own post-processing again as a first load, so
   the packed handles, expert prepack and MLA's absorbed kv_b matrices are rebuilt
   (`load_hf_weights`).

Both run inside the process that owns the model (the rollout actor with an in-process engine, via
`LLM.llm_engine.apply_model`). Correctness is checked by log-prob parity, not assumed.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import Any, Iterable

import torch

_RECORD_ATTR = "_rl_loaded_layout"


@dataclass
class _LoadedParam:
    module: torch.nn.Module
    name: str
    param: torch.nn.Parameter
    shape: torch.Size
    dtype: torch.dtype


@dataclass
class _LoadedLayout:
    params: list[_LoadedParam]
    model_config: object
    target_device: torch.device


def _record_and_process(original, model, model_config, target_device):
    params = [
        _LoadedParam(module, name, param, param.shape, param.dtype)
        for module in model.modules()
        for name, param in module.named_parameters(recurse=False)
    ]
    original(model, model_config, target_device)
    layout = _LoadedLayout(params, model_config, target_device)
    _release_replaced(layout)
    object.__setattr__(model, _RECORD_ATTR, layout)


def _release_replaced(layout: _LoadedLayout) -> None:
    # Post-processing swapped these out for packed versions; their loaded-format storage is no
    # longer read by vLLM, so free it until the next sync needs it again.
    for p in layout.params:
        if p.module._parameters.get(p.name) is not p.param:
            p.param.data = torch.empty(0, dtype=p.dtype, device=p.param.device)


def install_layout_recorder() -> None:
    """Patch vLLM's loader so each loaded model remembers its loaded-format parameters.

    Call before constructing the engine, in the process that will own the model. Idempotent.
    """
    from vllm.model_executor.model_loader import base_loader

    current = base_loader.process_weights_after_loading
    if getattr(current, "_rl_recording", False):
        return
    wrapped = functools.partial(_record_and_process, current)
    wrapped._rl_recording = True  # type: ignore[attr-defined]
    base_loader.process_weights_after_loading = wrapped


def load_hf_weights(model: torch.nn.Module, weights: Iterable[tuple[str, torch.Tensor]]) -> int:
    """Write Hugging Face-named `weights` into a loaded vLLM `model`, exactly as a fresh load would.

    Returns the number of tensors written. Must run in the process that owns the model.
    """
    from vllm.model_executor.model_loader.utils import process_weights_after_loading

    layout: _LoadedLayout | None = getattr(model, _RECORD_ATTR, None)
    if layout is None:
        raise RuntimeError(
            "this vLLM model was loaded without rl.weight_sync.install_layout_recorder(); "
            "call it before creating the engine"
        )
    for p in layout.params:
        if p.param.shape != p.shape or p.param.dtype != p.dtype:
            p.param.data = torch.empty(p.shape, dtype=p.dtype, device=p.param.device)
        p.module._parameters[p.name] = p.param
    weights = list(weights)
    with torch.no_grad():
        model.load_weights(iter(weights))
    # Fused-MoE methods treat a second post-processing as an "update" and skip the CPU expert
    # prepack; clearing the kernel makes it a first load again, identical to engine start-up.
    for module in model.modules():
        method = getattr(module, "quant_method", None)
        if method is not None and hasattr(method, "moe_kernel"):
            method.moe_kernel = None
    process_weights_after_loading(model, layout.model_config, layout.target_device)
    _release_replaced(layout)
    return len(weights)



def to_shared(weights: dict[str, torch.Tensor]) -> dict[str, tuple[str, Any]]:
    """`weights` for Ray's object store as (dtype, numpy array) per name, views of the same memory.

    Every reader on a node gets numpy arrays straight from the store's shared memory, without a
    copy, where torch tensors are unpickled (copied) by each reader: with several engines per
    node a sync's fetch then costs each one about a millisecond instead of a copy of the model.
    bfloat16, which numpy lacks, travels as its int16 bit pattern; any other dtype numpy lacks, as
    the tensor itself."""
    shared: dict[str, tuple[str, Any]] = {}
    for name, t in weights.items():
        dtype = str(t.dtype).removeprefix("torch.")
        try:
            shared[name] = (dtype, (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy())
        except TypeError:
            shared[name] = (dtype, t)
    return shared


def is_shared(weights: dict[str, Any]) -> bool:
    return bool(weights) and isinstance(next(iter(weights.values())), tuple)


def from_shared(shared: dict[str, tuple[str, Any]]) -> dict[str, torch.Tensor]:
    """The tensors of `to_shared`'s form, viewing the same (read-only) memory: they are only read,
    to be copied into the engine's parameters."""
    out: dict[str, torch.Tensor] = {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        for name, (dtype, array) in shared.items():
            if isinstance(array, torch.Tensor):
                out[name] = array
                continue
            t = torch.from_numpy(array)
            out[name] = t.view(torch.bfloat16) if dtype == "bfloat16" else t
    return out
