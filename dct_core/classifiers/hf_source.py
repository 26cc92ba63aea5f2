"""Hugging Face transformers image classifiers (ViT, Swin, ConvNeXt, BEiT, ...) from a local folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import DCTError
from .base import ImageClassifier
from .labels import check_label_count, labels_from, names_from_json
from .preprocess import Preprocess
from .text_files import read_json_object

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
