"""The seam between the training loop and a diffusion host.

A backend owns its model objects (diffusers pipeline here, ComfyUI's MODEL/CLIP/VAE in nodes/). The loop
owns the token, the optimizer, the prompts and seeds, early stopping and the callbacks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from .config import SamplingConfig


@dataclass
class Trajectory:
    """The state of one batch being sampled: latents and how many steps are done."""

    latents: torch.Tensor
    total_steps: int
    done: int = 0
    state: dict[str, Any] = field(default_factory=dict)  # backend-owned (scheduler, size conditioning, ...)

    @property
    def remaining(self) -> int:
        return self.total_steps - self.done


class Backend(Protocol):
    device: torch.device
    encoders: dict[str, int]  # text encoder name ("clip_l", "clip_g", "clip_h") -> embedding width

    def modules(self) -> list[torch.nn.Module]:
        """Every host module the loop runs through (frozen for the duration of training)."""

    def init_vectors(self, word: str, num_vectors: int) -> dict[str, torch.Tensor]:
        """Starting vectors per encoder: the embedding of ``word``."""

    def encode(self, prompts: Sequence[str], vectors: dict[str, torch.Tensor] | None) -> Any:
        """Conditioning for ``prompts``; the vectors go where a prompt holds ``{token}``; differentiable."""

    def start(self, seeds: Sequence[int], sampling: SamplingConfig) -> Trajectory:
        """Initial noise, one generator per seed (independent of batch composition and device)."""

    def denoise(
        self, traj: Trajectory, cond: Any, uncond: Any, num_steps: int, *, checkpoint: bool = False
    ) -> torch.Tensor:
        """Take ``num_steps`` CFG sampling steps; gradients follow the ambient grad mode. Returns latents
        (after the last step, the model's x0)."""

    def predict_x0(self, traj: Trajectory, cond: Any, uncond: Any) -> torch.Tensor:
        """The guided model's x0 at the current step, differentiable in ``cond``; the trajectory does not move
        (used by test-time adaptive conditioning)."""

    def decode(self, latents: torch.Tensor, *, checkpoint: bool = False) -> torch.Tensor:
        """Latents to images [B, 3, H, W] in [0, 1], differentiable; ``checkpoint`` trades time for memory."""
