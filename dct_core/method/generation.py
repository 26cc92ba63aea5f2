"""Plain sampling (no gradient) through a backend, in chunks: used by generate, eval, demo and previews."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..config import SamplingConfig
from .backend import Backend, Vectors


@torch.no_grad()
def generate_images(
    backend: Backend,
    prompts: Sequence[str],
    seeds: Sequence[int],
    sampling: SamplingConfig,
    vectors: Vectors | None = None,
    *,
    chunk: int = 4,
    should_cancel: Callable[[], bool] | None = None,
) -> torch.Tensor:
    """Images [N, 3, H, W] in [0, 1] on the CPU; prompt i with seed i; seeds fix the images exactly."""
    if len(prompts) != len(seeds):
        raise ValueError("one prompt per seed")
    out = []
    for i in range(0, len(seeds), chunk):
        if should_cancel is not None and should_cancel():
            break
        p, s = list(prompts[i : i + chunk]), list(seeds[i : i + chunk])
        cond = backend.encode(p, vectors)
        uncond = backend.negative(sampling.negative_prompt, len(p))
        traj = backend.start(s, sampling)
        latents = backend.denoise(traj, cond, uncond, traj.remaining)
        out.append(backend.decode(latents).cpu())
    return torch.cat(out) if out else torch.empty(0, 3, sampling.resolution, sampling.resolution)


@torch.no_grad()
def topk_accuracy(logits: torch.Tensor, target: int, ks: Sequence[int] = (1, 5)) -> dict[int, float]:
    ranked = logits.argsort(dim=-1, descending=True)
    return {k: float((ranked[:, : min(k, logits.shape[-1])] == target).any(-1).float().mean()) for k in ks}
