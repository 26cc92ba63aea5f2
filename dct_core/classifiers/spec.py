"""Turning what a user names into a classifier.

Forms (each may end in ``#key=value,...`` options: pooling=mean, multi_label=true, template=...):
- ``timm:<architecture>`` with weights from ``--classifier-weights`` or inline ``timm:<architecture>@<file>``
- a folder: timm's hub layout (config.json with ``architecture``) or transformers (config.json with id2label)
- a TorchScript file (with ``--labels`` or a ``<file>.json`` sidecar)
- ``world:guide`` / ``world:held-out``: the built-in demo world's two classifiers
- ``clip:<folder>``: zero-shot CLIP over the labels (default: ImageNet names); open_clip weights as
  ``clip:<file>#arch=<open_clip architecture>``
Several specs make an ensemble (log-probabilities averaged).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from ..errors import DCTError
from .base import Classifier, EnsembleClassifier, ImageClassifier

FORMS = (
    "timm:<architecture> with --classifier-weights FILE (or timm:<architecture>@FILE), a timm or transformers "
    "model folder, a TorchScript file, or clip:<CLIP folder>"
)


def _options(spec: str) -> tuple[str, dict[str, str]]:
    spec, _, opts = spec.partition("#")
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
    grad_checkpointing: bool = False,
) -> ImageClassifier:
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
    elif sep and kind == "world" and rest:
        from ..world import load_world_classifier

        classifier = load_world_classifier(rest)
    elif sep and kind == "clip" and rest:
        from .clip_source import DEFAULT_TEMPLATE, load_clip_classifier

        classifier = load_clip_classifier(_existing(rest), labels, template=template or DEFAULT_TEMPLATE, arch=arch)
    else:
        classifier = _load_path(_existing(spec), labels, pooling, multi_label)
    if grad_checkpointing:
        _enable_checkpointing(classifier.module)
    return classifier


def _existing(path: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise DCTError(f"classifier {path!r} is neither an existing file or folder nor a known form; use {FORMS}.")
    return p


def _load_path(path: Path, labels, pooling: str, multi_label: bool | None) -> ImageClassifier:
    if path.is_dir():
        config = path / "config.json"
        if not config.is_file():
            raise DCTError(f"{path} has no config.json; it is not a timm or transformers model folder.")
        cfg = json.loads(config.read_text())
        if "architecture" in cfg:
            from .timm_source import load_timm_folder

            return load_timm_folder(path, labels, multi_label=bool(multi_label))
        if cfg.get("model_type") == "clip":
            raise DCTError(f"{path} is a CLIP model; use it as a zero-shot classifier with clip:{path}.")
        from .hf_source import load_hf_classifier

        return load_hf_classifier(path, labels, pooling=pooling, multi_label=multi_label)
    from .torchscript_source import is_torchscript, load_torchscript_classifier

    if is_torchscript(path):
        return load_torchscript_classifier(path, labels, multi_label=multi_label)
    raise DCTError(
        f"{path.name} is a weights file without an architecture; name one with timm:<architecture> "
        f"--classifier-weights {path}, or give a model folder or a TorchScript file."
    )


def _enable_checkpointing(module) -> None:
    """Trade compute for memory in large ViTs (our own copy of the classifier, so no host state changes)."""
    inner = getattr(module, "model", module)
    if hasattr(inner, "set_grad_checkpointing"):
        inner.set_grad_checkpointing(True)
    elif hasattr(inner, "gradient_checkpointing_enable"):
        inner.gradient_checkpointing_enable()


def load_classifiers(
    specs: Sequence[str], weights: str | Path | None = None, labels: str | Path | None = None, **options
) -> Classifier:
    """One classifier, or an ensemble of several (weights then go inline: timm:<name>@FILE)."""
    if not specs:
        raise DCTError(f"no classifier given; use {FORMS}.")
    if len(specs) == 1:
        return load_classifier(specs[0], weights, labels, **options)
    if weights is not None:
        raise DCTError("--classifier-weights is for a single classifier; in an ensemble write timm:<name>@FILE.")
    return EnsembleClassifier([load_classifier(s, None, labels, **options) for s in specs])
