"""The class names of a classifier without loading its weights (fast: configs, labels files, file headers).

Used where a list must come back quickly (the ComfyUI class picker); the fallbacks are the loaders' own
(``resolve_names`` and friends), so both agree; `load_classifier` stays the authority.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import DCTError
from .labels import imagenet_labels, read_labels
from .timm_source import folder_label_names, folder_num_classes, head_width, resolve_names


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


def quick_labels(path: str | Path, *, kind: str = "auto", architecture: str = "", labels=None) -> list[str]:
    """Labels for a classifier at ``path`` as Load Classifier would resolve them (explicit labels first)."""
    if labels is not None:
        return labels if isinstance(labels, list) else read_labels(labels)
    path = Path(path)
    if kind == "zero-shot CLIP":
        return imagenet_labels()
    if path.is_dir():
        cfg = json.loads((path / "config.json").read_text())
        if "architecture" in cfg:
            return resolve_names(None, folder_num_classes(cfg), folder_label_names(cfg), cfg["architecture"])
        if "id2label" in cfg:
            return [cfg["id2label"][k] for k in sorted(cfg["id2label"], key=int)]
        raise DCTError(f"{path.name} has no label names in its config; give a labels list.")
    sidecar = path.with_suffix(path.suffix + ".json")
    if sidecar.is_file():
        meta = json.loads(sidecar.read_text())
        if "labels" in meta:
            return [str(x) for x in meta["labels"]]
    width = _header_width(path, architecture) if architecture else None
    return resolve_names(None, width or 1000, None, architecture or path.name)
