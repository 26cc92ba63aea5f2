"""Reading a user's weights file: safetensors first, plain tensors from pickles, never arbitrary code."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import DCTError
from ..formats.safe_load import WEIGHTS, read_tensors

_WRAPPERS = ("state_dict", "model", "model_state_dict", "ema")  # common training-checkpoint wrappers


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    data = read_tensors(path, WEIGHTS)
    for key in _WRAPPERS:
        if isinstance(data.get(key), dict):
            data = data[key]
            break
    if not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise DCTError(f"{path} holds no state dict of tensors; save the model's state_dict() as .safetensors.")
    return {k.removeprefix("module."): v for k, v in data.items()}
