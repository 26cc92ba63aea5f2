"""Making the host's models differentiable for the duration of a training step, and undoing it exactly.

ComfyUI blocks gradients three ways: every node runs under ``torch.inference_mode()``; weights loaded there are
inference tensors that autograd cannot save; and its CLIP layers add in place. The weights are never copied:
autograd gets plain tensors that share the inference tensors' storage (read only, and only for the step).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from dct_core.method.checkpointing import block_checkpointing, checkpoint_units

from . import host_internals as host

__all__ = ["autograd_enabled", "checkpoint_units", "gradient_checkpointing", "out_of_place_clip",
           "trainable_weights"]


@contextmanager
def autograd_enabled() -> Iterator[None]:
    """Leave the host's inference mode (``enable_grad`` alone does nothing inside it), and tell hosts that have
    the flag (2026 cores) that a training runs: ``comfy.model_management.in_training`` switches fused,
    in-place kernels to autograd-safe ones, as the host's own trainer sets it. Restored exactly afterwards."""
    with torch.inference_mode(False), torch.enable_grad(), host.training_flag():
        yield


def _plain_alias(t: torch.Tensor) -> torch.Tensor | None:
    """A normal tensor over the same storage as the inference tensor ``t`` (no copy), or None where the tensor
    kind has no plain storage to share (tensor subclasses such as quantized weights)."""
    if type(t) not in (torch.Tensor, torch.nn.Parameter) or t.layout != torch.strided:
        return None
    with torch.inference_mode(False):
        alias = torch.empty(0, dtype=t.dtype, device=t.device)
        alias.set_(t.untyped_storage(), t.storage_offset(), t.size(), t.stride())
    return alias


def _with_attributes(plain: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
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
                        plain = _plain_alias(t)
                        if plain is None:
                            with torch.inference_mode(False):
                                plain = t.detach().clone()
                        swapped.append((store, name, t))
                        is_param = store is m._parameters
                        store[name] = _with_attributes(
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
        task = _backward_pass()
        if ensure_loaded is not None and task != -1 and task not in loaded_for:
            loaded_for[:] = [task]
            ensure_loaded()
        with trainable_weights([unit]):
            return forward(*args, **kwargs)

    with block_checkpointing(checkpoint_units(model) if units is None else units, run):
        yield


def _backward_pass() -> int:
    """The running backward pass's id, -1 outside backward (a private torch call: -1 where it is missing, and
    then the model is never reloaded mid-backward, as before)."""
    current = getattr(torch._C, "_current_graph_task_id", None)
    return int(current()) if callable(current) else -1


def _out_of_place_forward(self, x, mask=None, optimized_attention=None):
    x = x + self.self_attn(self.layer_norm1(x), mask, optimized_attention)
    return x + self.mlp(self.layer_norm2(x))


SWAPPED_SIGNATURE = ["self", "x", "mask", "optimized_attention"]  # the forward our twin stands in for (0.3.6x)


def _in_place_adds(forward) -> bool | None:
    """Whether the forward's source adds in place (``+=``), None where the source cannot be read."""
    try:
        source = inspect.getsource(forward)
    except (OSError, TypeError):
        return None
    return "+=" in source


def clip_forward_plan(forward) -> str:
    """What to do with the host's ``CLIPLayer.forward``: "swap" (the signature our twin copies, 0.3.6x), "keep"
    (another signature, but the forward is already out of place), else HostMismatch naming the internal: a
    twin with the wrong signature would drop arguments silently."""
    params = list(inspect.signature(forward).parameters)
    if params == SWAPPED_SIGNATURE:
        return "swap"
    if _in_place_adds(forward) is False:
        return "keep"
    raise host.HostMismatch(
        f"{host.host_version()} changed comfy.clip_model.CLIPLayer.forward to ({', '.join(params)}), which adds "
        "in place (breaks the gradient); the Discriminative Class Tokens pack knows the forward "
        f"({', '.join(SWAPPED_SIGNATURE)}) and supports {host.SUPPORTED_HOSTS}: update the pack.")


@contextmanager
def out_of_place_clip() -> Iterator[None]:
    """The host's ``CLIPLayer.forward`` does ``x += ...``, which breaks backward; use an out-of-place twin
    for the duration and put the original back. The twin is used only where the host's forward has the
    signature it copies; see ``clip_forward_plan``."""
    layer = host.clip_layer_class()
    original = layer.forward
    if clip_forward_plan(original) == "keep":
        yield
        return
    layer.forward = _out_of_place_forward
    try:
        yield
    finally:
        layer.forward = original
