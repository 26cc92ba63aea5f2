"""Differentiable TAESD decoders from models/vae_approx: a cheap training signal (about 1 M parameters), and the
stand-in for a VAE loaded with dynamic VRAM."""

from __future__ import annotations

import torch

from . import host_internals as host


def installed() -> list[str]:
    """The decoder files in models/vae_approx (the host also keeps encoders there)."""
    import folder_paths

    return [f for f in folder_paths.get_filename_list("vae_approx") if "decoder" in f]


def load_taesd(filename: str, model) -> torch.nn.Module:
    """The TAESD decoder ``filename`` for ``model``'s latent format, on the training device. Call it outside
    inference mode (its weights must be ones autograd can save)."""
    import folder_paths

    fmt = model.get_model_object("latent_format")
    taesd = host.require("TAESD")(decoder_path=folder_paths.get_full_path_or_raise("vae_approx", filename),
                                  latent_channels=fmt.latent_channels)
    taesd.vae_scale.data.fill_(fmt.scale_factor)
    taesd.vae_shift.data.fill_(getattr(fmt, "shift_factor", 0.0) or 0.0)
    return taesd.eval().to(host.torch_device())
