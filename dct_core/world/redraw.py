"""Scenes redrawn by the world's own diffusion model, with their labels kept.

A classifier trained on clean renders misreads the model's softer, blotchier drawings. Here a rendered scene is
noised part of the way (t between ``t_min`` and ``t_max``, where the class, including the throat colour, still
shows) and denoised back by the model with its caption: the result looks like the model's drawings but keeps
the known class. The classifiers train on a mix of these and of rendered scenes.
"""

from __future__ import annotations

import torch

from ..formats.clip_vocab import clip_tokenizer
from .scenes import sample_scenes


@torch.no_grad()
def redrawn_scenes(pipe, n: int, g: torch.Generator, *, t_min: int = 60, t_max: int = 260, steps: int = 4,
                   chunk: int = 128, log=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` redrawn scenes [n, 3, 32, 32] in [0, 1] and their labels [n]."""
    unet, text_encoder, vae = pipe.unet, pipe.text_encoder, pipe.vae
    alphas = pipe.scheduler.alphas_cumprod
    tokenizer = clip_tokenizer()
    images, labels = [], []
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        scenes = sample_scenes(m, g)
        ids = tokenizer(scenes.captions, padding="max_length", max_length=77, truncation=True,
                        return_tensors="pt")["input_ids"]
        hidden = text_encoder(ids).last_hidden_state
        t0 = int(torch.randint(t_min, t_max + 1, (1,), generator=g))
        times = torch.linspace(t0, 0, steps + 1).round().long().tolist()
        x0 = vae.encode_latents(scenes.images * 2 - 1)
        a = alphas[t0]
        x = a.sqrt() * x0 + (1 - a).sqrt() * torch.randn(x0.shape, generator=g)
        for t, t_next in zip(times[:-1], times[1:]):  # deterministic DDIM from t0 down to 0
            eps = unet(x, torch.full((m,), t), encoder_hidden_states=hidden).sample
            a_t, a_next = alphas[t], alphas[t_next] if t_next > 0 else torch.tensor(1.0)
            pred = ((x - (1 - a_t).sqrt() * eps) / a_t.sqrt()).clamp(-1, 1)
            x = a_next.sqrt() * pred + (1 - a_next).sqrt() * eps
        images.append(((vae.decode(x).sample + 1) / 2).clamp(0, 1))
        labels.append(scenes.labels)
        if log is not None:
            log(f"redrawn {start + m}/{n} scenes")
    return torch.cat(images), torch.cat(labels)
