"""Reading a user's weights file: safetensors first, plain tensors from pickles, never arbitrary code."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from ..errors import DCTError


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise DCTError(f"weights file {path} does not exist.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors has its own error types for corrupt headers
            raise DCTError(f"{path} is not a readable .safetensors file ({exc}).") from exc
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, EOFError, ValueError) as exc:
        raise DCTError(
            f"{path} cannot be loaded safely: it is not a plain tensor checkpoint and running the code a pickle "
            "may hold is refused. Convert it once, in an environment you trust, with "
            "safetensors.torch.save_file(model.state_dict(), 'weights.safetensors')."
        ) from exc
    for key in ("state_dict", "model", "model_state_dict", "ema"):  # common training-checkpoint wrappers
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
            break
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise DCTError(f"{path} holds no state dict of tensors; save the model's state_dict() as .safetensors.")
    return {k.removeprefix("module."): v for k, v in data.items()}
