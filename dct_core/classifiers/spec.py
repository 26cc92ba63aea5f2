"""Parsing the classifier argument of the CLI: ``timm:<name>``."""

from __future__ import annotations

from pathlib import Path

from ..errors import DCTError
from .base import ImageClassifier


def load_classifier(spec: str, weights: str | Path | None = None, labels: str | Path | None = None) -> ImageClassifier:
    kind, _, rest = spec.partition(":")
    if kind == "timm" and rest:
        from .timm_source import load_timm_classifier

        return load_timm_classifier(rest, weights, labels)
    raise DCTError(f"unknown classifier {spec!r}; use timm:<model_name> with --classifier-weights FILE.")
