"""Turning what a user names into a classifier: the registered classifier sources decide (dct_core.registry).

A spec is ``<prefix>:<rest>`` for a source with that prefix, or what a source's ``matches`` recognizes (usually a
path); each may end in ``#key=value,...`` options: pooling=mean, multi_label=true, template=..., arch=... (a path
that itself contains "#" is taken as it is). The built-in sources register themselves from their own modules:
- ``timm:<architecture>`` with weights from ``--classifier-weights`` or inline ``timm:<architecture>@<file>``
  (timm_source), a folder in timm's hub layout (config.json with ``architecture``);
- a transformers model folder (config.json with id2label; hf_source);
- a TorchScript file (with ``--labels`` or a ``<file>.json`` sidecar); it is code, so only with trust_code
  (torchscript_source);
- ``clip:<folder>``: zero-shot CLIP over the labels (default: ImageNet names); open_clip weights as
  ``clip:<file>#arch=<open_clip architecture>`` (clip_source);
- ``world:guide`` / ``world:held-out``: the demo world's classifiers (dct_core.world).
Several specs make an ensemble (log-probabilities averaged).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from ..errors import DCTError
from ..registry import ClassifierOptions, classifier_forms, find_classifier_source
from .base import Classifier, EnsembleClassifier, ImageClassifier
from .text_files import existing_path


def _names_existing_path(text: str) -> bool:
    return bool(text) and existing_path(text) is not None


def _path_parts(spec: str) -> list[str]:
    """The parts of a spec that may name a path: all of it, what follows a prefix, what follows timm:<name>@."""
    _, sep, rest = spec.partition(":")
    return [spec, rest, rest.partition("@")[2]] if sep else [spec]


def _split_options(spec: str) -> tuple[str, str]:
    """(spec, options text). A path may itself contain '#': options are split off only after the last '#',
    and only when they look like key=value and the spec does not name an existing path as it is."""
    if any(_names_existing_path(part) for part in _path_parts(spec)):
        return spec, ""
    head, sep, tail = spec.rpartition("#")
    if sep and re.match(r"\s*\w+\s*=", tail):
        return head, tail
    return spec, ""


def _options(spec: str) -> tuple[str, dict[str, str]]:
    spec, opts = _split_options(spec)
    options = {}
    for item in filter(None, opts.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise DCTError(f"classifier option {item!r} must look like key=value (e.g. #pooling=mean).")
        options[key.strip()] = value.strip()
    return spec, options


def _flag(value: str | bool | None) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    return value.lower() in ("1", "true", "yes", "on")


def load_classifier(
    spec: str, weights: str | Path | None = None, labels: str | Path | list[str] | None = None,
    *, pooling: str | None = None, multi_label: bool | None = None, template: str | None = None,
    grad_checkpointing: bool = False, trust_code: bool = False,
) -> ImageClassifier:
    """The classifier ``spec`` names (see the module docstring). TorchScript files are code and load only
    with ``trust_code=True``."""
    spec, opts = _options(spec)
    pooling = opts.pop("pooling", pooling) or "cls"
    multi_label = _flag(opts.pop("multi_label", multi_label))
    template = opts.pop("template", template)
    arch = opts.pop("arch", None)
    if opts:
        raise DCTError(
            f"unknown classifier option(s) {', '.join(opts)}; known: pooling, multi_label, template, arch."
        )
    options = ClassifierOptions(weights=weights, labels=labels, pooling=pooling, multi_label=multi_label,
                                template=template, arch=arch, trust_code=trust_code)
    found = find_classifier_source(spec)
    if found is None:
        require_existing(spec)
        raise DCTError(f"no classifier source takes {spec!r}; use {classifier_forms()}.")
    source, target = found
    classifier = source.load(target, options)
    if grad_checkpointing:
        _enable_checkpointing(classifier.module)
    return classifier


def require_existing(path: str) -> Path:
    """``path`` as an existing Path, or the error that lists the forms a classifier may take."""
    p = Path(path).expanduser()
    if not p.exists():
        hint = " (options after '#' look like #pooling=mean)" if "#" in path else ""
        raise DCTError(
            f"classifier {path!r} is neither an existing file or folder nor a known form{hint}; "
            f"use {classifier_forms()}."
        )
    return p


def _enable_checkpointing(module) -> None:
    """Trade compute for memory in large ViTs (our own copy of the classifier, so no host state changes)."""
    inner = getattr(module, "model", module)
    if hasattr(inner, "set_grad_checkpointing"):
        inner.set_grad_checkpointing(True)
    elif hasattr(inner, "gradient_checkpointing_enable"):
        inner.gradient_checkpointing_enable()


def load_classifiers(
    specs: Sequence[str], weights: str | Path | None = None, labels: str | Path | None = None,
    *, trust_code: bool = False, **options,
) -> Classifier:
    """One classifier, or an ensemble of several (weights then go inline: timm:<name>@FILE). TorchScript
    files load only with ``trust_code=True``."""
    if not specs:
        raise DCTError(f"no classifier given; use {classifier_forms()}.")
    if len(specs) == 1:
        return load_classifier(specs[0], weights, labels, trust_code=trust_code, **options)
    if weights is not None:
        raise DCTError("--classifier-weights is for a single classifier; in an ensemble write timm:<name>@FILE.")
    return EnsembleClassifier([load_classifier(s, None, labels, trust_code=trust_code, **options) for s in specs])
