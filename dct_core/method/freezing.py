"""Borrow a host's modules for training and hand them back exactly as they were."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch


@contextmanager
def frozen(modules: Iterable[torch.nn.Module]) -> Iterator[None]:
    """Eval mode and requires_grad=False on every parameter for the duration; both restored after.

    Gradients then flow through the modules to the token without being stored for any weight.
    """
    modules = [m for m in modules if m is not None]
    modes = [(m, m.training) for mod in modules for m in mod.modules()]
    # Inference tensors (weights a host loaded under torch.inference_mode) never take part in autograd and
    # their flag cannot be set back outside inference mode: leave them alone.
    flags = [(p, p.requires_grad) for mod in modules for p in mod.parameters() if not p.is_inference()]
    try:
        for mod in modules:
            mod.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        for m, mode in modes:
            m.training = mode
