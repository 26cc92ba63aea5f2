"""Converting between the engine's images ([B, 3, H, W] in [0, 1]) and the host's IMAGE ([B, H, W, 3])."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def pil_to_host_image(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).unsqueeze(0)
