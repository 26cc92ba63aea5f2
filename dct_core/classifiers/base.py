"""One interface for every classifier: images in [0, 1] -> logits, with label names."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .labels import display_name, resolve_class
from .preprocess import Preprocess


@dataclass
class ImageClassifier:
    module: torch.nn.Module
    labels: list[str]
    preprocess: Preprocess
    name: str = "classifier"

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Logits [B, num_classes] for images [B, 3, H, W] in [0, 1]; differentiable in ``images``."""
        param = next(self.module.parameters(), None)
        dtype = param.dtype if param is not None else images.dtype
        return self.module(self.preprocess(images).to(dtype)).float()

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def class_index(self, query: str | int) -> int:
        return resolve_class(self.labels, query)

    def class_name(self, index: int) -> str:
        return display_name(self.labels[index])

    def to(self, device: torch.device | str) -> ImageClassifier:
        self.module.to(device)
        return self

    def describe(self) -> str:
        return f"{self.name}: {self.num_classes} classes, {self.preprocess.describe()}"
