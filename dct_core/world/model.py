"""The demo world's text-to-image model: a Stable Diffusion pipeline in miniature.

A diffusers ``UNet2DConditionModel`` conditioned on a small ``CLIPTextModel`` through the shipped CLIP
tokenizer, a DDIM scheduler, and a lossless space-to-depth "autoencoder": latents are the 32x32 image
folded into 16x16x12 (``pixel_unshuffle``), decoded by ``pixel_shuffle``. The fold keeps the SD layout
(latents at 1/2 resolution, a ``vae.decode`` the engine calls unchanged, differentiable) while making the
UNet about 10x cheaper to train on a CPU than in pixel space.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput
from diffusers.models.modeling_utils import ModelMixin

from ..formats.clip_vocab import clip_tokenizer
from .scenes import RESOLUTION

TEXT_WIDTH = 64
LATENT_CHANNELS = 12


class _PixelShuffle(torch.nn.Module):
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(z, 2)


class SpaceToDepthAutoencoder(ModelMixin, ConfigMixin):  # type: ignore[misc]  # diffusers' own pattern
    """Folds [B, 3, H, W] images in [-1, 1] into [B, 12, H/2, W/2] latents and back, exactly.

    ``block_out_channels`` has two entries so that code computing the VAE's downscale the diffusers way
    (2 ** (len - 1)) gets 2.
    """

    @register_to_config
    def __init__(self, latent_channels: int = LATENT_CHANNELS, block_out_channels: tuple[int, ...] = (12, 12),
                 scaling_factor: float = 1.0):
        super().__init__()
        self.decoder = _PixelShuffle()
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)  # gives the module a device/dtype

    def encode_latents(self, images: torch.Tensor) -> torch.Tensor:
        return F.pixel_unshuffle(images, 2) * self.config["scaling_factor"]

    def decode(self, z: torch.Tensor, return_dict: bool = True):
        images = self.decoder(z)
        return DecoderOutput(sample=images) if return_dict else (images,)


def build_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=RESOLUTION // 2, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
        block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=8,
        # cross-attention at the lowest resolution only (and the mid block): half the cost of also at 8x8
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_WIDTH, attention_head_dim=8,
    )


def build_text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        hidden_size=TEXT_WIDTH, intermediate_size=2 * TEXT_WIDTH, num_hidden_layers=2, num_attention_heads=4,
        vocab_size=49408, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
        projection_dim=TEXT_WIDTH, hidden_act="quick_gelu",
    )
    return CLIPTextModel(config)


def build_scheduler(clip_sample: bool = True):
    from diffusers import DDIMScheduler

    # DDPM's linear schedule suits 32x32 images; x0 clipped to the image range (latents are pixels).
    return DDIMScheduler(
        num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear", clip_sample=clip_sample,
        clip_sample_range=1.0, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon",
    )


def assemble_pipeline(unet, text_encoder, vae=None):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=vae or SpaceToDepthAutoencoder(), text_encoder=text_encoder, tokenizer=clip_tokenizer(), unet=unet,
        scheduler=build_scheduler(clip_sample=False), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    # The SD pipeline warns about (and turns off) clip_sample, right for SD's latents; ours are pixels: clip.
    pipe.register_modules(scheduler=build_scheduler())
    return pipe


def load_world_pipeline(folder: str | Path, *, device: str | torch.device = "cpu", dtype=torch.float32):
    """The trained world from ``folder`` (``unet.safetensors`` and ``text_encoder.safetensors``)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    unet, text_encoder = build_unet(), build_text_encoder()
    for module, name in ((unet, "unet"), (text_encoder, "text_encoder")):
        state = {k: v.float() for k, v in load_file(folder / f"{name}.safetensors").items()}
        module.load_state_dict(state)
        module.eval().requires_grad_(False)
    vae = SpaceToDepthAutoencoder()
    for module in (unet, text_encoder, vae):
        module.to(device)
        if dtype != torch.float32:  # ModelMixin.to(dtype) warns even when nothing changes
            module.to(dtype)
    return assemble_pipeline(unet, text_encoder, vae)
