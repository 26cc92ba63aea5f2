"""A user's own classifier saved as TorchScript, with a labels file and optional preprocessing sidecar.

TorchScript is code: loading a file runs its ``__setstate__`` and we run its ``forward``, and that code can
write files. It is refused unless the caller passes ``trust_code=True``. The sidecar ``<file>.json`` (or
``<stem>.json``) is plain JSON, read without loading the module; it may set input_size, mean, std, crop_pct,
interpolation, multi_label and labels. Registers the classifier source for TorchScript files.
"""

from __future__ import annotations

import reprlib
import zipfile
from numbers import Real
from pathlib import Path
from typing import Any

import torch

from ..errors import DCTError
from ..registry import NO_OPTIONS, ClassifierOptions, ClassifierSource, register_classifier_source
from .base import ImageClassifier
from .features import FeatureFn
from .labels import check_label_count, labels_from, names_from_json
from .preprocess import Preprocess
from .text_files import existing_path, read_json_object

INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
OPT_IN = "--trust-code on the command line, or the Load Classifier node's 'allow TorchScript code' switch"


def is_torchscript(path: Path) -> bool:
    """Whether ``path`` is a TorchScript archive; reads the zip's file list only."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any("/code/" in name for name in z.namelist())


def refuse_untrusted_code(path: Path, trust_code: bool) -> None:
    if not trust_code:
        raise DCTError(
            f"{path.name} is TorchScript, which is code that runs when it is loaded; it is refused. "
            f"If you trust the file, allow it with {OPT_IN}."
        )


def find_sidecar(path: Path) -> Path | None:
    for sidecar in (path.with_suffix(path.suffix + ".json"), path.with_suffix(".json")):
        if sidecar.is_file():
            return sidecar
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _is_size(value: Any) -> bool:
    sizes = value if isinstance(value, list) and len(value) in (1, 2) else [value]
    return all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in sizes)


def _is_channel_triple(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 3 and all(map(_is_number, value))


SIDECAR_FIELDS = {  # field -> (check, what it must be)
    "labels": (lambda v: isinstance(v, (list, dict)), "a list of names or an {index: name} object"),
    "input_size": (_is_size, "a positive integer or [height, width]"),
    "mean": (_is_channel_triple, "three numbers (R, G, B)"),
    "std": (lambda v: _is_channel_triple(v) and all(x > 0 for x in v), "three positive numbers (R, G, B)"),
    "crop_pct": (lambda v: _is_number(v) and 0 < v <= 1, "a number in (0, 1]"),
    "interpolation": (lambda v: v in INTERPOLATIONS, " or ".join(INTERPOLATIONS)),
    "multi_label": (lambda v: isinstance(v, bool), "true or false"),
}


def read_sidecar(path: Path) -> tuple[dict[str, Any], str]:
    """The checked sidecar of a TorchScript file (empty if none), and its name for messages."""
    sidecar = find_sidecar(path)
    if sidecar is None:
        return {}, path.with_suffix(path.suffix + ".json").name
    meta = read_json_object(sidecar, "sidecar")
    unknown = sorted(set(meta) - set(SIDECAR_FIELDS))
    if unknown:
        raise DCTError(f"sidecar {sidecar} has unknown field(s) {', '.join(unknown)}; "
                       f"known: {', '.join(SIDECAR_FIELDS)}.")
    for key, (ok, expected) in SIDECAR_FIELDS.items():
        if key in meta and not ok(meta[key]):
            raise DCTError(f"sidecar {sidecar}: {key!r} must be {expected}, not {reprlib.repr(meta[key])}.")
    return meta, sidecar.name


def torchscript_labels(path: Path, labels=None) -> list[str]:
    """Explicit labels, else the sidecar's; never loads the module."""
    if labels is not None:
        return labels_from(labels)
    meta, sidecar_name = read_sidecar(path)
    if "labels" not in meta:
        raise DCTError(f"{path.name} needs class names: pass --labels FILE or put 'labels' in {sidecar_name}.")
    return names_from_json(meta["labels"], f"'labels' in {sidecar_name}")


def _preprocess(meta: dict[str, Any]) -> Preprocess:
    size = meta.get("input_size", [224, 224])
    height, width = (size[0], size[-1]) if isinstance(size, list) else (size, size)
    defaults = Preprocess()
    return Preprocess(
        input_size=(height, width),
        crop_pct=float(meta.get("crop_pct", 1.0)),
        interpolation=meta.get("interpolation", "bilinear"),
        mean=tuple(meta.get("mean", defaults.mean)),
        std=tuple(meta.get("std", defaults.std)),
    )


def _output_width(module: torch.nn.Module, preprocess: Preprocess) -> int:
    with torch.no_grad():
        return module(torch.zeros(1, 3, *preprocess.input_size)).shape[-1]


def load_torchscript_classifier(path: str | Path, labels=None, *, multi_label: bool | None = None,
                                trust_code: bool = False) -> ImageClassifier:
    path = Path(path)
    refuse_untrusted_code(path, trust_code)
    meta, _ = read_sidecar(path)
    names = torchscript_labels(path, labels)
    preprocess = _preprocess(meta)
    try:
        module = torch.jit.load(str(path), map_location="cpu").eval()
    except RuntimeError as exc:
        raise DCTError(f"{path} is not a loadable TorchScript module: {str(exc).splitlines()[0]}") from exc
    check_label_count(names, _output_width(module, preprocess), path.name)
    for p in module.parameters():
        p.requires_grad_(False)
    multi = meta.get("multi_label", False) if multi_label is None else multi_label
    return ImageClassifier(module, names, preprocess, name=f"torchscript:{path.name}", multi_label=multi)


def _is_torchscript_file(spec: str) -> bool:
    path = existing_path(spec)
    return path is not None and not path.is_dir() and is_torchscript(path)


def _load(target: str, options: ClassifierOptions = NO_OPTIONS) -> ImageClassifier:
    return load_torchscript_classifier(Path(target).expanduser(), options.labels, multi_label=options.multi_label,
                                       trust_code=options.trust_code)


def _quick_labels(target: str, options: ClassifierOptions = NO_OPTIONS) -> list[str]:
    return torchscript_labels(Path(target).expanduser())  # the sidecar's: the module is never loaded


def _features(classifier: ImageClassifier) -> FeatureFn | None:
    if isinstance(classifier.module, torch.jit.ScriptModule):
        raise DCTError(f"{classifier.name} is TorchScript, whose layers cannot be read from outside; name a timm, "
                       f"transformers or CLIP classifier for the features.")
    return None


register_classifier_source(ClassifierSource(
    None, _load, "a TorchScript file with its labels (explicit or a <file>.json sidecar); code, so only if trusted",
    name="torchscript", matches=_is_torchscript_file, quick_labels=_quick_labels, features=_features,
    form="a TorchScript file", priority=30,
))
