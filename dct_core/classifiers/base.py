"""One interface for every classifier: images in [0, 1] -> logits, label names, and the training objective.

Single-label classifiers are trained with cross-entropy to the target class; multi-label (attribute)
classifiers with binary cross-entropy on the target's logit, toward "on" or "off".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..errors import DCTError
from .labels import display_name, resolve_class
from .preprocess import Preprocess


class Classifier:
    """What the training loop and the CLI need; subclasses supply ``__call__`` and ``module``."""

    labels: list[str]
    name: str
    multi_label: bool = False
    module: torch.nn.Module

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def class_index(self, query: str | int) -> int:
        return resolve_class(self.labels, query)

    def class_name(self, index: int) -> str:
        return display_name(self.labels[index])

    def to(self, device: torch.device | str) -> Classifier:
        self.module.to(device)
        return self

    # The objective, per image: loss [B], hit [B] (bool), probability of the wanted outcome [B].
    def loss(self, logits: torch.Tensor, target: int, on: bool = True) -> torch.Tensor:
        if self.multi_label:
            wanted = torch.full_like(logits[:, target], 1.0 if on else 0.0)
            return F.binary_cross_entropy_with_logits(logits[:, target], wanted, reduction="none")
        if not on:
            raise DCTError("'off' targets need a multi-label (attribute) classifier.")
        return F.cross_entropy(logits, torch.full_like(logits[:, 0], target, dtype=torch.long), reduction="none")

    @torch.no_grad()
    def hits(self, logits: torch.Tensor, target: int, on: bool = True) -> torch.Tensor:
        if self.multi_label:
            return (logits[:, target] > 0) == on
        return logits.argmax(-1) == target

    @torch.no_grad()
    def target_prob(self, logits: torch.Tensor, target: int, on: bool = True) -> torch.Tensor:
        if self.multi_label:
            p = logits[:, target].sigmoid()
            return p if on else 1 - p
        return logits.softmax(-1)[:, target]

    def describe(self) -> str:
        kind = "multi-label (sigmoid)" if self.multi_label else "single-label (softmax)"
        return f"{self.name}: {self.num_classes} classes, {kind}"


@dataclass(eq=False)
class ImageClassifier(Classifier):
    """A module mapping normalized images to logits, with its preprocessing."""

    module: torch.nn.Module
    labels: list[str]
    preprocess: Preprocess = field(default_factory=Preprocess)
    name: str = "classifier"
    multi_label: bool = False

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Logits [B, num_classes] for images [B, 3, H, W] in [0, 1]; differentiable in ``images``."""
        param = next(self.module.parameters(), None)
        dtype = param.dtype if param is not None else images.dtype
        return self.module(self.preprocess(images).to(dtype)).float()

    def describe(self) -> str:
        return f"{super().describe()}, {self.preprocess.describe()}"


class EnsembleClassifier(Classifier):
    """Several teachers over the same classes: their log-probabilities averaged.

    Each member keeps its own preprocessing; the result is used as logits (softmax renormalizes it to the
    normalized geometric mean of the members' probabilities).
    """

    def __init__(self, members: Sequence[ImageClassifier]):
        if len(members) < 2:
            raise DCTError("an ensemble needs at least two classifiers.")
        first = members[0]
        for m in members[1:]:
            if m.num_classes != first.num_classes:
                raise DCTError(
                    f"ensemble members disagree on the classes: {first.name} has {first.num_classes}, "
                    f"{m.name} has {m.num_classes}; use classifiers trained on the same label set."
                )
            if m.multi_label != first.multi_label:
                raise DCTError("an ensemble cannot mix single-label and multi-label classifiers.")
        self.members = list(members)
        self.labels = first.labels
        self.multi_label = first.multi_label
        self.name = " + ".join(m.name for m in members)
        self.module = torch.nn.ModuleList([m.module for m in members])

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.multi_label:  # average the log-odds of each attribute
            return torch.stack([m(images) for m in self.members]).mean(0)
        return torch.stack([m(images).log_softmax(-1) for m in self.members]).mean(0)

    def describe(self) -> str:
        return "ensemble of:\n" + "\n".join(f"  {m.describe()}" for m in self.members)
