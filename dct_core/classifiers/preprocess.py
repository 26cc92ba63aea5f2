"""Differentiable preprocessing to a classifier's own input: resize, center crop, normalize."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Preprocess:
    input_size: tuple[int, int] = (224, 224)
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    @classmethod
    def from_timm(cls, model: torch.nn.Module) -> Preprocess:
        from timm.data import resolve_data_config

        cfg = resolve_data_config({}, model=model)
        interp = cfg.get("interpolation", "bicubic")
        return cls(
            input_size=tuple(cfg["input_size"][1:]),
            crop_pct=float(cfg.get("crop_pct", 1.0) or 1.0),
            interpolation=interp if interp in ("bilinear", "bicubic", "nearest") else "bicubic",
            mean=tuple(cfg["mean"]),
            std=tuple(cfg["std"]),
        )

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [0, 1] -> normalized [B, 3, h, w]; gradients pass to ``images``."""
        h, w = self.input_size
        scale = max(h, w) / self.crop_pct
        short = min(images.shape[-2:])
        ratio = math.floor(scale) / short
        size = (max(h, round(images.shape[-2] * ratio)), max(w, round(images.shape[-1] * ratio)))
        if size != tuple(images.shape[-2:]):
            kwargs = {"antialias": True, "align_corners": False} if self.interpolation != "nearest" else {}
            images = F.interpolate(images, size=size, mode=self.interpolation, **kwargs)
        top, left = (images.shape[-2] - h) // 2, (images.shape[-1] - w) // 2
        images = images[..., top : top + h, left : left + w]
        mean = torch.tensor(self.mean, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
        return (images - mean) / std

    def describe(self) -> str:
        return (
            f"input {self.input_size[0]}x{self.input_size[1]}, crop_pct {self.crop_pct}, {self.interpolation}, "
            f"mean {tuple(round(m, 4) for m in self.mean)}, std {tuple(round(s, 4) for s in self.std)}"
        )
