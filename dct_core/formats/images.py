"""Saving images and side-by-side grids (PIL), atomically."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from .files import atomic_write


def to_pil(image: torch.Tensor) -> Image.Image:
    """[3, H, W] in [0, 1] -> RGB image."""
    array = (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(array)


def make_grid(rows: Sequence[torch.Tensor], min_cell: int = 128, pad: int = 2,
              row_labels: Sequence[str] | None = None) -> Image.Image:
    """One row per tensor [N, 3, H, W]; small images are scaled up (nearest) so the grid stays readable.
    ``row_labels`` puts a text column on the left, so the grid reads without the terminal."""
    cells = [[to_pil(img) for img in row] for row in rows]
    h, w = cells[0][0].height, cells[0][0].width
    scale = max(1, -(-min_cell // max(h, w)))
    h, w = h * scale, w * scale
    cols = max(len(r) for r in cells)
    label_w = 0
    if row_labels:
        label_w = 8 + 6 * max(len(line) for text in row_labels for line in text.splitlines())  # default font ~6 px
    grid = Image.new("RGB", (label_w + cols * (w + pad) + pad, len(cells) * (h + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for r, row in enumerate(cells):
        top = pad + r * (h + pad)
        if row_labels:
            draw.multiline_text((4, top + max(0, h // 2 - 12)), row_labels[r], fill=(0, 0, 0), spacing=2)
        for c, img in enumerate(row):
            grid.paste(img.resize((w, h), Image.Resampling.NEAREST), (label_w + pad + c * (w + pad), top))
    return grid


def save_image(image: Image.Image, path: str | os.PathLike) -> Path:
    """Write atomically, in the format the suffix names (PNG when unknown)."""
    path = Path(path)
    buffer = io.BytesIO()
    image.save(buffer, format=Image.registered_extensions().get(path.suffix.lower(), "PNG"))
    return atomic_write(path, buffer.getvalue())
