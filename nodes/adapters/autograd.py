"""Making the host's models differentiable for the duration of a training step, and undoing it exactly.

ComfyUI blocks gradients three ways: every node runs under ``torch.inference_mode()``; weights loaded there are
inference tensors that autograd cannot save; and its CLIP layers add in place. The weights are never copied:
autograd gets plain tensors that share the inference tensors' storage (dct_core/method/host_weights.py, shared
with the webui's host layer).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from dct_core.method.checkpointing import checkpoint_units
from dct_core.method.host_weights import backward_pass, gradient_checkpointing, trainable_weights

from . import host_internals as host

__all__ = ["autograd_enabled", "backward_pass", "checkpoint_units", "gradient_checkpointing", "out_of_place_clip",
           "trainable_weights"]


@contextmanager
def autograd_enabled() -> Iterator[None]:
    """Leave the host's inference mode (``enable_grad`` alone does nothing inside it), and tell hosts that have
    the flag (2026 cores) that a training runs: ``comfy.model_management.in_training`` switches fused,
    in-place kernels to autograd-safe ones, as the host's own trainer sets it. Restored exactly afterwards."""
    with torch.inference_mode(False), torch.enable_grad(), host.training_flag():
        yield


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
