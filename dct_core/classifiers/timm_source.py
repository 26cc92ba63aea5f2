"""timm classifiers: an architecture name plus a local weights file, or a folder in timm's hub layout
(config.json + model.safetensors). Weights are read without running pickled code."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import DCTError
from .base import ImageClassifier
from .labels import check_label_count, imagenet_labels, labels_from, names_from_json
from .preprocess import Preprocess
from .text_files import read_model_config
from .weights import read_state_dict


def head_width(heads, shapes: Mapping[str, Sequence[int]]) -> int | None:
    """Number of classes in a checkpoint (tensor name -> shape), from the head name(s) of a timm
    pretrained config (``pretrained_cfg["classifier"]``)."""
    for head in heads if isinstance(heads, (list, tuple)) else [heads]:
        shape = shapes.get(f"{head}.weight")
        if shape is not None:
            return int(shape[0])
    return None


def _check_name(model_name: str) -> None:
    import timm

    if not timm.is_model(model_name):
        close = timm.list_models(f"*{model_name.split('.')[0][:6]}*")[:5]
        hint = f"; similar names: {', '.join(close)}" if close else ""
        raise DCTError(f"timm has no architecture named {model_name!r}{hint}.")


def _load_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str, model_name: str) -> None:
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1:2] or [str(exc)[:200]]
        raise DCTError(f"weights {source} do not fit timm model {model_name!r}: {first[0].strip()}") from exc


def resolve_names(labels, num_classes: int, fallback: list[str] | None, model_name: str) -> list[str]:
    """Explicit labels (list or file), else the checkpoint's own names, else ImageNet for 1000 classes, else
    numbered classes; the count must match the classifier's outputs."""
    if labels is not None:
        names = labels_from(labels)
    elif fallback:
        names = fallback
    elif num_classes == 1000:
        names = imagenet_labels()
    else:
        names = [f"class {i}" for i in range(num_classes)]
    return check_label_count(names, num_classes, model_name)


def load_timm_classifier(
    model_name: str, weights: str | Path | None = None, labels: str | Path | list[str] | None = None,
    *, multi_label: bool = False,
) -> ImageClassifier:
    import timm

    _check_name(model_name)
    state = read_state_dict(weights) if weights is not None else None
    probe: Any = timm.create_model(model_name, pretrained=False)
    shapes = {k: v.shape for k, v in state.items()} if state is not None else {}
    num_classes = head_width(probe.pretrained_cfg.get("classifier", "head"), shapes) or probe.num_classes
    if num_classes == probe.num_classes:
        model = probe
    else:
        model = timm.create_model(model_name, pretrained=False, num_classes=num_classes)
    if state is not None:
        _load_weights(model, state, str(weights), model_name)
    names = resolve_names(labels, num_classes, None, model_name)
    model.eval().requires_grad_(False)
    return ImageClassifier(model, names, Preprocess.from_timm(model), name=f"timm:{model_name}",
                           multi_label=multi_label)


def folder_num_classes(cfg: dict) -> int:
    count = cfg.get("num_classes", cfg.get("pretrained_cfg", {}).get("num_classes", 1000))
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise DCTError(f"'num_classes' in config.json must be a positive whole number, not {count!r}.")
    return count


def folder_label_names(cfg: dict) -> list[str] | None:
    """Label names a timm hub config carries; descriptions ("tabby, tabby cat") resolve better than ids."""
    names = cfg.get("label_names") or cfg.get("pretrained_cfg", {}).get("label_names")
    if not names:
        return None
    names = names_from_json(names, "label_names in config.json")
    descriptions = cfg.get("label_descriptions")
    if isinstance(descriptions, dict):
        names = [str(descriptions.get(n, n)) for n in names]
    return names


def load_timm_folder(folder: str | Path, labels=None, *, multi_label: bool = False) -> ImageClassifier:
    """A folder as timm writes it for the hub: config.json (architecture, num_classes, pretrained_cfg,
    optional label_names / model_args) and model.safetensors (or pytorch_model.bin)."""
    import timm

    folder = Path(folder)
    cfg = read_model_config(folder)
    arch = cfg["architecture"]
    _check_name(arch)
    num_classes = folder_num_classes(cfg)
    names = resolve_names(labels, num_classes, folder_label_names(cfg), arch)  # cheap checks before the weights
    weights = next((folder / n for n in ("model.safetensors", "pytorch_model.bin") if (folder / n).is_file()), None)
    if weights is None:
        raise DCTError(f"{folder} has a timm config.json but no model.safetensors or pytorch_model.bin.")
    model_args = {**cfg.get("model_args", {}), "num_classes": num_classes}
    model = timm.create_model(arch, pretrained=False, pretrained_cfg_overlay=cfg.get("pretrained_cfg", {}),
                              **model_args)
    _load_weights(model, read_state_dict(weights), str(weights), arch)
    model.eval().requires_grad_(False)
    return ImageClassifier(model, names, Preprocess.from_timm(model), name=f"timm:{folder.name}",
                           multi_label=multi_label)
