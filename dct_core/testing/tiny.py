"""A tiny random-weight world built in-process: an SD-family pipeline and a timm classifier.

Used by the tests, where any weights will do (the trained demo world is in ``world/``). Random weights barely
react to text, so the builders make the model text-sensitive (a larger final text layer norm) and the classifier's
logits vary across images (no zero-init residuals, norm statistics calibrated on generated images,
a scaled head); otherwise no token could change a prediction and a test could pass or fail for no reason.
"""

from __future__ import annotations

from typing import Any

import torch

from ..backends.model_loading import clip_tokenizer
from ..classifiers import ImageClassifier, Preprocess

TINY_RESOLUTION = 32


def _text_encoder(width: int, projection: int | None, text_gain: float, seed: int):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    config = CLIPTextConfig(
        hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2, num_attention_heads=4,
        vocab_size=49408, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
        projection_dim=projection or width, hidden_act="gelu",
    )
    model = CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "final_layer_norm" in name:
                p.mul_(text_gain)
    return model.eval()


def tiny_pipeline(kind: str = "sd1", *, seed: int = 0, text_gain: float = 5.0, prediction_type: str = "epsilon"):
    """A ~3 MB pipeline drawing 32x32 images: ``kind`` is "sd1" (StableDiffusionPipeline) or "sdxl"."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )

    sdxl = kind == "sdxl"
    torch.manual_seed(seed)
    unet_kwargs = dict(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=TINY_RESOLUTION // 2, in_channels=4,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), norm_num_groups=8, attention_head_dim=4,
    )
    if sdxl:
        unet_kwargs.update(
            cross_attention_dim=64, addition_embed_type="text_time", addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=6 * 8 + 32, use_linear_projection=True,
        )
    else:
        unet_kwargs.update(cross_attention_dim=32)
    unet = UNet2DConditionModel(**unet_kwargs)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        block_out_channels=(16, 32), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        sample_size=TINY_RESOLUTION,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1, prediction_type=prediction_type,
    )
    models: list[Any] = [unet, vae]
    for module in models:
        module.eval()  # as from_pretrained leaves them
    text_encoder = _text_encoder(32, None, text_gain, seed + 2)
    if not sdxl:
        return StableDiffusionPipeline(
            vae=vae, text_encoder=text_encoder, tokenizer=clip_tokenizer(), unet=unet, scheduler=scheduler,
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
    return StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=clip_tokenizer(), unet=unet, scheduler=scheduler,
        text_encoder_2=_text_encoder(32, 32, text_gain, seed + 3), tokenizer_2=clip_tokenizer("!"),
    )


TINY_LABELS = [
    "tabby cat", "tiger cat", "tiger", "kite, bird of prey", "kite, toy", "iron, smoothing iron",
    "golf club", "warbler", "finch", "sparrow",
]


@torch.no_grad()
def tiny_classifier(calibration_images: torch.Tensor, *, seed: int = 0, logit_std: float = 3.0) -> ImageClassifier:
    """A random timm classifier whose predictions depend on the image.

    Its norm statistics come from ``calibration_images`` ([N, 3, H, W] in [0, 1], e.g. generated ones) and its
    head is scaled so logits spread by about ``logit_std`` across them.
    """
    import timm

    torch.manual_seed(seed)
    model: Any = timm.create_model("test_resnet", pretrained=False, num_classes=len(TINY_LABELS),
                                   zero_init_last=False)
    size = calibration_images.shape[-1]
    preprocess = Preprocess(input_size=(size, size), crop_pct=1.0, interpolation="bilinear")
    x = preprocess(calibration_images)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batch
    model.train()
    model(x)
    model.eval()
    head = model.get_classifier()
    logits = model(x)
    head.weight.mul_(logit_std / logits.std(0).mean().clamp(min=1e-6))
    head.bias.zero_()
    model.requires_grad_(False)
    return ImageClassifier(model, list(TINY_LABELS), preprocess, name="tiny-random-resnet")
