"""The world's two classifiers: different architectures, same classes. One guides training, the other is
held out to judge the results (as the paper judges iNat tokens with a classifier other than the guide)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ClassifierSpec:
    architecture: str  # a timm architecture, created without pretrained weights
    model_args: dict = field(default_factory=dict)
    lr: float = 2e-3


CLASSIFIERS: dict[str, ClassifierSpec] = {
    "guide": ClassifierSpec("test_resnet"),
    "held-out": ClassifierSpec("test_convnext"),
}
