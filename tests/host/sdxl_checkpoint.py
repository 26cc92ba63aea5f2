"""A random-weight checkpoint the host detects as SDXL, built from the host's own modules (no download).

What ComfyUI 0.3.64's detection demands (comfy/model_detection.py ``detect_unet_config`` matched against
``comfy.supported_models.SDXL.unet_config``): UNet ``model_channels`` 320, linear transformer projections,
``context_dim`` 2048 (clip_l 768 + clip_g 1280), ``adm_in_channels`` 2816 (clip_g's pooled 1280 + six 256-wide size
embeddings) and the input-side transformer depths exactly ``[0, 0, 2, 2, 10, 10]``. The detection does not look at
the channel multipliers, the output-side transformer depths or the middle block, so those shrink: every level
stays 320 wide (real SDXL: 320/640/1280), the output blocks and the middle block have no transformer. That keeps
SDXL's geometry (three levels, two res blocks each, 24 input transformer blocks) in ~130 M UNet parameters.

The text encoders cannot shrink: ``SDXL.clip_target`` builds clip_l (768 wide, 12 layers) and clip_g (1280 wide,
32 layers, ~695 M parameters) from fixed configs whatever the file holds, and a layer missing from the file
would stay uninitialised (the host's ops skip weight init). So both are full size, randomly initialised here.
The VAE is TAESD-layout (key ``taesd_decoder.1.weight``, 4 latent channels, SDXL's scale 0.13025). All of it is
stored fp16: about 1.9 GB. Building takes about 30 s on two CPU cores, so the file is cached between runs
(:func:`cached_sdxl_checkpoint`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import torch

from .sd15_checkpoint import random_init_, taesd_state_dict

TINY_SDXL_UNET = {
    "use_checkpoint": False, "image_size": 32, "use_spatial_transformer": True, "legacy": False,
    "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4, "out_channels": 4, "model_channels": 320,
    "num_res_blocks": [2, 2, 2], "transformer_depth": [0, 0, 2, 2, 10, 10], "transformer_depth_output": [0] * 9,
    "channel_mult": [1, 1, 1], "transformer_depth_middle": -2, "use_linear_in_transformer": True,
    "context_dim": 2048, "use_temporal_resblock": False, "use_temporal_attention": False,
}
SDXL_VAE_SCALE = 0.13025  # comfy.latent_formats.SDXL.scale_factor
SEEDS = {"unet": 10, "clip": 11, "vae": 12}
BUILDER_VERSION = 1  # bump when the file this builds changes in any way
CACHE_ENV = "DCT_TEST_CACHE"


def build_sdxl_checkpoint(path: Path) -> Path:
    """Write the random SDXL-layout checkpoint (fp16) to ``path`` (cached_build makes the write atomic)."""
    import comfy.supported_models
    import comfy.utils

    config = comfy.supported_models.SDXL(dict(TINY_SDXL_UNET))
    config.set_inference_dtype(torch.float32, None)
    base = config.get_model({}, "", device=torch.device("cpu"))
    random_init_(base.diffusion_model, SEEDS["unet"])
    sd = {k: v.detach().half() for k, v in base.diffusion_model.state_dict().items()}
    del base
    clip = config.clip_target().clip(device="cpu", dtype=torch.float32)
    random_init_(clip, SEEDS["clip"])
    clip_sd = {k: (v.to(torch.int64) if k.endswith("position_ids") else v.detach().half())
               for k, v in clip.state_dict().items()}
    del clip
    vae_sd = taesd_state_dict(SEEDS["vae"])
    vae_sd["vae_scale"] = torch.tensor(SDXL_VAE_SCALE)
    # the host's own key layout for saving (UNet as is, clip_g in OpenCLIP layout, first_stage_model. prefix)
    saving = comfy.supported_models.SDXL(dict(TINY_SDXL_UNET))
    out = dict(saving.process_unet_state_dict_for_saving(sd))
    out.update(saving.process_clip_state_dict_for_saving(clip_sd))
    out.update(saving.process_vae_state_dict_for_saving(vae_sd))
    out = {k: (v.to(torch.int64) if k.endswith("position_ids") else v.half()).contiguous() for k, v in out.items()}
    comfy.utils.save_torch_file(out, str(path))
    return path


def cache_key(host_root: Path) -> str:
    """What the file depends on: this builder's settings and the host version whose modules build it."""
    version = (host_root / "comfyui_version.py").read_text() if (host_root / "comfyui_version.py").is_file() else ""
    blob = json.dumps([BUILDER_VERSION, TINY_SDXL_UNET, SDXL_VAE_SCALE, SEEDS, version, torch.__version__],
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cache_dir() -> Path:
    """$DCT_TEST_CACHE, else $XDG_CACHE_HOME/dct-tests (~/.cache/dct-tests)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dct-tests"


def cached_build(stem: str, key: str, build: Callable[[Path], object]) -> Path:
    """``<cache_dir>/<stem>-<key>.safetensors``, written there by ``build(path)`` first when missing (atomically: a
    partial file never has the name; older builds of the same stem are removed)."""
    folder = cache_dir()
    path = folder / f"{stem}-{key}.safetensors"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob(f"{stem}-*.safetensors"):
            old.unlink(missing_ok=True)
        partial = folder / f".{path.name}.{os.getpid()}.partial"
        try:
            build(partial)
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
    return path


def cached_sdxl_checkpoint(host_root: Path) -> Path:
    """The checkpoint from the cache, built there first when missing."""
    return cached_build("tiny_sdxl_random", cache_key(host_root), build_sdxl_checkpoint)
