"""Random-weight checkpoints the host detects as SD1.5, built from the host's own modules (no download).

Used by the host tests (``tests/host/conftest.py``) and by ``bench/host_step.py``. The host's model detection
demands the real SD1.5 widths (UNet ``model_channels`` 320 and ``context_dim`` 768, the full CLIP-L text
encoder); everything else shrinks: one UNet level, one res block, one transformer block, no middle block.
The VAE is either TAESD-layout (about 1 M parameters, the tests' choice) or the real SD1.5 KL autoencoder
(84 M parameters, for measuring the checkpoint VAE as the training signal).
"""

from __future__ import annotations

from pathlib import Path

import torch

TINY_UNET = {
    "use_checkpoint": False, "image_size": 32, "use_spatial_transformer": True, "legacy": False,
    "adm_in_channels": None, "in_channels": 4, "out_channels": 4, "model_channels": 320,
    "num_res_blocks": [1], "transformer_depth": [1], "transformer_depth_output": [1, 1], "channel_mult": [1],
    "transformer_depth_middle": -2, "use_linear_in_transformer": False, "context_dim": 768,
    "use_temporal_resblock": False, "use_temporal_attention": False,
}
SD_VAE = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
          "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}


def random_init_(module: torch.nn.Module, seed: int) -> None:
    """The host's ops skip weight init; use torch's own reset_parameters everywhere (seeded)."""
    torch.manual_seed(seed)
    covered = set()
    for m in module.modules():
        for cls in type(m).__mro__:
            if cls.__module__.startswith("torch.nn") and "reset_parameters" in cls.__dict__:
                cls.reset_parameters(m)
                covered.update(id(p) for p in m.parameters(recurse=False))
                break
    with torch.no_grad():
        for p in module.parameters():
            if id(p) not in covered and p.ndim:
                p.normal_(0.0, 0.02)


def taesd_state_dict(seed: int = 2) -> dict[str, torch.Tensor]:
    import comfy.taesd.taesd

    taesd = comfy.taesd.taesd.TAESD(latent_channels=4)
    random_init_(taesd, seed)
    sd = taesd.state_dict()
    sd["vae_scale"], sd["vae_shift"] = torch.tensor(0.18215), torch.tensor(0.0)
    return sd


def kl_vae_state_dict(seed: int = 3) -> dict[str, torch.Tensor]:
    """The SD1.5 KL autoencoder's layout (what ``CheckpointLoaderSimple`` loads as a real SD VAE)."""
    from comfy.ldm.models.autoencoder import AutoencoderKL

    vae = AutoencoderKL(ddconfig=dict(SD_VAE), embed_dim=4)
    random_init_(vae, seed)
    return vae.state_dict()


def build_sd15_checkpoint(path: Path, *, unet: dict | None = None, vae: str = "taesd") -> Path:
    """Write a random SD1.5-layout checkpoint (fp16) to ``path``: the tiny UNet (or ``unet``, a host UNet
    config), full CLIP-L, and a TAESD-layout (``vae="taesd"``) or SD KL (``vae="kl"``) VAE."""
    import comfy.supported_models
    import comfy.utils

    config = comfy.supported_models.SD15(dict(unet or TINY_UNET))
    config.set_inference_dtype(torch.float32, None)
    base = config.get_model({}, "", device=torch.device("cpu"))
    random_init_(base.diffusion_model, 0)
    clip = config.clip_target().clip(device="cpu", dtype=torch.float32)
    random_init_(clip, 1)
    vae_sd = taesd_state_dict() if vae == "taesd" else kl_vae_state_dict()
    sd = base.state_dict_for_saving(clip.state_dict(), vae_sd)
    sd = {k: (v.to(torch.int64) if k.endswith("position_ids") else v.detach().half()).contiguous()
          for k, v in sd.items()}
    comfy.utils.save_torch_file(sd, str(path))
    return path


def write_taesd_decoder(path: Path, seed: int = 4) -> Path:
    """A random TAESD decoder file as models/vae_approx holds them (``taesd_decoder.safetensors``)."""
    import comfy.taesd.taesd
    from safetensors.torch import save_file

    taesd = comfy.taesd.taesd.TAESD(latent_channels=4)
    random_init_(taesd, seed)
    save_file({k: v.contiguous() for k, v in taesd.taesd_decoder.state_dict().items()}, str(path))
    return path
