"""Borrowing a host's weights for autograd without copying them, and giving them back exactly.

Hosts load and run their models under ``torch.inference_mode()`` (ComfyUI's nodes, the webui's sampling): the
weights are then inference tensors, which autograd cannot save for backward. Autograd gets plain tensors that
share the inference tensors' storage (read only, and only for the step); the very same tensor objects go back
afterwards. Shared by every host layer (nodes/adapters for ComfyUI, dct_webui for the Automatic1111 family).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from .checkpointing import block_checkpointing, checkpoint_units

__all__ = ["backward_pass", "gradient_checkpointing", "plain_alias", "trainable_weights"]


def plain_alias(t: torch.Tensor) -> torch.Tensor | None:
    """A normal tensor over the same storage as the inference tensor ``t`` (no copy), or None where the tensor
    kind has no plain storage to share (tensor subclasses such as quantized weights)."""
    if type(t) not in (torch.Tensor, torch.nn.Parameter) or t.layout != torch.strided:
        return None
    with torch.inference_mode(False):
        alias = torch.empty(0, dtype=t.dtype, device=t.device)
        alias.set_(t.untyped_storage(), t.storage_offset(), t.size(), t.stride())
    return alias


def with_attributes(plain: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``plain`` carrying the Python attributes the host set on ``t`` (2026 cores read ``weight._model_dtype`` to
    size a streamed weight's slot)."""
    for key, value in vars(t).items():
        setattr(plain, key, value)
    return plain


@contextmanager
def trainable_weights(modules: Iterable[torch.nn.Module]) -> Iterator[None]:
    """Put a plain alias in place of every inference-tensor parameter and buffer, so autograd can save them for
    backward; the very same original tensor objects go back afterwards, so the host's weights stay
    bit-identical and its patcher keeps its state. Tensors that are already plain are left alone (so nesting
    is free). Where no alias can be made the tensor is cloned (that one tensor only)."""
    swapped: list[tuple[dict[str, Any], str, torch.Tensor]] = []
    try:
        for module in modules:
            for m in module.modules():
                stores: tuple[dict[str, Any], ...] = (m._parameters, m._buffers)
                for store in stores:
                    for name, t in list(store.items()):
                        if t is None or not t.is_inference():
                            continue
                        plain = plain_alias(t)
                        if plain is None:
                            with torch.inference_mode(False):
                                plain = t.detach().clone()
                        swapped.append((store, name, t))
                        is_param = store is m._parameters
                        store[name] = with_attributes(
                            torch.nn.Parameter(plain, requires_grad=False) if is_param else plain, t)
        yield
    finally:
        for store, name, t in reversed(swapped):
            store[name] = t


@contextmanager
def gradient_checkpointing(model: torch.nn.Module, units: list[torch.nn.Module] | None = None,
                           ensure_loaded: Callable[[], None] | None = None) -> Iterator[None]:
    """Block-level gradient checkpointing of a host model for the duration (``units``, else its
    ``checkpoint_units``). This also keeps the host's per-layer weight casts (fp16 weights computed in fp32,
    offloaded weights) out of what backward holds: they live for one unit at a time. The recompute runs after the
    host's sampler has returned and our aliases are gone, so each unit's call re-aliases its own weights (free
    when they already are); ``ensure_loaded`` is called once per backward pass before the first recompute (the
    host may have moved the model out meanwhile, e.g. to load the VAE on a small GPU)."""
    loaded_for: list[int] = []  # the backward pass (autograd graph task) the model was last made sure of

    def run(unit, forward, args, kwargs):
        task = backward_pass()
        if ensure_loaded is not None and task != -1 and task not in loaded_for:
            loaded_for[:] = [task]
            ensure_loaded()
        with trainable_weights([unit]):
            return forward(*args, **kwargs)

    with block_checkpointing(checkpoint_units(model) if units is None else units, run):
        yield


def backward_pass() -> int:
    """The running backward pass's id, -1 outside backward (a private torch call: -1 where it is missing, and
    then the model is never reloaded mid-backward, as before)."""
    current = getattr(torch._C, "_current_graph_task_id", None)
    return int(current()) if callable(current) else -1
