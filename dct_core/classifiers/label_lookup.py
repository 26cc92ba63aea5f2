"""The class names of a classifier without loading its weights (fast: configs, labels files, file headers).

Used where a list must come back quickly (the ComfyUI class picker); the fallbacks are the loaders' own
(``resolve_names`` and friends), so both agree; `load_classifier` stays the authority. Nothing here runs a
file's code: TorchScript labels come from the explicit list or the JSON sidecar, never from the module.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DCTError
from .labels import imagenet_labels, labels_from, names_from_json
from .text_files import folder_kind
from .timm_source import folder_label_names, folder_num_classes, head_width, resolve_names
from .torchscript_source import is_torchscript, torchscript_labels


def _header_width(weights: Path, architecture: str) -> int | None:
    """Rows of the classifier head in a .safetensors file, read from its header only."""
    if weights.suffix != ".safetensors":
        return None
    import timm
    from safetensors import safe_open

    cfg = timm.models.get_pretrained_cfg(architecture) if timm.is_model(architecture) else None
    with safe_open(str(weights), framework="pt") as f:
        shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}
    return head_width(cfg.classifier if cfg is not None else "head", shapes)


def _folder_labels(folder: Path) -> list[str]:
    kind, cfg = folder_kind(folder)
    if kind == "timm":
        return resolve_names(None, folder_num_classes(cfg), folder_label_names(cfg), cfg["architecture"])
    if kind == "clip":
        raise DCTError(f"{folder.name} is a CLIP model; choose kind = zero-shot CLIP.")
    if "id2label" in cfg:
        return names_from_json(cfg["id2label"], f"id2label in {folder / 'config.json'}")
    raise DCTError(f"{folder.name} has no label names in its config; give a labels list.")


def quick_labels(path: str | Path, *, kind: str = "auto", architecture: str = "", labels=None) -> list[str]:
    """Labels for a classifier at ``path`` as Load Classifier would resolve them (explicit labels first)."""
    if labels is not None:
        return labels_from(labels)
    path = Path(path)
    if kind == "zero-shot CLIP":
        return imagenet_labels()
    if path.is_dir():
        return _folder_labels(path)
    if not architecture and is_torchscript(path):
        return torchscript_labels(path)
    width = _header_width(path, architecture) if architecture else None
    return resolve_names(None, width or 1000, None, architecture or path.name)
