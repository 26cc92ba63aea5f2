"""`dct demo`: the paper's Table 1 in miniature, on the built-in demo world (CPU, nothing to download).

For each demo class (one whose prompt word is shared with another class, one that differs from its sibling
only in a small detail) a class token is trained with the world's guiding classifier; then 64 fresh seeds are
generated with and without the token, same seeds and prompts, and judged by the guiding classifier and by a
held-out classifier of another architecture.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import DEMO_DEPTH, DEMO_STEPS, TrainConfig
from .errors import DCTError
from .evaluation import WITH, WITHOUT, compare_with_token
from .files import atomic_write
from .images import make_grid, save_image
from .tokens import sanitize_name, save_class_token
from .training import StepRecord, train_class_token
from .world import SAMPLING, load_world_backend, load_world_classifier


@dataclass(frozen=True)
class DemoClass:
    label: str  # the classifiers' class
    word: str  # the coarse word the prompts use (never names the class itself)
    kind: str  # what makes it hard


DEMO_CLASSES: tuple[DemoClass, ...] = (
    DemoClass("toy kite", "kite", "ambiguous word"),
    DemoClass("red-throated warbler", "bird", "fine detail"),
)
DEMO_TEMPLATES = ("a photo of a {token} {label}", "a {token} {label}")
EVAL_FIRST_SEED = 100_000  # fresh seeds: far from the training seeds


def demo_config(steps: int = DEMO_STEPS, backprop_depth: int = DEMO_DEPTH, seed: int = 0, **overrides) -> TrainConfig:
    settings = dict(
        templates=DEMO_TEMPLATES, batch_size=8, lr=5e-2, max_steps=steps, backprop_depth=backprop_depth,
        fresh_seeds=True, accuracy_threshold=1.0, patience=steps, sampling=SAMPLING, seed=seed, checkpointing=False,
    )
    return TrainConfig(**{**settings, **overrides})


@dataclass
class DemoRow:
    target: DemoClass
    accuracy: dict[str, dict[str, dict]]  # classifier name -> condition -> {"top1", "top5"}
    train_steps: int
    train_seconds: float
    stopped: str
    token_path: Path


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

    def to_json(self) -> dict:
        return {
            "world": "dct demo world (procedural 32x32 scenes)",
            "classifiers": self.classifiers,
            "backprop_depth": self.config.backprop_depth,
            "train_steps_max": self.config.max_steps,
            "batch_size": self.config.batch_size,
            "sampling": {"steps": self.config.sampling.steps, "guidance": self.config.sampling.guidance},
            "num_images": self.num_images,
            "cancelled": self.cancelled,
            "first_seed": EVAL_FIRST_SEED,
            "templates": list(self.config.templates),
            "classes": [
                {"label": r.target.label, "prompt_word": r.target.word, "kind": r.target.kind,
                 "train_steps": r.train_steps, "train_seconds": round(r.train_seconds, 1), "stopped": r.stopped,
                 "token": str(r.token_path), "accuracy": r.accuracy}
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
    steps: int = DEMO_STEPS,
    backprop_depth: int = DEMO_DEPTH,
    num_images: int = 64,
    seed: int = 0,
    overwrite: bool = True,
    json_path: str | Path | None = None,
    world_dir: str | Path | None = None,
    overrides: dict | None = None,
    on_class: Callable[[DemoClass], None] | None = None,
    on_step: Callable[[StepRecord, torch.Tensor], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> DemoReport:
    out = Path(out_dir)
    backend = load_world_backend(folder=world_dir)
    guide, held_out = (load_world_classifier(role, world_dir) for role in ("guide", "held-out"))
    judges = {guide.name: guide, held_out.name: held_out}
    config = demo_config(steps, backprop_depth, seed, **(overrides or {}))
    config.validate()
    seeds = list(range(EVAL_FIRST_SEED, EVAL_FIRST_SEED + num_images))
    report = DemoReport([], {"guiding": guide.name, "held_out": held_out.name}, config, num_images)
    grid_rows = []
    for target in _select(classes):
        if on_class is not None:
            on_class(target)
        cfg = TrainConfig(**{**config.__dict__, "init_word": target.word})
        started = time.perf_counter()
        result = train_class_token(
            backend, guide, guide.class_index(target.label), target.word, cfg,
            name=sanitize_name(target.label), on_step=on_step,
            should_cancel=should_cancel,
            metadata={"class_label": target.label, "classifier": guide.name, "base_model": "dct demo world",
                      "templates": "|".join(cfg.templates)},
        )
        seconds = time.perf_counter() - started
        if result.history:  # the best token so far is kept, also when cancelled
            report.token_paths.append(
                save_class_token(result.token, out / f"{result.token.name}.safetensors", overwrite=overwrite)
            )
        if result.stopped == "cancelled" or (should_cancel is not None and should_cancel()):
            report.cancelled = True
            break
        vectors = result.token.for_encoders(backend.encoders)
        accuracy, images = compare_with_token(
            backend, judges, target.label, target.word, cfg.templates, vectors, seeds, SAMPLING, chunk=32,
            should_cancel=should_cancel,
        )
        if should_cancel is not None and should_cancel():  # the evaluation is incomplete: no numbers from it
            report.cancelled = True
            break
        report.rows.append(DemoRow(target, accuracy, len(result.history), seconds, result.stopped,
                                   report.token_paths[-1]))
        grid_rows += [images[WITHOUT][:8], images[WITH][:8]]
    if grid_rows:
        report.grid_path = save_image(make_grid(grid_rows, min_cell=64), out / "before-after.png")
    if json_path is not None:
        report.json_path = atomic_write(json_path, json.dumps(report.to_json(), indent=2).encode())
    return report


def format_table(report: DemoReport) -> str:
    """The Table-1-like text table: one line per class and classifier."""
    lines = [
        f"{report.num_images} fresh seeds per class, same seeds and prompts with and without the token; "
        f"tokens trained with {report.classifiers['guiding']} (K = {report.config.backprop_depth})",
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
    return "\n".join(lines)
