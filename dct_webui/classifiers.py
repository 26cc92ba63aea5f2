"""Classifiers and labels files from the webui's models/classifiers folder: the same forms and safety rules as the
ComfyUI Load Classifier node (only what resolves inside the folder; TorchScript only with its switch; a plain timm
weights file with its architecture name), and a labels file chosen by name, by default
``<classifier file name without extension>.labels.txt`` when one exists."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path

from dct_core.classifiers import Classifier, load_classifier
from dct_core.classifiers.label_lookup import quick_labels
from dct_core.errors import DCTError
from dct_core.registry import AUTO_KIND, node_spec

from . import host

LABEL_SUFFIXES = (".txt", ".json")
DEFAULT_LABELS_SUFFIX = ".labels.txt"
_CACHE: OrderedDict[tuple, Classifier] = OrderedDict()  # the last few loaded classifiers (DATE runs every image)
_CACHE_SIZE = 2
_cache_lock = threading.Lock()


def folder() -> Path:
    """models/classifiers (created when missing, so the user sees where files go)."""
    path = Path(host.require("models_path")) / "classifiers"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _inside(path: Path, root: Path) -> bool:
    real, base = os.path.realpath(path), os.path.realpath(root)
    return real == base or real.startswith(base.rstrip(os.sep) + os.sep)


def _entries(root: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        for name in sorted(filenames):
            out.append(Path(dirpath) / name)
    return [p for p in out if _inside(p, root) and p.is_file()]


def _is_label_file(p: Path) -> bool:
    return p.suffix in LABEL_SUFFIXES and p.name != "config.json" and not p.name.endswith("preprocessor_config.json")


def choices(root: Path | None = None) -> list[str]:
    """Model folders (holding config.json, named with a trailing '/') and weight files, relative to the folder."""
    root = root or folder()
    files = _entries(root)
    folders = sorted({str(p.parent.relative_to(root)) + "/" for p in files if p.name == "config.json"})
    weights = [str(p.relative_to(root)) for p in files if p.suffix not in LABEL_SUFFIXES
               and not any(str(p.relative_to(root)).startswith(d) for d in folders)]
    return folders + weights


def label_choices(root: Path | None = None) -> list[str]:
    root = root or folder()
    return [str(p.relative_to(root)) for p in _entries(root) if _is_label_file(p)]


def default_labels(classifier: str, root: Path | None = None) -> str:
    """``<classifier without extension>.labels.txt`` when it exists next to it, else "" (the model's own)."""
    if not classifier:
        return ""
    name = classifier.rstrip("/")
    candidate = str(Path(name).with_suffix("")) + DEFAULT_LABELS_SUFFIX if not classifier.endswith("/") \
        else name + DEFAULT_LABELS_SUFFIX
    return candidate if candidate in label_choices(root) else ""


def resolve(name: str, what: str, root: Path | None = None) -> Path:
    """The full path of ``name`` under models/classifiers, refusing what is missing or resolves outside it."""
    root = root or folder()
    if not name:
        raise DCTError(f"no {what} chosen: pick one from models/classifiers ({root}).")
    if os.path.isabs(name):
        raise DCTError(f"{what} {name!r}: give a name from models/classifiers ({root}), not a full path.")
    path = root / name.rstrip("/")
    if not os.path.lexists(path):
        raise DCTError(f"{what} {name!r} not found in {root}; put it there and press refresh.")
    if not _inside(path, root):
        raise DCTError(f"{what} {name!r} links outside {root}; not loaded (put the file itself there).")
    if path.is_dir():
        for p in path.rglob("*"):
            if not _inside(p, root):
                raise DCTError(f"{what} {name!r} holds a link outside {root}; not loaded.")
    for sidecar in (Path(str(path) + ".json"), path.with_suffix(".json")):
        if os.path.lexists(sidecar) and not _inside(sidecar, root):
            raise DCTError(f"{what} {name!r} has a .json sidecar linking outside {root}; not loaded.")
    return path


def labels_for(classifier: str, architecture: str = "", labels: str = "", root: Path | None = None) -> list[str]:
    """The class names the picker searches: from the labels file (given or default), else the model's own."""
    labels = labels or default_labels(classifier, root)
    label_path = resolve(labels, "labels file", root) if labels else None
    path = resolve(classifier, "classifier", root)
    return quick_labels(path, kind=AUTO_KIND, architecture=architecture.strip(),
                        labels=str(label_path) if label_path else None)


def load(classifier: str, architecture: str = "", labels: str = "", *, allow_torchscript: bool = False,
         root: Path | None = None) -> Classifier:
    """The classifier, loaded offline (kept for the next call with the same files and switches)."""
    labels = labels or default_labels(classifier, root)
    path = resolve(classifier, "classifier", root)
    label_path = resolve(labels, "labels file", root) if labels else None
    stamp = tuple(os.path.getmtime(p) for p in (path, label_path) if p is not None)
    key = (str(path), architecture.strip(), str(label_path), allow_torchscript, stamp)
    with _cache_lock:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    spec = node_spec(AUTO_KIND, str(path), architecture.strip())
    model = load_classifier(spec, labels=str(label_path) if label_path else None, trust_code=allow_torchscript)
    with _cache_lock:
        _CACHE[key] = model
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return model
