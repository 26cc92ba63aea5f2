"""Generic penultimate-feature functions that classifier sources and the Fréchet distance share.

A source's ``features`` (dct_core.registry.ClassifierSource) knows its own modules; what any module allows is
here: the input of a given head layer, or of the module's last ``nn.Linear`` when that is the head.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..errors import DCTError
from .base import ImageClassifier

FeatureFn = Callable[[torch.Tensor], torch.Tensor]


def head_input(module: torch.nn.Module, head: torch.nn.Module) -> FeatureFn:
    """Runs ``module`` and returns what ``head`` received (its last call), flattened to [B, D]."""

    def run(x: torch.Tensor) -> torch.Tensor:
        seen: list[torch.Tensor] = []

        def hook(_mod: torch.nn.Module, args: tuple[Any, ...]) -> None:
            seen.append(args[0])

        handle = head.register_forward_pre_hook(hook)
        try:
            module(x)
        finally:
            handle.remove()
        if not seen:
            raise DCTError("the classifier's head was not called in its forward pass; cannot take its features.")
        return seen[-1].flatten(1)

    return run


def last_linear(classifier: ImageClassifier) -> FeatureFn:
    """The input of the module's last ``nn.Linear`` layer, which must be the head (its outputs = the classes)."""
    module = classifier.module
    linears = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
    if not linears:
        raise DCTError(f"{classifier.name} has no linear head layer to take features from; name a timm, "
                       f"transformers or CLIP classifier for the features.")
    head = linears[-1]
    if head.out_features != classifier.num_classes:
        raise DCTError(f"the last linear layer of {classifier.name} gives {head.out_features} outputs, not its "
                       f"{classifier.num_classes} classes, so it is not the head; name another classifier for "
                       f"the features.")
    return head_input(module, head)
