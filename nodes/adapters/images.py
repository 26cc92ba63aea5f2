"""Converting between the engine's images ([B, 3, H, W] in [0, 1]) and the host's IMAGE ([B, H, W, 3])."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def pil_to_host_image(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).unsqueeze(0)


def captioned(image: Image.Image, text: str) -> Image.Image:
    """The image with a caption strip on top (the node's progress preview shows loss and accuracy this way)."""
    from PIL import ImageDraw

    strip = 18
    out = Image.new("RGB", (image.width, image.height + strip), (255, 255, 255))
    out.paste(image.convert("RGB"), (0, strip))
    ImageDraw.Draw(out).text((4, 3), text, fill=(0, 0, 0))
    return out
