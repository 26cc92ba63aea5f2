"""The seam between the training loop and a diffusion host.

A backend owns its model objects (diffusers pipeline here, ComfyUI's MODEL/CLIP/VAE in nodes/). The loop
owns the token, the optimizer, the prompts and seeds, early stopping and the callbacks. Everything the loop,
sampling and the adaptive (DATE) update use is in these two protocols; nothing is read through getattr.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import torch

from ..config import SamplingConfig
from ..errors import DCTError


class Conditioning(NamedTuple):
    """A batch of text conditioning, the same shape for every backend."""

    hidden: torch.Tensor  # [B, L, D] (SDXL: both encoders concatenated)
    pooled: torch.Tensor | None  # SDXL: [B, 1280] from the second encoder; None otherwise
    token_mask: torch.Tensor | None = None  # [B, L] True at the class-token positions (None: no token)


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


# The learned vectors per text encoder, as the loop hands them to a backend (plain tensors or Parameters).
Vectors = Mapping[str, torch.Tensor]


class Backend(Protocol):
    device: torch.device
    dtype: torch.dtype  # the models' compute dtype (autocast and gradient scaling follow it)
    encoders: dict[str, int]  # text encoder name ("clip_l", "clip_g", "clip_h") -> embedding width
    sampler: str  # the sampler the backend runs, as token metadata records it ("ddim", "euler/normal")

    def modules(self) -> list[torch.nn.Module]:
        """Every host module the loop runs through (frozen for the duration of training)."""
        ...

    def init_vectors(self, word: str, num_vectors: int) -> dict[str, torch.Tensor]:
        """Starting vectors per encoder: the embedding of ``word``."""
        ...

    def encode(self, prompts: Sequence[str], vectors: Vectors | None) -> Conditioning:
        """Conditioning for ``prompts``; the vectors go where a prompt holds ``{token}``; differentiable."""
        ...

    def negative(self, prompt: str, batch: int) -> Conditioning:
        """The unconditional branch of classifier-free guidance for ``batch`` images (no class token)."""
        ...

    def start(self, seeds: Sequence[int], sampling: SamplingConfig) -> Trajectory:
        """Initial noise, one generator per seed (independent of batch composition and device)."""
        ...

    def denoise(
        self, traj: Trajectory, cond: Conditioning, uncond: Conditioning, num_steps: int, *, checkpoint: bool = False
    ) -> torch.Tensor:
        """Take ``num_steps`` CFG sampling steps; gradients follow the ambient grad mode. Returns latents
        (after the last step, the model's x0)."""
        ...

    def predict_x0(self, traj: Trajectory, cond: Conditioning, uncond: Conditioning, *,
                   checkpoint: bool = False) -> torch.Tensor:
        """The guided model's x0 at the current step, differentiable in ``cond``; the trajectory does not move
        (the x0 gradient point and test-time adaptive conditioning). ``checkpoint`` trades time for memory."""
        ...

    def decode(self, latents: torch.Tensor, *, checkpoint: bool = False) -> torch.Tensor:
        """Latents to images [B, 3, H, W] in [0, 1], differentiable; ``checkpoint`` trades time for memory."""
        ...


class NegativeCache:
    """The negative prompt's conditioning, encoded once per prompt and repeated to each batch size. A training asks
    for it at every micro-batch size, before/after image and preview, and a backend lives for one run, in which the
    text encoder does not change (each call is a text-encoder pass: about 0.6 s of CLIP-L on a CPU)."""

    def __init__(self) -> None:
        self._rows: dict[str, Conditioning] = {}

    def get(self, prompt: str, batch: int, encode) -> Conditioning:
        one = self._rows.get(prompt)
        if one is None:
            with torch.no_grad():
                one = encode([prompt], None)
            self._rows[prompt] = one
        def rows(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.repeat(batch, *[1] * (t.dim() - 1))

        hidden = rows(one.hidden)
        assert hidden is not None
        return Conditioning(hidden, rows(one.pooled), rows(one.token_mask))


def init_rows(table: torch.Tensor, ids: Sequence[int], word: str, num_vectors: int) -> torch.Tensor:
    """A token's starting vectors from the init word's token ids in an embedding ``table`` [V, D]: the mean of its
    rows for one vector (a multi-token word), else its rows cycled; every backend's ``init_vectors`` uses it."""
    if not ids:
        raise DCTError(f"init word {word!r} gives no tokens; use a plain word such as 'a' or 'bird'.")
    rows = table.detach()[torch.tensor(list(ids), device=table.device)].float().clone()
    return rows.mean(0, keepdim=True) if num_vectors == 1 else rows[torch.arange(num_vectors) % len(ids)]
