"""Block-level gradient checkpointing of any module by its blocks (no model-specific switch needed): each unit
keeps only its inputs during the forward and recomputes its activations during backward.

The host layer (nodes/adapters/autograd.py) builds on it for ComfyUI's UNet, text encoder and decoder; the engine
uses it for the classifier.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.utils.checkpoint

Run = Callable[[torch.nn.Module, Callable[..., Any], tuple, dict], Any]


def checkpoint_units(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules to checkpoint one by one: the highest children that are not plain containers (the rule of
    ComfyUI's own trainer): UNet res and transformer blocks, decoder blocks, TAESD layers, a ResNet's
    bottlenecks. A bare ``nn.Module()`` holding blocks (the VAE decoder's ``up[i]`` and ``mid``) is a container
    too: its forward is never called, its blocks are."""
    containers = (torch.nn.ModuleList, torch.nn.Sequential, torch.nn.ModuleDict)
    units: list[torch.nn.Module] = []
    for child in model.children():
        if isinstance(child, containers) or type(child) is torch.nn.Module:
            units.extend(checkpoint_units(child))
        else:
            units.append(child)
    return units


def _plain_run(unit: torch.nn.Module, forward: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
    return forward(*args, **kwargs)


@contextmanager
def block_checkpointing(units: list[torch.nn.Module], run: Run = _plain_run) -> Iterator[None]:
    """Checkpoint each of ``units`` for the duration (only where gradients are on). ``run(unit, forward, args,
    kwargs)`` makes each call, the first and the recompute alike (the host layer re-aliases weights there).
    The units' forwards are restored afterwards, an instance-level forward someone else set included."""
    patched: list[tuple[torch.nn.Module, Any]] = []
    try:
        for unit in units:
            own = unit.__dict__.get("forward")
            original = unit.forward

            def call(args, kwargs, _unit=unit, _forward=original):
                return run(_unit, _forward, args, kwargs)

            def forward(*args, _call=call, **kwargs):
                if not torch.is_grad_enabled():
                    return _call(args, kwargs)
                return torch.utils.checkpoint.checkpoint(_call, args, kwargs, use_reentrant=False)

            unit.forward = forward
            patched.append((unit, own))
        yield
    finally:
        for unit, own in reversed(patched):
            if own is None:
                del unit.forward
            else:
                unit.forward = own
