"""Making the host's models differentiable for the duration of a training step, and undoing it exactly.

ComfyUI blocks gradients three ways: every node runs under ``torch.inference_mode()``;
weights loaded there are inference tensors that autograd cannot save; and its CLIP layers add in place.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch


@contextmanager
def autograd_enabled() -> Iterator[None]:
    """Leave the host's inference mode (``enable_grad`` alone does nothing inside it), and tell hosts that have
    the flag (2026 cores) that a training runs: ``comfy.model_management.in_training`` switches fused,
    in-place kernels to autograd-safe ones, as the host's own trainer sets it. Restored exactly afterwards."""
    with torch.inference_mode(False), torch.enable_grad(), _host_training_flag():
        yield


@contextmanager
def _host_training_flag() -> Iterator[None]:
    try:
        import comfy.model_management as mm
    except ImportError:  # the engine used without a host
        yield
        return
    if not hasattr(mm, "in_training"):  # 0.3.64 has no such flag: leave the module untouched
        yield
        return
    before = mm.in_training
    mm.in_training = True
    try:
        yield
    finally:
        mm.in_training = before


@contextmanager
def trainable_weights(modules: Iterable[torch.nn.Module]) -> Iterator[None]:
    """Swap every parameter and buffer for a plain clone autograd can save; the very same original tensor
    objects go back afterwards, so the host's weights stay bit-identical and its patcher keeps its state."""
    swapped: list[tuple[dict[str, Any], str, torch.Tensor]] = []
    try:
        for module in modules:
            for m in module.modules():
                stores: tuple[dict[str, Any], ...] = (m._parameters, m._buffers)
                for store in stores:
                    for name, t in list(store.items()):
                        if t is None:
                            continue
                        swapped.append((store, name, t))
                        clone = t.detach().clone()
                        is_param = store is m._parameters
                        store[name] = torch.nn.Parameter(clone, requires_grad=False) if is_param else clone
        yield
    finally:
        for store, name, t in reversed(swapped):
            store[name] = t


def _out_of_place_forward(self, x, mask=None, optimized_attention=None):
    x = x + self.self_attn(self.layer_norm1(x), mask, optimized_attention)
    return x + self.mlp(self.layer_norm2(x))


@contextmanager
def out_of_place_clip() -> Iterator[None]:
    """The host's ``CLIPLayer.forward`` does ``x += ...``, which breaks backward; use an out-of-place twin
    for the duration and put the original back."""
    import comfy.clip_model

    original = comfy.clip_model.CLIPLayer.forward
    comfy.clip_model.CLIPLayer.forward = _out_of_place_forward
    try:
        yield
    finally:
        comfy.clip_model.CLIPLayer.forward = original
