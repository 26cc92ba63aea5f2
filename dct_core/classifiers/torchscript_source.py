"""A user's own classifier saved as TorchScript, with a labels file and optional preprocessing sidecar.

TorchScript is code: load only files you trust. (Its archives run in TorchScript's interpreter, not as
arbitrary Python pickles.) The sidecar ``<file>.json`` may set input_size, mean, std, crop_pct,
interpolation, multi_label and labels.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import torch

from ..errors import DCTError
from .base import ImageClassifier
from .labels import read_labels
from .preprocess import Preprocess


def is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any("/code/" in name for name in z.namelist())


def load_torchscript_classifier(path: str | Path, labels=None, *, multi_label: bool | None = None) -> ImageClassifier:
    path = Path(path)
    sidecar = path.with_suffix(path.suffix + ".json")
    if not sidecar.is_file():
        sidecar = path.with_suffix(".json")
    meta = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
    try:
        module = torch.jit.load(str(path), map_location="cpu").eval()
    except RuntimeError as exc:
        raise DCTError(f"{path} is not a loadable TorchScript module: {str(exc).splitlines()[0]}") from exc
    if labels is not None:
        names = labels if isinstance(labels, list) else read_labels(labels)
    elif "labels" in meta:
        names = [str(x) for x in meta["labels"]]
    else:
        raise DCTError(f"{path.name} needs class names: pass --labels FILE or put 'labels' in {sidecar.name}.")
    size = meta.get("input_size", [224, 224])
    defaults = Preprocess()
    preprocess = Preprocess(
        input_size=(int(size[0]), int(size[-1])) if isinstance(size, list) else (int(size), int(size)),
        crop_pct=float(meta.get("crop_pct", 1.0)),
        interpolation=meta.get("interpolation", "bilinear"),
        mean=tuple(meta.get("mean", defaults.mean)),
        std=tuple(meta.get("std", defaults.std)),
    )
    with torch.no_grad():
        width = module(torch.zeros(1, 3, *preprocess.input_size)).shape[-1]
    if width != len(names):
        raise DCTError(
            f"the labels list has {len(names)} names but {path.name} outputs {width} classes; "
            "give one name per class, in class-index order."
        )
    for p in module.parameters():
        p.requires_grad_(False)
    multi = bool(meta.get("multi_label", False)) if multi_label is None else multi_label
    return ImageClassifier(module, names, preprocess, name=f"torchscript:{path.name}", multi_label=multi)
