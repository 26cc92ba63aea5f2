"""The class names of a classifier without loading its weights (fast: configs, labels files, file headers).

Used where a list must come back quickly (the ComfyUI class picker); `load_classifier` stays the authority.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import DCTError
from .labels import imagenet_labels, read_labels


def _head_width(weights: Path, architecture: str) -> int | None:
    """Rows of the classifier head in a .safetensors file, read from its header only."""
    if weights.suffix != ".safetensors":
        return None
    import timm
    from safetensors import safe_open

    heads = timm.models.get_pretrained_cfg(architecture.split("@")[0]) if timm.is_model(architecture) else None
    names = heads.classifier if heads is not None else "head"
    names = names if isinstance(names, (list, tuple)) else [names]
    with safe_open(str(weights), framework="pt") as f:
        keys = set(f.keys())
        for name in names:
            if f"{name}.weight" in keys:
                return int(f.get_slice(f"{name}.weight").get_shape()[0])
    return None


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
            names = cfg.get("label_names") or cfg.get("pretrained_cfg", {}).get("label_names")
            if names:
                return list(names)
            return imagenet_labels() if cfg.get("num_classes", 1000) == 1000 else [
                f"class {i}" for i in range(cfg["num_classes"])]
        if "id2label" in cfg:
            return [cfg["id2label"][k] for k in sorted(cfg["id2label"], key=int)]
        raise DCTError(f"{path.name} has no label names in its config; give a labels list.")
    sidecar = path.with_suffix(path.suffix + ".json")
    if sidecar.is_file():
        meta = json.loads(sidecar.read_text())
        if "labels" in meta:
            return [str(x) for x in meta["labels"]]
    width = _head_width(path, architecture) if architecture else None
    if width is None or width == 1000:
        return imagenet_labels()
    return [f"class {i}" for i in range(width)]
