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
    """Leave the host's inference mode (``enable_grad`` alone does nothing inside it)."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


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
