"""Training one of the world's classifiers on procedural scenes, saved as a timm hub folder.

The classifiers judge images the diffusion model draws, which are blurrier, noisier and less clean than the
renderer's. A trial's classifiers, trained on clean images only, misread the model's grey, checkered
backgrounds; so training images pass through random degradations of that kind (``degrade``), and half of each
batch are scenes redrawn by the diffusion model itself (``redraw.py``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from ..formats.files import atomic_write
from .classifier_zoo import ClassifierSpec
from .scenes import LABELS, RESOLUTION, sample_scenes

PRETRAINED_CFG = {
    "input_size": [3, RESOLUTION, RESOLUTION], "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
    "crop_pct": 1.0, "interpolation": "bilinear",
}


def _rand(n: int, g: torch.Generator, lo: float, hi: float) -> torch.Tensor:
    return (torch.rand(n, 1, 1, 1, generator=g) * (hi - lo) + lo)


def degrade(images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Blur, noise, checker patterns and tone shifts at random strengths ([N, 3, H, W] in [0, 1])."""
    n, _, h, w = images.shape
    x = images
    sigma = _rand(n, g, 0.3, 1.2)
    ax = torch.arange(-1, 2, dtype=torch.float32).view(1, 1, 3)
    k1 = torch.exp(-(ax**2) / (2 * sigma.view(n, 1, 1) ** 2))
    k1 = k1 / k1.sum(-1, keepdim=True)  # [n, 1, 3]
    blurred = F.conv2d(F.pad(x.reshape(1, n * 3, h, w), (1, 1, 1, 1), mode="replicate"),
                       (k1.transpose(1, 2) * k1).repeat_interleave(3, 0).unsqueeze(1), groups=n * 3)
    use_blur = torch.rand(n, 1, 1, 1, generator=g) < 0.5
    x = torch.where(use_blur, blurred.reshape(n, 3, h, w), x)
    ii, jj = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    period = torch.randint(1, 3, (n, 1, 1, 1), generator=g)
    checker = (((ii // period) + (jj // period)) % 2).float() * 2 - 1
    use_checker = (torch.rand(n, 1, 1, 1, generator=g) < 0.4).float()
    x = x + checker * _rand(n, g, 0.0, 0.08) * use_checker
    x = x + torch.randn(x.shape, generator=g) * _rand(n, g, 0.0, 0.07)
    x = (x - 0.5) * _rand(n, g, 0.75, 1.1) + 0.5 + _rand(n, g, -0.08, 0.08)
    x = x * (torch.rand(n, 3, 1, 1, generator=g) * 0.2 + 0.9)
    return x.clamp(0, 1)


def build_classifier(spec: ClassifierSpec):
    import timm

    return timm.create_model(spec.architecture, pretrained=False, num_classes=len(LABELS),
                             pretrained_cfg_overlay=PRETRAINED_CFG, **spec.model_args)


def _normalize(images: torch.Tensor) -> torch.Tensor:
    return (images - 0.5) / 0.5


@torch.no_grad()
def accuracy(model, images: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    return float((model(_normalize(images)).argmax(-1) == labels).float().mean())


def fit_classifier(spec: ClassifierSpec, draw: Callable[[torch.Generator], tuple[torch.Tensor, torch.Tensor]], *,
                   steps: int, seed: int, log=None) -> torch.nn.Module:
    """The world's classifier recipe: ``spec``'s architecture from scratch, AdamW with a one-cycle schedule, label
    smoothing, every batch from ``draw(generator)`` passed through ``degrade``. Returned in eval mode."""
    torch.manual_seed(seed)
    model = build_classifier(spec)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=spec.lr, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(seed)
    started = time.time()
    for step in range(steps):
        model.train()
        images, labels = draw(g)
        x = degrade(images, g)
        loss = F.cross_entropy(model(_normalize(x)), labels, label_smoothing=0.05)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if log is not None and (step + 1) % 250 == 0:
            log(f"{spec.architecture} step {step + 1}/{steps}  loss {loss.item():.3f}  "
                f"{(time.time() - started) / 60:.1f} min")
    return model.eval()


def train_classifier(spec: ClassifierSpec, folder: Path, *, steps: int, seed: int, batch: int = 128,
                     redrawn: tuple[torch.Tensor, torch.Tensor] | None = None,
                     redrawn_test: tuple[torch.Tensor, torch.Tensor] | None = None, log=print) -> dict:
    """Half of each batch comes from ``redrawn`` (images, labels: scenes redrawn by the diffusion model) when
    given, the rest are fresh renders; all pass through ``degrade``."""

    def draw(g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        if redrawn is None:
            scenes = sample_scenes(batch, g)
            return scenes.images, scenes.labels
        scenes = sample_scenes(batch - batch // 2, g)
        pick = torch.randint(len(redrawn[1]), (batch // 2,), generator=g)
        return torch.cat([scenes.images, redrawn[0][pick]]), torch.cat([scenes.labels, redrawn[1][pick]])

    started = time.time()
    model = fit_classifier(spec, draw, steps=steps, seed=seed, log=log)
    test_g = torch.Generator().manual_seed(10_000 + seed)
    test = sample_scenes(2000, test_g)
    summary = {
        "architecture": spec.architecture, "steps": steps, "minutes": (time.time() - started) / 60,
        "accuracy_clean": accuracy(model, test.images, test.labels),
        "accuracy_degraded": accuracy(model, degrade(test.images, test_g), test.labels),
    }
    if redrawn_test is not None:
        summary["accuracy_redrawn"] = accuracy(model, *redrawn_test)
    log(f"{spec.architecture}: {summary}")
    save_timm_folder(model, spec, folder)
    return summary


def save_timm_folder(model, spec: ClassifierSpec, folder: Path) -> None:
    from safetensors.torch import save

    config = {
        "architecture": spec.architecture, "num_classes": len(LABELS), "label_names": LABELS,
        "model_args": spec.model_args, "pretrained_cfg": PRETRAINED_CFG,
    }
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    atomic_write(folder / "model.safetensors", save(state))
    atomic_write(folder / "config.json", json.dumps(config, indent=2).encode())
