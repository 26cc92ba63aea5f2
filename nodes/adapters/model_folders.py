"""Model folders the pack uses: classifiers (registered by the host with no extensions), embeddings.

Only regular files, and model folders, that resolve (realpath) inside the host's classifiers folders are offered
and loaded: a link inside them to a file inside them is fine; a link pointing outside is refused (add that folder
to extra_model_paths.yaml instead).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)
_warned: set[str] = set()  # names already logged as linking outside

CLASSIFIER_EXTENSIONS = {".safetensors", ".pt", ".pth", ".bin", ".ts", ".torchscript", ".txt", ".json"}


def register_classifier_folder() -> None:
    """Widen the host's ``classifiers`` entry to our file types, keeping every path already registered
    (extra_model_paths.yaml is read before packs load)."""
    import folder_paths

    default = str(Path(folder_paths.models_dir) / "classifiers")
    paths, extensions = folder_paths.folder_names_and_paths.get("classifiers", ([default], set()))
    folder_paths.folder_names_and_paths["classifiers"] = (list(paths), set(extensions) | CLASSIFIER_EXTENSIONS)


def _roots() -> list[str]:
    """The host's classifiers folders, resolved (extra_model_paths.yaml ones included)."""
    import folder_paths

    return [os.path.realpath(p) for p in folder_paths.get_folder_paths("classifiers")]


def _inside(path: str, roots: list[str]) -> bool:
    real = os.path.realpath(path)
    return any(real == root or real.startswith(root.rstrip(os.sep) + os.sep) for root in roots)


def _warn_outside(name: str) -> None:
    if name not in _warned and len(_warned) < 1000:
        _warned.add(name)
        log.warning("DCT: models/classifiers entry %r links outside the classifiers folders; not offered. "
                    "Add its folder to extra_model_paths.yaml (classifiers:) instead of linking it.", name)


def _served(name: str, roots: list[str]) -> str | None:
    """The full path of a listed name if it is a regular file resolving inside the classifiers folders (a link to
    a file inside them is fine), else None."""
    import folder_paths

    path = folder_paths.get_full_path("classifiers", name)
    if path is None or not os.path.isfile(os.path.realpath(path)):
        return None
    if not _inside(path, roots):
        _warn_outside(name)
        return None
    return path


def _listing() -> tuple[list[str], set[str]]:
    """All names under models/classifiers, and those not to be served (links out, odd files)."""
    import folder_paths

    roots = _roots()
    files = folder_paths.get_filename_list("classifiers")
    refused = {f for f in files if _served(f, roots) is None}
    return files, refused


def sidecars(name: str) -> list[str]:
    """A TorchScript file's JSON sidecars: <file>.json, <stem>.json."""
    return [name + ".json", str(Path(name).with_suffix(".json"))]


def _model_folders(files: list[str]) -> list[str]:
    return sorted({str(Path(f).parent) + "/" for f in files if Path(f).name == "config.json"})


def classifier_choices() -> list[str]:
    """Weight files and model folders (a folder holding config.json) under models/classifiers; only what resolves
    inside the classifiers folders (a folder: every file in it; a file: it and its <file>.json sidecar)."""
    files, refused = _listing()
    all_folders = _model_folders(files)
    folders = [d for d in all_folders if not any(f.startswith(d) for f in refused)]
    weights = [f for f in files if Path(f).suffix not in (".txt", ".json") and f not in refused
               and not refused.intersection(sidecars(f)) and not any(f.startswith(d) for d in all_folders)]
    return folders + weights


def label_files() -> list[str]:
    files, refused = _listing()
    return [f for f in files if Path(f).suffix in (".txt", ".json") and f not in refused
            and Path(f).name != "config.json" and not f.endswith("preprocessor_config.json")]


def label_path(name: str) -> str:
    """The full path of a labels file from label_files."""
    path = _served(name, _roots())
    if path is None:
        raise ValueError(f"labels file {name!r} not found under models/classifiers (links to outside them are "
                         "not followed); refresh the page.")
    return path


def classifier_path(name: str) -> str:
    """The full path of a choice from classifier_choices (a folder ends in '/'); a name that is missing or
    resolves outside the classifiers folders is refused."""
    import folder_paths

    roots = _roots()
    if name.endswith("/"):
        config = folder_paths.get_full_path("classifiers", name + "config.json")
        if config is None:
            raise ValueError(f"classifier folder {name!r} not found under models/classifiers; refresh the page.")
        folder = str(Path(config).parent)
        files, refused = _listing()
        if not _inside(folder, roots) or any(f.startswith(name) for f in refused):
            _warn_outside(name)
            raise ValueError(f"classifier folder {name!r} links outside the classifiers folders; not loaded.")
        return folder
    path = folder_paths.get_full_path("classifiers", name)
    if path is None:
        raise ValueError(f"classifier {name!r} not found under models/classifiers; refresh the page.")
    if _served(name, roots) is None or any(os.path.lexists(p) and not _inside(p, roots) for p in sidecars(path)):
        raise ValueError(f"classifier {name!r} (or its .json sidecar) links outside the classifiers folders; "
                         "not loaded.")
    return path


def embeddings_dir() -> Path:
    import folder_paths

    return Path(folder_paths.get_folder_paths("embeddings")[0])


def embedding_choices() -> list[str]:
    import folder_paths

    files = folder_paths.get_filename_list("embeddings")
    return [f for f in files if Path(f).suffix in (".safetensors", ".pt", ".bin")]
