"""`dct demo`: the paper's Table 1 in miniature, on the built-in demo world (CPU, nothing to download).

For each demo class (one whose prompt word is shared with another class, one that differs from its sibling
only in a small detail) a class token is trained with the world's guiding classifier; then 64 fresh seeds are
generated with and without the token, same seeds and prompts, and judged by the guiding classifier and by a
held-out classifier of another architecture.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from ..config import DEFAULT_PRESET, TrainConfig, preset_config
from ..errors import DCTError
from ..formats.files import atomic_write
from ..formats.images import make_grid, save_image
from ..formats.printable import json_text
from ..formats.tokens import sanitize_name
from ..method.evaluation import WITH, WITHOUT, compare_with_token, token_quality
from ..method.training import StepRecord
from ..world import (
    SAMPLING,
    TRAIN_DEFAULTS,
    load_world_backend,
    load_world_classifier,
    reference_renders,
    variety_reader,
)
from ..world.facts import DEMO_CLASSES, EVAL_FIRST_SEED, DemoClass
from .run import RunHooks, TrainJob, run_training


def demo_config(steps: int | None = None, backprop_depth: int | None = None, seed: int = 0,
                recipe: str = DEFAULT_PRESET, **overrides) -> TrainConfig:
    """The demo's settings: a recipe (the default one unless asked) with the world's prompts and sampling, then
    ``overrides``."""
    given = {k: v for k, v in dict(max_steps=steps, backprop_depth=backprop_depth, **overrides).items()
             if v is not None}
    return preset_config(recipe, **{**TRAIN_DEFAULTS, "sampling": SAMPLING, "seed": seed, **given})


@dataclass
class DemoRow:
    target: DemoClass
    accuracy: dict[str, dict[str, dict]]  # classifier name -> condition -> {"top1", "top5"}
    train_steps: int
    train_seconds: float
    stopped: str
    token_path: Path
    quality: dict = field(default_factory=dict)  # fooling gap, variety, Frechet distance (evaluation.token_quality)


@dataclass
class DemoReport:
    rows: list[DemoRow]
    classifiers: dict[str, str]  # role ("guiding", "held_out") -> classifier name
    config: TrainConfig
    num_images: int
    grid_path: Path | None = None
    json_path: Path | None = None
    token_paths: list[Path] = field(default_factory=list)
    cancelled: bool = False
    recipe: str = DEFAULT_PRESET

    def to_json(self) -> dict:
        return {
            "world": "dct demo world (procedural 32x32 scenes)",
            "classifiers": self.classifiers,
            "recipe": self.recipe,
            "gradient_point": self.config.gradient_point,
            "backprop_depth": self.config.backprop_depth,
            "train_steps_max": self.config.max_steps,
            "batch_size": self.config.batch_size,
            "sampling": {"steps": self.config.sampling.sampling_steps, "guidance": self.config.sampling.guidance},
            "num_images": self.num_images,
            "cancelled": self.cancelled,
            "first_seed": EVAL_FIRST_SEED,
            "templates": list(self.config.templates),
            "classes": [
                {"label": r.target.label, "prompt_word": r.target.word, "kind": r.target.kind,
                 "train_steps": r.train_steps, "train_seconds": round(r.train_seconds, 1), "stopped": r.stopped,
                 "token": str(r.token_path), "accuracy": r.accuracy, **r.quality}
                for r in self.rows
            ],
        }


def _select(names: Sequence[str] | None) -> list[DemoClass]:
    if not names:
        return list(DEMO_CLASSES)
    known = {c.label: c for c in DEMO_CLASSES}
    for n in names:
        if n not in known:
            raise DCTError(f"the demo has no class {n!r}; choose from: {', '.join(known)}.")
    return [known[n] for n in names]


def run_demo(
    out_dir: str | Path = "dct-demo",
    *,
    classes: Sequence[str] | None = None,
    steps: int | None = None,
    backprop_depth: int | None = None,
    num_images: int = 64,
    seed: int = 0,
    overwrite: bool = True,
    json_path: str | Path | None = None,
    world_dir: str | Path | None = None,
    overrides: dict | None = None,
    recipe: str = DEFAULT_PRESET,
    on_class: Callable[[DemoClass], None] | None = None,
    on_step: Callable[[StepRecord, torch.Tensor], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> DemoReport:
    out = Path(out_dir)
    backend = load_world_backend(folder=world_dir)
    guide, held_out = (load_world_classifier(role, world_dir) for role in ("guide", "held-out"))
    judges = {guide.name: guide, held_out.name: held_out}
    entropy = variety_reader()
    config = demo_config(steps, backprop_depth, seed, recipe, **(overrides or {}))
    config.validate()
    seeds = list(range(EVAL_FIRST_SEED, EVAL_FIRST_SEED + num_images))
    report = DemoReport([], {"guiding": guide.name, "held_out": held_out.name}, config, num_images, recipe=recipe)
    grid_rows, grid_labels = [], []
    for target in _select(classes):
        if on_class is not None:
            on_class(target)
        cfg = replace(config, init_word=target.word)
        index = guide.class_index(target.label)
        started = time.perf_counter()
        outcome = run_training(
            TrainJob(backend, guide, index, cfg, name=sanitize_name(target.label), prompt_label=target.word,
                     out=out / f"{sanitize_name(target.label)}.safetensors", overwrite=overwrite,
                     overwrite_hint="pass --overwrite", recipe=recipe, base_model="dct demo world"),
            RunHooks(on_step=on_step, should_cancel=should_cancel),
        )
        result = outcome.result
        seconds = time.perf_counter() - started
        if outcome.save_error is not None:
            raise DCTError(outcome.save_error)
        if outcome.path is not None:  # the best token so far is kept, also when cancelled
            report.token_paths.append(outcome.path)
        if outcome.cancelled or (should_cancel is not None and should_cancel()):
            report.cancelled = True
            break
        if outcome.error() is not None:  # nothing trained (diverged at the first step): no row to measure
            raise DCTError(outcome.error())
        vectors = result.token.for_encoders(backend.encoders)
        accuracy, images = compare_with_token(
            backend, judges, target.label, target.word, cfg.templates, vectors, seeds, SAMPLING, chunk=32,
            should_cancel=should_cancel,
        )
        if should_cancel is not None and should_cancel():  # the evaluation is incomplete: no numbers from it
            report.cancelled = True
            break
        quality = token_quality(accuracy, images, guide=guide.name, held_out=held_out.name, entropy=entropy,
                                reference=reference_renders(target.label, num_images),
                                feature_classifier=held_out, diversity_classifier=guide,
                                leak=(held_out, held_out.class_index(target.label)))
        report.rows.append(DemoRow(target, accuracy, len(result.history), seconds, result.stopped,
                                   report.token_paths[-1], quality))
        grid_rows += [images[WITHOUT][:8], images[WITH][:8]]
        grid_labels += [f"{target.label}\nwithout token", f"{target.label}\nwith token"]
    if grid_rows:
        report.grid_path = save_image(make_grid(grid_rows, min_cell=64, row_labels=grid_labels),
                                      out / "before-after.png")
    if json_path is not None:
        report.json_path = atomic_write(json_path, json_text(report.to_json(), indent=2).encode())
    return report


def format_table(report: DemoReport) -> str:
    """The Table-1-like text table (one line per class and classifier), then quality beyond accuracy: the fooling
    gap, the variety of what the prompt leaves free, and the distance to real images of the class."""
    lines = [
        f"{report.num_images} fresh seeds per class, same seeds and prompts with and without the token; "
        f"tokens trained with {report.classifiers['guiding']} (recipe: {report.recipe})",
        f"{'class':<22}{'kind':<16}{'judged by':<21}{'top-1 without':>14}{'with':>8}{'gain':>8}"
        f"{'top-5 without':>15}{'with':>8}",
    ]
    for row in report.rows:
        for role, name in report.classifiers.items():
            r = row.accuracy[name]
            b1, a1 = 100 * r[WITHOUT]["top1"], 100 * r[WITH]["top1"]
            b5, a5 = 100 * r[WITHOUT]["top5"], 100 * r[WITH]["top5"]
            judge = f"{name}" + (" (guide)" if role == "guiding" else "")
            lines.append(f"{row.target.label:<22}{row.target.kind:<16}{judge:<21}{b1:>13.1f}%{a1:>7.1f}%"
                         f"{a1 - b1:>+7.1f}{b5:>14.1f}%{a5:>7.1f}%")
    lines += ["", "variety (entropy in bits of what the prompt leaves free, without -> with the token; diversity: "
              "the feature index any model has, with / without), fooling gap "
              "(guide minus held-out top-1 with the token), leak (points of the images the held-out judge puts in "
              "classes that rise with the token), Frechet distance to real renders of the class "
              f"(features of {report.classifiers['held_out']}; lower is closer)",
              f"{'class':<22}{'colour bits':>14}{'all attributes':>17}{'worst ratio':>13}{'diversity':>11}"
              f"{'fooling gap':>13}{'leak':>7}{'Frechet without':>17}{'with':>8}"]
    for row in report.rows:
        q = row.quality
        v, fd, gap = q.get("variety", {}), q.get("frechet", {}), q.get("fooling_gap")
        colour = f"{v[WITHOUT]['color']:.2f} -> {v[WITH]['color']:.2f}" if WITH in v else "-"
        total = f"{v[WITHOUT]['total']:.2f} -> {v[WITH]['total']:.2f}" if WITH in v else "-"
        worst = f"{worst_variety_ratio(q):.2f}" if WITH in v else "-"
        gap_text = "-" if gap is None else f"{100 * gap:+.1f}"
        ratio = q.get("diversity", {}).get("ratio")
        diversity = "-" if ratio is None else f"x{ratio:.2f}"
        points = q.get("leak", {}).get("points")
        leak = "-" if points is None else f"{100 * points:.1f}"
        fds = (f"{fd['without']:>17.2f}{fd['with']:>8.2f}" if fd.get("with") is not None else f"{'-':>17}{'-':>8}")
        lines.append(f"{row.target.label:<22}{colour:>14}{total:>17}{worst:>13}{diversity:>11}{gap_text:>13}{leak:>7}"
                     f"{fds}")
    return "\n".join(lines)


def worst_variety_ratio(quality: dict) -> float:
    """The smallest with / without entropy ratio over the attributes that vary without the token."""
    ratios = [r for k, r in quality.get("variety", {}).get("ratio", {}).items() if r is not None and k != "total"]
    return min(ratios) if ratios else float("nan")
