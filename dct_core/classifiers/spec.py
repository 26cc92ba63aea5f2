"""Turning what a user names into a classifier.

Forms (each may end in ``#key=value,...`` options: pooling=mean, multi_label=true, template=...; a path
that itself contains "#" is taken as it is):
- ``timm:<architecture>`` with weights from ``--classifier-weights`` or inline ``timm:<architecture>@<file>``
- a folder: timm's hub layout (config.json with ``architecture``) or transformers (config.json with id2label)
- a TorchScript file (with ``--labels`` or a ``<file>.json`` sidecar); it is code, so only with trust_code
- ``<prefix>:<name>`` of a registered source (dct_core.registry), e.g. the demo world's ``world:guide``
- ``clip:<folder>``: zero-shot CLIP over the labels (default: ImageNet names); open_clip weights as
  ``clip:<file>#arch=<open_clip architecture>``
Several specs make an ensemble (log-probabilities averaged).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from ..errors import DCTError
from ..registry import classifier_source
from .base import Classifier, EnsembleClassifier, ImageClassifier
from .text_files import folder_kind

FORMS = (
    "timm:<architecture> with --classifier-weights FILE (or timm:<architecture>@FILE), a timm or transformers "
    "model folder, a TorchScript file, or clip:<CLIP folder>"
)


def _names_existing_path(text: str) -> bool:
    try:
        return bool(text) and Path(text).expanduser().exists()
    except (OSError, ValueError):  # a name too long, or with a NUL byte
        return False


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
    kind, sep, rest = spec.partition(":")
    if sep and kind == "timm" and rest:
        name, _, inline = rest.partition("@")
        from .timm_source import load_timm_classifier

        classifier = load_timm_classifier(name, inline or weights, labels, multi_label=bool(multi_label))
    elif sep and rest and (source := classifier_source(kind)) is not None:
        classifier = source.load(rest)
    elif sep and kind == "clip" and rest:
        from .clip_source import DEFAULT_TEMPLATE, load_clip_classifier

        classifier = load_clip_classifier(_existing(rest), labels, template=template or DEFAULT_TEMPLATE, arch=arch)
    else:
        classifier = _load_path(_existing(spec), labels, pooling, multi_label, trust_code)
    if grad_checkpointing:
        _enable_checkpointing(classifier.module)
    return classifier


def _existing(path: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        hint = " (options after '#' look like #pooling=mean)" if "#" in path else ""
        raise DCTError(
            f"classifier {path!r} is neither an existing file or folder nor a known form{hint}; use {FORMS}."
        )
    return p


def _load_path(path: Path, labels, pooling: str, multi_label: bool | None, trust_code: bool) -> ImageClassifier:
    if path.is_dir():
        return _load_folder(path, labels, pooling, multi_label)
    from .torchscript_source import is_torchscript, load_torchscript_classifier

    if is_torchscript(path):
        return load_torchscript_classifier(path, labels, multi_label=multi_label, trust_code=trust_code)
    raise DCTError(
        f"{path.name} is a weights file without an architecture; name one with timm:<architecture> "
        f"--classifier-weights {path}, or give a model folder or a TorchScript file."
    )


def _load_folder(path: Path, labels, pooling: str, multi_label: bool | None) -> ImageClassifier:
    kind, _ = folder_kind(path)
    if kind == "timm":
        from .timm_source import load_timm_folder

        return load_timm_folder(path, labels, multi_label=bool(multi_label))
    if kind == "clip":
        raise DCTError(f"{path} is a CLIP model; use it as a zero-shot classifier with clip:{path}.")
    from .hf_source import load_hf_classifier

    return load_hf_classifier(path, labels, pooling=pooling, multi_label=multi_label)


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
        raise DCTError(f"no classifier given; use {FORMS}.")
    if len(specs) == 1:
        return load_classifier(specs[0], weights, labels, trust_code=trust_code, **options)
    if weights is not None:
        raise DCTError("--classifier-weights is for a single classifier; in an ensemble write timm:<name>@FILE.")
    return EnsembleClassifier([load_classifier(s, None, labels, trust_code=trust_code, **options) for s in specs])
