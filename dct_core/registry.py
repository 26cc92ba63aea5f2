"""Named models and classifier sources that packages register themselves into.

Generic code (the CLI, the classifier spec parser, the label picker, the Fréchet features, the Load Classifier
node) asks the registry instead of knowing any particular kind: ``--model world`` and ``--classifier world:guide``
resolve here because ``dct_core.world`` registers them when it is imported, and the built-in classifier kinds
(timm, TorchScript, transformers, CLIP) register themselves the same way from their own modules. Built-in plugins
are imported on the first lookup, so importing the engine stays cheap.

A classifier source is one kind of classifier (or one form of naming it), as timm registers its models: it says
whether it handles what the user named (a ``<prefix>:<rest>`` form, or a ``matches`` test on a path), loads it,
lists its labels without loading weights, finds its penultimate features, and may appear in the Load Classifier
node's ``kind`` dropdown.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import SamplingConfig

# Packages that register models or classifier sources on import (the built-in classifier kinds and the demo
# world ship with the engine).
BUILTIN_PLUGINS: tuple[str, ...] = (
    "dct_core.classifiers.timm_source",
    "dct_core.classifiers.torchscript_source",
    "dct_core.classifiers.hf_source",
    "dct_core.classifiers.clip_source",
    "dct_core.world",
)
AUTO_KIND = "auto"  # the node's kind that lets the sources recognize the file (always first in its dropdown)


@dataclass(frozen=True)
class NamedModel:
    name: str
    load_backend: Callable[..., Any]  # (device, dtype, sampler=...) -> a Backend
    sampling: SamplingConfig  # the model's own sampling defaults (resolution, steps, guidance)
    description: str
    # Optional measuring aids a model with known ground truth can offer to `dct eval` and `dct demo`:
    variety: Callable[[], Callable[[Any], dict[str, float]]] | None = None  # () -> images -> entropy per attribute
    reference_images: Callable[[str, int], Any] | None = None  # (class label, count) -> real images of the class
    # How the model's classes are prompted, where not by the classifier's label: () -> {class label: prompt word}
    # (the demo world's coarse caption words); and the training settings it needs over the recipe's.
    prompt_words: Callable[[], dict[str, str]] | None = None
    train_defaults: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ClassifierOptions:
    """What a spec's options, the command line or the node add to a source's target (each source reads the
    ones that apply to it)."""

    weights: str | Path | None = None  # --classifier-weights
    labels: str | Path | list[str] | None = None  # explicit labels: a list or a labels file
    pooling: str = "cls"  # transformers ViT: cls or mean
    multi_label: bool | None = None  # None: as the model says
    template: str | None = None  # zero-shot prompt template
    arch: str | None = None  # open_clip architecture of a weights file
    trust_code: bool = False  # TorchScript files are code


NO_OPTIONS = ClassifierOptions()
FeatureFn = Callable[[Any], Any]  # preprocessed images [B, 3, H, W] -> features [B, ...] (torch tensors)


@dataclass(frozen=True)
class ClassifierSource:
    """One kind of classifier.

    Which specs it handles: ``prefix`` (the form ``<prefix>:<rest>`` with a non-empty rest, which is the target;
    ``matches``, if given, further tests the rest), or else ``matches`` (spec -> bool, usually a path test; the
    spec itself is the target). Sources with a prefix are asked first, then the others; each group by
    ``priority`` (lower first; catch-alls use a high one), ties in registration order. The same order decides
    which source's ``features`` answers for a classifier, and the dropdown order; ``priority`` alone orders the
    ``form`` hints. Every callable but ``load`` is optional: without ``quick_labels`` the label lookup loads the
    classifier.
    """

    prefix: str | None
    load: Callable[..., Any]  # (target, options: ClassifierOptions = NO_OPTIONS) -> an ImageClassifier
    description: str
    name: str = ""  # the registry key (default: the prefix)
    matches: Callable[[str], bool] | None = None  # spec -> whether this source handles it
    quick_labels: Callable[..., list[str]] | None = None  # (target, options) -> labels without loading weights
    # (an ImageClassifier of any kind) -> its penultimate-feature function, or None where it is not of this kind
    features: Callable[[Any], FeatureFn | None] | None = None
    node_kind: str | None = None  # its entry in the node's kind dropdown (None: recognized under "auto")
    # (file, architecture) -> the spec the node loads, or None (default for a node kind: "<prefix>:<file>")
    node_spec: Callable[[str, str], str | None] | None = None
    quick_labels_fixed: bool = False  # its quick labels do not depend on the file (the label picker's cache)
    form: str | None = None  # how the "use ..." hint of error messages names it
    priority: int = 0

    def __post_init__(self) -> None:
        if not (self.name or self.prefix):
            raise ValueError("a classifier source needs a name or a prefix.")
        if not self.name:
            object.__setattr__(self, "name", self.prefix)

    def target(self, spec: str) -> str | None:
        """What this source loads for ``spec``, or None when it does not handle it."""
        if self.prefix is not None:
            head, sep, rest = spec.partition(":")
            if not (sep and head == self.prefix and rest):
                return None
            return rest if self.matches is None or self.matches(rest) else None
        return spec if self.matches is not None and self.matches(spec) else None


_models: dict[str, NamedModel] = {}
_classifier_sources: dict[str, ClassifierSource] = {}
_plugins_loaded = False


def register_model(model: NamedModel) -> None:
    _models[model.name] = model


def register_classifier_source(source: ClassifierSource) -> None:
    """Add ``source`` (or replace the one of the same name)."""
    _classifier_sources[source.name] = source


def unregister_classifier_source(name: str) -> ClassifierSource | None:
    return _classifier_sources.pop(name, None)


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


def described_models() -> list[str]:
    _load_plugins()
    return [f"{m.name} ({m.description})" for m in _models.values()]


def classifier_sources() -> list[ClassifierSource]:
    """Every registered source, in the order they are asked: those with a prefix first, then by priority."""
    _load_plugins()
    order = {name: i for i, name in enumerate(_classifier_sources)}
    return sorted(_classifier_sources.values(), key=lambda s: (s.prefix is None, s.priority, order[s.name]))


def classifier_source(name: str) -> ClassifierSource | None:
    """The source registered as ``name`` (a prefix source's name is its prefix, e.g. "world")."""
    _load_plugins()
    return _classifier_sources.get(name)


def find_classifier_source(spec: str) -> tuple[ClassifierSource, str] | None:
    """The first source that handles ``spec`` (options already split off), and what it is to load."""
    for source in classifier_sources():
        target = source.target(spec)
        if target is not None:
            return source, target
    return None


def classifier_forms() -> str:
    """The forms the sources describe, for "use ..." hints: "A, B, or C"."""
    forms = [s.form for s in sorted(classifier_sources(), key=lambda s: s.priority) if s.form]
    return ", ".join(forms[:-1]) + ", or " + forms[-1] if len(forms) > 1 else "".join(forms)


def described_classifier_sources() -> list[str]:
    return [f"{s.prefix}:... ({s.description})" for s in classifier_sources() if s.prefix is not None]


def node_kinds() -> list[str]:
    """The Load Classifier node's kind dropdown: "auto", then each source's node kind."""
    return [AUTO_KIND] + [s.node_kind for s in classifier_sources() if s.node_kind]


def node_kind_source(kind: str) -> ClassifierSource | None:
    """The source shown as ``kind`` in the node's dropdown (None for "auto" or an unknown kind)."""
    return next((s for s in classifier_sources() if s.node_kind and s.node_kind == kind), None)


def node_spec(kind: str, path: str, architecture: str = "") -> str:
    """The spec the node loads for a file of models/classifiers picked with ``kind`` (and the architecture field):
    the kind's own source builds it; under "auto" the first source that wants the pair does, else the file itself
    is the spec and the sources recognize it."""
    source = node_kind_source(kind)
    if source is not None:
        spec = source.node_spec(path, architecture) if source.node_spec is not None else None
        return spec or (f"{source.prefix}:{path}" if source.prefix else path)
    for s in classifier_sources():
        if s.node_kind is None and s.node_spec is not None and (spec := s.node_spec(path, architecture)):
            return spec
    return path
