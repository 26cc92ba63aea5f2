"""Hugging Face transformers image classifiers (ViT, Swin, ConvNeXt, BEiT, ...) from a local folder.

Registers the classifier source for model folders that no other source takes (config.json with id2label).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import DCTError
from ..registry import NO_OPTIONS, ClassifierOptions, ClassifierSource, register_classifier_source
from .base import ImageClassifier
from .features import FeatureFn, head_input, last_linear
from .labels import check_label_count, labels_from, names_from_json
from .preprocess import Preprocess
from .text_files import existing_path, read_json_object, read_model_config

HEAD_NAMES = ("classifier", "cls_classifier", "head")  # where transformers models keep their classification head
_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}  # PIL codes used by image processors


def preprocess_from_folder(folder: Path, default_size: int = 224, default_mean=(0.5,) * 3, default_std=(0.5,) * 3):
    """The image processor's own settings (preprocessor_config.json), as a differentiable Preprocess."""
    path = folder / "preprocessor_config.json"
    cfg = read_json_object(path, "image processor config") if path.exists() else {}
    size = cfg.get("size", default_size)
    crop = cfg.get("crop_size")
    if isinstance(size, dict) and "shortest_edge" in size:
        short = int(size["shortest_edge"])
        if cfg.get("do_center_crop", crop is not None) and crop:
            crop_hw = (crop["height"], crop["width"]) if isinstance(crop, dict) else (crop, crop)
        else:
            crop_hw = (short, short)
        crop_pct = min(crop_hw) / short
    else:
        hw = (size["height"], size["width"]) if isinstance(size, dict) else (int(size), int(size))
        crop_hw, crop_pct = hw, 1.0
    return Preprocess(
        input_size=(int(crop_hw[0]), int(crop_hw[1])),
        crop_pct=float(cfg.get("crop_pct") or crop_pct),
        interpolation=_RESAMPLE.get(cfg.get("resample", 3), "bicubic"),
        mean=tuple(cfg.get("image_mean", default_mean)),
        std=tuple(cfg.get("image_std", default_std)),
    )


class HFLogits(torch.nn.Module):
    """Normalized images -> logits; ``pooling="mean"`` reads the mean of the patch tokens (ViT-MAE fine-tunes)
    through the final layer norm instead of the CLS token."""

    def __init__(self, model: torch.nn.Module, pooling: str = "cls"):
        super().__init__()
        self.model: Any = model  # a transformers model: its heads are attributes torch's typing cannot see
        self.pooling = pooling
        if pooling == "mean" and not hasattr(model, "vit"):
            raise DCTError("pooling=mean applies to ViT classifiers (ViTForImageClassification) only.")

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.pooling == "mean":
            vit = self.model.vit
            hidden = vit(pixel_values=pixel_values, output_hidden_states=True).hidden_states[-1]
            return self.model.classifier(vit.layernorm(hidden[:, 1:].mean(1)))
        return self.model(pixel_values=pixel_values).logits


def load_hf_classifier(folder: str | Path, labels=None, *, pooling: str = "cls", multi_label: bool | None = None):
    from transformers import AutoModelForImageClassification

    folder = Path(folder)
    try:
        model = AutoModelForImageClassification.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise DCTError(f"{folder} is not a loadable transformers image classifier: {str(exc).splitlines()[0]}") from exc
    config = model.config
    if labels is not None:
        names = labels_from(labels)
    else:
        names = names_from_json(config.id2label, f"id2label in {folder / 'config.json'}")
    check_label_count(names, config.num_labels, folder.name)
    if multi_label is None:
        multi_label = getattr(config, "problem_type", None) == "multi_label_classification"
    size = getattr(config, "image_size", 224)
    preprocess = preprocess_from_folder(folder, size if isinstance(size, int) else size[0])
    module = HFLogits(model.eval().requires_grad_(False), pooling).eval()
    return ImageClassifier(module, names, preprocess, name=f"transformers:{folder.name}", multi_label=multi_label)


def _is_model_folder(spec: str) -> bool:
    path = existing_path(spec)
    return path is not None and path.is_dir()


def _load(target: str, options: ClassifierOptions = NO_OPTIONS) -> ImageClassifier:
    folder = Path(target).expanduser()
    read_model_config(folder)  # a missing or unreadable config.json is reported as such
    return load_hf_classifier(folder, options.labels, pooling=options.pooling, multi_label=options.multi_label)


def _quick_labels(target: str, options: ClassifierOptions = NO_OPTIONS) -> list[str]:
    folder = Path(target).expanduser()
    cfg = read_model_config(folder)
    if "id2label" in cfg:
        return names_from_json(cfg["id2label"], f"id2label in {folder / 'config.json'}")
    raise DCTError(f"{folder.name} has no label names in its config; give a labels list.")


def hf_features(classifier: ImageClassifier) -> FeatureFn | None:
    """The input of the ``classifier`` head (the CLS token after the final norm for ViT, the pooled output for
    Swin/ConvNeXt/BEiT/ResNet), or with ``pooling="mean"`` the normalized mean patch token."""
    module = classifier.module
    if not isinstance(module, HFLogits):
        return None
    model = module.model
    if module.pooling == "mean":  # as HFLogits: the final norm of the mean patch token
        vit = model.vit

        def mean_patch(x: torch.Tensor) -> torch.Tensor:
            hidden = vit(pixel_values=x, output_hidden_states=True).hidden_states[-1]
            return vit.layernorm(hidden[:, 1:].mean(1))

        return mean_patch
    head = next((getattr(model, n) for n in HEAD_NAMES if isinstance(getattr(model, n, None), torch.nn.Module)), None)
    return head_input(module, head) if head is not None else last_linear(classifier)


register_classifier_source(ClassifierSource(
    None, _load, "any other model folder: a transformers image classifier (config.json with id2label)",
    name="transformers", matches=_is_model_folder, quick_labels=_quick_labels, features=hf_features,
    form="a timm or transformers model folder", priority=25,
))
