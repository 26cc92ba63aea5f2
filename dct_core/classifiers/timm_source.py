"""timm classifiers: an architecture name plus a local weights file, loaded without running pickled code."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import DCTError
from .base import ImageClassifier
from .labels import imagenet_labels, read_labels
from .preprocess import Preprocess
from .weights import read_state_dict


def _head_width(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> int | None:
    """Number of classes in the checkpoint, from the head named in the model's pretrained config."""
    heads = model.pretrained_cfg.get("classifier", "head")
    for head in heads if isinstance(heads, (list, tuple)) else [heads]:
        weight = state.get(f"{head}.weight")
        if weight is not None:
            return int(weight.shape[0])
    return None


def load_timm_classifier(
    model_name: str, weights: str | Path | None = None, labels: str | Path | list[str] | None = None
) -> ImageClassifier:
    import timm

    if not timm.is_model(model_name):
        close = timm.list_models(f"*{model_name.split('.')[0][:6]}*")[:5]
        hint = f"; similar names: {', '.join(close)}" if close else ""
        raise DCTError(f"timm has no architecture named {model_name!r}{hint}.")
    state = read_state_dict(weights) if weights is not None else None
    probe = timm.create_model(model_name, pretrained=False)
    num_classes = (_head_width(probe, state) if state is not None else None) or probe.num_classes
    if num_classes == probe.num_classes:
        model = probe
    else:
        model = timm.create_model(model_name, pretrained=False, num_classes=num_classes)
    if state is not None:
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            first = str(exc).splitlines()[1:2] or [str(exc)[:200]]
            raise DCTError(f"weights {weights} do not fit timm model {model_name!r}: {first[0].strip()}") from exc
    if isinstance(labels, list):
        names = labels
    elif labels is not None:
        names = read_labels(labels)
    elif num_classes == 1000:
        names = imagenet_labels()
    else:
        names = [f"class {i}" for i in range(num_classes)]
    if len(names) != num_classes:
        raise DCTError(
            f"the labels list has {len(names)} names but the classifier {model_name!r} outputs {num_classes} "
            "classes; give a labels file with one name per class, in class-index order."
        )
    model.eval().requires_grad_(False)
    return ImageClassifier(model, names, Preprocess.from_timm(model), name=f"timm:{model_name}")
