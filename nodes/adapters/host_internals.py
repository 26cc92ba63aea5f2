"""Every ComfyUI internal the pack touches (``comfy.*``), each behind a feature check.

The host users run is newer than the one the pack is tested on; internals move. Nothing here imports the
host at import time: each internal is looked up when first used, and a missing or changed one raises one
``HostMismatch`` naming what is missing, this host's version and the versions the pack supports, so the node
fails with a message instead of the pack failing to import. ``missing()`` lists them all at once (tests and the
startup log). The public custom-node API (``folder_paths``, ``server.PromptServer``, ``comfy_api``) is used
directly where needed; ``node_api`` pins the node API version.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from dct_core.errors import DCTError

from .node_api import SUPPORTED_HOSTS

TESTED_HOST = "ComfyUI 0.3.64"
TESTED_FRONTENDS = "comfyui-frontend-package 1.27.10 (0.3.64's own) and 1.58.1"

# name -> (module, attribute path, what the pack uses it for)
INTERNALS: dict[str, tuple[str, str, str]] = {
    "Sampler": ("comfy.samplers", "Sampler", "the sampler that takes the training step's last steps with gradient"),
    "KSamplerX0Inpaint": ("comfy.samplers", "KSamplerX0Inpaint", "the denoiser call inside that sampler"),
    "CFGGuider": ("comfy.samplers", "CFGGuider", "sampling with the user's patches, LoRAs and CFG"),
    "KSampler": ("comfy.samplers", "KSampler", "sampler and scheduler names, and sigmas"),
    "sampler_object": ("comfy.samplers", "sampler_object", "the host's sampler for the steps without gradient"),
    "sampling_function": ("comfy.samplers", "sampling_function", "DATE's guided x0 prediction"),
    "prepare_noise": ("comfy.sample", "prepare_noise", "the same noise for a seed as KSampler"),
    "get_torch_device": ("comfy.model_management", "get_torch_device", "the device to train on"),
    "load_models_gpu": ("comfy.model_management", "load_models_gpu", "loading the VAE for decoding"),
    "processing_interrupted": ("comfy.model_management", "processing_interrupted", "Cancel"),
    "throw_exception_if_processing_interrupted": ("comfy.model_management",
                                                  "throw_exception_if_processing_interrupted", "Cancel"),
    "ProgressBar": ("comfy.utils", "ProgressBar", "progress and previews on the node"),
    "repeat_to_batch_size": ("comfy.utils", "repeat_to_batch_size", "one DATE conditioning per image"),
    "CONDCrossAttn": ("comfy.conds", "CONDCrossAttn", "DATE's updated conditioning"),
    "CLIPLayer": ("comfy.clip_model", "CLIPLayer", "an autograd-safe text encoder forward while training"),
    "SDTokenizer": ("comfy.sd1_clip", "SDTokenizer", "teaching the tokenizer the class token"),
    "TAESD": ("comfy.taesd.taesd", "TAESD", "the TAESD decoder for the training signal"),
    "PREDICT_NOISE": ("comfy.patcher_extension", "WrappersMP.PREDICT_NOISE", "DATE's sampling wrapper"),
}


class HostMismatch(DCTError):
    """The running ComfyUI lacks an internal the pack needs (or it changed shape)."""


def host_version() -> str:
    try:
        return "ComfyUI " + importlib.import_module("comfyui_version").__version__
    except (ImportError, AttributeError):
        return "a ComfyUI of unknown version"


def _mismatch(what: str, why: str) -> HostMismatch:
    return HostMismatch(
        f"{host_version()} has no {what}, which the Discriminative Class Tokens pack needs for {why}. The pack "
        f"supports {SUPPORTED_HOSTS}; update the pack (ComfyUI-Manager), or report your ComfyUI version to the "
        "pack's issue tracker.")


def require(name: str) -> Any:
    """The host internal ``name`` (a key of INTERNALS), or HostMismatch."""
    module_name, path, why = INTERNALS[name]
    try:
        obj: Any = importlib.import_module(module_name)
        for part in path.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise _mismatch(f"{module_name}.{path}", why) from exc
    return obj


def missing() -> list[str]:
    """The internals this host lacks, as 'module.attribute' (empty on a supported host)."""
    out = []
    for name, (module_name, path, _) in INTERNALS.items():
        try:
            require(name)
        except HostMismatch:
            out.append(f"{module_name}.{path}")
    return out


def log_missing() -> None:
    gone = missing()
    if gone:
        logging.warning("[DCT] %s lacks %s; the pack's nodes that need them will stop with a message. The pack "
                        "supports %s.", host_version(), ", ".join(gone), SUPPORTED_HOSTS)


# --- the internals, by what the pack does with them -------------------------------------------------------

def sampler_names() -> list[str]:
    return list(require("KSampler").SAMPLERS)


def scheduler_names() -> list[str]:
    return list(require("KSampler").SCHEDULERS)


def torch_device():
    return require("get_torch_device")()


def load_models(patchers: list) -> None:
    require("load_models_gpu")(patchers)


def interrupted() -> bool:
    return bool(require("processing_interrupted")())


def throw_if_interrupted() -> None:
    require("throw_exception_if_processing_interrupted")()


def interrupt_exceptions() -> tuple[type[BaseException], ...]:
    """The exception the host raises for Cancel (mid-forward since 2026 hosts check it in every op)."""
    import comfy.model_management as mm

    kind = getattr(mm, "InterruptProcessingException", None)
    return (kind,) if isinstance(kind, type) and issubclass(kind, BaseException) else ()


def progress_bar(total: int, node_id):
    return require("ProgressBar")(total, node_id=node_id)


def clip_layer_class() -> Any:
    layer = require("CLIPLayer")
    if not callable(getattr(layer, "forward", None)):
        raise _mismatch("comfy.clip_model.CLIPLayer.forward", INTERNALS["CLIPLayer"][2])
    return layer


@contextmanager
def training_flag() -> Iterator[None]:
    """``comfy.model_management.in_training`` on for the duration where the host has it (2026 cores: fused
    in-place kernels switch to autograd-safe ones, as core's own trainer sets it); 0.3.64 has no such flag."""
    try:
        import comfy.model_management as mm
    except ImportError:  # the engine used without a host
        yield
        return
    if not hasattr(mm, "in_training"):
        yield
        return
    before = mm.in_training
    mm.in_training = True
    try:
        yield
    finally:
        mm.in_training = before
