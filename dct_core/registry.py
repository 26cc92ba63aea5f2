"""Named models and classifier sources that packages register themselves into.

Generic code (the CLI, the classifier spec parser) asks the registry instead of knowing any particular
built-in: ``--model world`` and ``--classifier world:guide`` resolve here because ``dct_core.world`` registers
them when it is imported. Built-in plugins are imported on the first lookup, so importing the engine stays
cheap.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .config import SamplingConfig

# Packages that register models or classifier sources on import (the demo world ships with the engine).
BUILTIN_PLUGINS: tuple[str, ...] = ("dct_core.world",)


@dataclass(frozen=True)
class NamedModel:
    name: str
    load_backend: Callable[..., Any]  # (device, dtype) -> a Backend
    sampling: SamplingConfig  # the model's own sampling defaults (resolution, steps, guidance)
    description: str
    # Optional measuring aids a model with known ground truth can offer to `dct eval` and `dct demo`:
    variety: Callable[[], Callable[[Any], dict[str, float]]] | None = None  # () -> images -> entropy per attribute
    reference_images: Callable[[str, int], Any] | None = None  # (class label, count) -> real images of the class


@dataclass(frozen=True)
class ClassifierSource:
    prefix: str  # the spec form is "<prefix>:<rest>"
    load: Callable[[str], Any]  # rest -> an ImageClassifier
    description: str


_models: dict[str, NamedModel] = {}
_classifier_sources: dict[str, ClassifierSource] = {}
_plugins_loaded = False


def register_model(model: NamedModel) -> None:
    _models[model.name] = model


def register_classifier_source(source: ClassifierSource) -> None:
    _classifier_sources[source.prefix] = source


def _load_plugins() -> None:
    global _plugins_loaded
    if not _plugins_loaded:
        _plugins_loaded = True
        for name in BUILTIN_PLUGINS:
            importlib.import_module(name)


def named_model(name: str) -> NamedModel | None:
    """The registered model called ``name`` (e.g. "world"), or None for a path."""
    _load_plugins()
    return _models.get(name)


def classifier_source(prefix: str) -> ClassifierSource | None:
    _load_plugins()
    return _classifier_sources.get(prefix)


def described_models() -> list[str]:
    _load_plugins()
    return [f"{m.name} ({m.description})" for m in _models.values()]


def described_classifier_sources() -> list[str]:
    _load_plugins()
    return [f"{s.prefix}:... ({s.description})" for s in _classifier_sources.values()]
