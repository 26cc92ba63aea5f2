"""Test-time adaptive conditioning (DATE: Diffusion Adaptive Text Embedding, NeurIPS 2025).

At chosen sampling steps the conditional text embedding e is moved by a normalized gradient step that raises a
score of the decoded x0 prediction, ``e <- e - rho * g / ||g||`` with g the gradient of minus the score (plus
an optional L2 pull toward the original), then sampling goes on with the updated e. No training; it works
on a plain prompt or refines a trained class token. One definition of each piece serves the engine
(``adaptive_generate``, any Backend) and the ComfyUI node (nodes/adaptive_node.py): ``AdaptiveConfig.update_steps``
picks the steps, ``date_adapt`` runs the updates of one chosen step, ``date_update`` is the step itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import torch

from ..classifiers import Classifier
from ..config import SamplingConfig
from ..errors import DCTError
from ..settings import check_all
from .backend import Backend, Conditioning, Trajectory, Vectors
from .freezing import frozen


@dataclass(frozen=True)
class AdaptiveConfig:
    rho: float = 0.2  # step length of each update (0.1 to 0.5 in the DATE runs); 0 = plain sampling
    every: int = 1  # update at every k-th step ...
    at_steps: tuple[int, ...] | None = None  # ... or exactly at these step indices (0-based)
    interval: tuple[float, float] = (0.0, 1.0)  # only within this fraction of the trajectory
    updates_per_step: int = 1
    reset: bool = True  # each update starts from the original embedding (False: updates accumulate)
    prior: float = 0.0  # weight of 0.5 * ||e - e_original||^2 in the objective
    date_target: str = "all"  # which part moves: "all" positions, only the class "token" positions, or "pooled" too
    score: str = "log_prob"  # "log_prob" of the target class, or raw "logit" (CLIP image-text similarity)

    def validate(self) -> None:
        check_all({f.name: getattr(self, f.name) for f in fields(self)})

    def update_steps(self, total: int) -> list[int]:
        """Step indices (0-based, of ``total``) at which the embedding is updated (none when rho is 0): every
        k-th step or exactly ``steps``, within the ``interval`` fraction of the trajectory."""
        if self.rho == 0:
            return []
        lo, hi = self.interval
        chosen = self.at_steps if self.at_steps is not None else range(0, total, self.every)
        return sorted(i for i in set(chosen) if 0 <= i < total and lo * total <= i <= hi * total)


def class_score(classifier: Classifier, target: int, kind: str = "log_prob") -> Callable[[torch.Tensor], torch.Tensor]:
    """Images [B, 3, H, W] in [0, 1] -> a score per image to raise."""

    def score(images: torch.Tensor) -> torch.Tensor:
        logits = classifier(images)
        return logits[:, target] if kind == "logit" else -classifier.loss(logits, target)

    return score


def date_update(
    value: torch.Tensor,
    grad: torch.Tensor,
    rho: float,
    *,
    original: torch.Tensor | None = None,
    prior: float = 0.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """One DATE step on a batch of embeddings [B, ...], the single definition every caller uses.

    ``grad`` is the gradient of minus the score. With a prior the direction also pulls toward ``original``
    (the gradient of 0.5 * prior * ||value - original||^2 is added); ``mask`` [B, L] keeps only those
    positions. Returns ``value - rho * g / ||g||`` with the norm taken per image, detached: every image of a
    batch moves by rho, whatever the others' gradients."""
    g = grad.detach().float()
    if prior and original is not None:
        g = g + prior * (value.detach().float() - original.detach().to(value.device).float())
    if mask is not None:
        g = g * mask.to(g.device).unsqueeze(-1).to(g.dtype)
    norm = g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (g.dim() - 1)))
    return (value.detach().float() - rho * g / norm).to(value.dtype)


