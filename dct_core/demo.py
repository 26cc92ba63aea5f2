"""`dct demo`: the whole method end to end on the built-in tiny world, nothing to download.

The tiny world has random weights, so it shows the machinery (the token moves the guiding classifier's
verdict on the training seeds), not image quality; a trained demo world replaces it later.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import SamplingConfig, TrainConfig
from .diffusers_backend import DiffusersBackend
from .generation import generate_images, topk_accuracy
from .images import make_grid, save_image
from .prompts import prompts_for_batch, strip_token
from .tiny import TINY_LABELS, TINY_RESOLUTION, tiny_classifier, tiny_pipeline
from .tokens import save_class_token
from .training import StepRecord, TrainResult

DEMO_CLASS = "tiger cat"


@dataclass
class DemoReport:
    result: TrainResult
    token_path: Path
    grid_path: Path
    table: dict[str, dict[str, float]]  # "train seeds"/"fresh seeds" -> {"before": top1, "after": top1}


def run_demo(
    out_dir: str | Path = "dct-demo",
    *,
    steps: int = 30,
    seed: int = 0,
    overwrite: bool = True,
    on_step: Callable[[StepRecord, torch.Tensor], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> DemoReport:
    out = Path(out_dir)
    backend = DiffusersBackend(tiny_pipeline("sd1", seed=seed))
    sampling = SamplingConfig(resolution=TINY_RESOLUTION, steps=4, guidance=7.0)
    calib_prompts = [f"a photo of a {label.split(',')[0]}" for label in TINY_LABELS] * 2
    calibration = generate_images(backend, calib_prompts, range(1000, 1000 + len(calib_prompts)), sampling)
    classifier = tiny_classifier(calibration, seed=seed)
    target = classifier.class_index(DEMO_CLASS)
    # Random weights need the full trajectory (K = S) and a large step size to move; see tests/README.
    config = TrainConfig(
        batch_size=4, lr=0.1, max_steps=steps, backprop_depth=sampling.steps, sampling=sampling,
        seed=seed, accuracy_threshold=1.0, patience=steps,
    )
    from .training import train_class_token

    result = train_class_token(
        backend, classifier, target, DEMO_CLASS, config, name="tiger-cat-demo",
        on_step=on_step, should_cancel=should_cancel,
        metadata={"class_index": str(target), "class_label": DEMO_CLASS, "classifier": classifier.name,
                  "base_model": "dct tiny random sd1", "templates": "|".join(config.templates)},
    )
    token_path = save_class_token(result.token, out / "tiger-cat-demo.safetensors", overwrite=overwrite)

    vectors = {k: v.to(backend.device) for k, v in result.token.for_encoders(backend.encoders).items()}
    table, rows = {}, []
    for name, first in (("train seeds", seed), ("fresh seeds", seed + 10_000)):
        prompts = prompts_for_batch(config.templates, DEMO_CLASS, 8 if name == "fresh seeds" else 4)
        seeds = list(range(first, first + len(prompts)))
        before = generate_images(backend, [strip_token(p) for p in prompts], seeds, sampling)
        after = generate_images(backend, prompts, seeds, sampling, vectors)
        with torch.no_grad():
            table[name] = {
                "before": topk_accuracy(classifier(before), target)[1],
                "after": topk_accuracy(classifier(after), target)[1],
            }
        rows += [before, after]
    grid_path = save_image(make_grid(rows), out / "before-after.png")
    return DemoReport(result, token_path, grid_path, table)
