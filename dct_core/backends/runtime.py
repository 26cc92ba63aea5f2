"""Device and precision choices."""

from __future__ import annotations

import torch

from ..errors import DCTError

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise DCTError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N.") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DCTError("--device cuda was asked for but no CUDA GPU is available; use --device cpu.")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """auto: fp32 on CPU; on GPU bf16 where supported (no fp16 overflow in the SDXL VAE), else fp16."""
    if name == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if name not in _DTYPES:
        raise DCTError(f"unknown dtype {name!r}; use auto, fp32, fp16 or bf16.")
    if device.type == "cpu" and name == "fp16":
        raise DCTError("fp16 is not supported on the CPU; use --dtype fp32 (or bf16).")
    return _DTYPES[name]