def date_adapt(
    original: Sequence[torch.Tensor],
    current: Sequence[torch.Tensor],
    predict_x0: Callable[[list[torch.Tensor]], torch.Tensor],
    decode: Callable[[torch.Tensor], torch.Tensor],
    score: Callable[[torch.Tensor], torch.Tensor],
    config: AdaptiveConfig,
    *,
    masks: Sequence[torch.Tensor | None] = (),
) -> list[torch.Tensor]:
    """The DATE updates of one chosen step, the loop every caller runs (engine and ComfyUI node alike).

    The conditioning is the list of tensors that move, one row per image ([B, ...] each; the unmodified
    ``original`` and the ``current`` one, parallel lists). ``predict_x0(values)`` is the guided model's x0 with
    those tensors in place, ``decode`` turns it into images [B, 3, H, W] in [0, 1] and ``score`` gives the score
    per image to raise. Starting from ``original`` (``config.reset``) or ``current``, ``config.updates_per_step``
    times: one ``date_update`` of each tensor (prior toward its original; ``masks[i]`` [B, L] keeps only those
    positions of tensor i). A tensor the score does not depend on stays as it is. Returns the moved tensors,
    detached, in the same order."""
    values = [v.detach().clone() for v in (original if config.reset else current)]
    for _ in range(config.updates_per_step):
        leaves = [v.requires_grad_(True) for v in values]
        with torch.enable_grad():
            objective = -score(decode(predict_x0(leaves))).sum()
            grads = torch.autograd.grad(objective, leaves, allow_unused=True)
        values = [leaf.detach() if g is None else
                  date_update(leaf, g, config.rho, original=original[i], prior=config.prior,
                              mask=masks[i] if i < len(masks) else None)
                  for i, (leaf, g) in enumerate(zip(leaves, grads))]
    return values


def adapt_conditioning(backend: Backend, traj: Trajectory, cond: Conditioning, uncond: Conditioning,
                       original: Conditioning, score_fn: Callable[[torch.Tensor], torch.Tensor],
                       config: AdaptiveConfig) -> Conditioning:
    """One DATE update of ``cond`` at the trajectory's current step; ``original`` is the unmodified one. What
    moves: the hidden states (only the class-token positions with target "token"), and the pooled embedding too
    with target "pooled"."""
    mask = cond.token_mask if config.date_target == "token" else None
    if config.date_target == "token" and (mask is None or not bool(mask.any())):
        raise DCTError("target 'token' needs a class token in the prompt ({token}).")
    move_pooled = config.date_target == "pooled" and cond.pooled is not None and original.pooled is not None

    def parts(c: Conditioning) -> list[torch.Tensor]:
        return [c.hidden, c.pooled] if move_pooled and c.pooled is not None else [c.hidden]

    def with_parts(values: list[torch.Tensor]) -> Conditioning:
        return cond._replace(hidden=values[0], pooled=values[1] if move_pooled else cond.pooled)

    moved = date_adapt(parts(original), parts(cond),
                       lambda values: backend.predict_x0(traj, with_parts(values), uncond),
                       lambda x0: backend.decode(x0, checkpoint=True), score_fn, config, masks=[mask])
    return with_parts(moved)


def adaptive_generate(
    backend: Backend,
    prompts: Sequence[str],
    seeds: Sequence[int],
    sampling: SamplingConfig,
    score_fn: Callable[[torch.Tensor], torch.Tensor],
    config: AdaptiveConfig = AdaptiveConfig(),
    vectors: Vectors | None = None,
    *,
    on_update: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Images [N, 3, H, W] in [0, 1], sampled with the conditioning updated at the chosen steps.

    With rho = 0 the images are bit-identical to plain sampling (generate_images)."""
    config.validate()
    with frozen(backend.modules()):
        with torch.no_grad():
            original = backend.encode(list(prompts), vectors)
            uncond = backend.negative(sampling.negative_prompt, len(prompts))
        traj = backend.start(seeds, sampling)
        chosen = set(config.update_steps(traj.total_steps))
        cond = original
        for i in range(traj.total_steps):
            if i in chosen:
                cond = adapt_conditioning(backend, traj, cond, uncond, original, score_fn, config)
                if on_update is not None:
                    on_update(i)
            with torch.no_grad():
                backend.denoise(traj, cond, uncond, 1)
        with torch.no_grad():
            return backend.decode(traj.latents).cpu()
