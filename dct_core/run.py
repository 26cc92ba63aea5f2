"""One training run, the same for every front end (``dct train``, the ComfyUI node, ``dct demo``):
check where the token will go, train, describe the token in one metadata schema, save it (never losing it),
and draw before/after images on fixed seeds.

The token file's metadata (safetensors header, keys prefixed ``dct.``; hosts ignore them) is described in
``METADATA_KEYS`` and in the README ("Token files"), for people who read it in other tools.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .backend import Backend, Vectors
from .classifiers import Classifier
from .config import DEFAULT_PRESET, SamplingConfig, TrainConfig
from .errors import DCTError, TokenSaveError
from .generation import generate_images
from .prompts import fill_label, strip_token
from .tokens import check_save_target, save_class_token
from .training import StepRecord, TrainResult, train_class_token

METADATA_FORMAT = "dct-token/1"
METADATA_KEYS: dict[str, str] = {
    "format": f"schema of these keys ({METADATA_FORMAT})",
    "class_index": "the target class's index in the classifier",
    "class_label": "the classifier's name for the class",
    "prompt_label": "the class as written in the training prompts (e.g. 'bird' for a species)",
    "target": "'on' (raise the class / attribute) or 'off' (multi-label: train toward its absence)",
    "classifier": "the guiding classifier (spec or file name)",
    "base_model": "the diffusion model the token was trained on",
    "trigger": "the trigger word (the file name, as hosts use it)",
    "recipe": "the named preset the settings started from",
    "templates": "the training prompt templates, a JSON list",
    "init_word": "the word whose embedding started the token",
    "num_vectors": "vectors in the token",
    "lr": "AdamW learning rate",
    "batch_size": "images per optimization step",
    "seed": "first training seed",
    "fresh_seeds": "'true' when each step drew new seeds",
    "backprop_depth": "sampling steps taken with gradient (K)",
    "max_steps": "the step budget",
    "resolution": "training image size in pixels",
    "sampling_steps": "sampling steps per training image",
    "guidance": "classifier-free guidance scale while training",
    "sampler": "sampler and scheduler while training",
    "steps": "the optimization step the saved token comes from (the best one)",
    "accuracy": "guiding classifier's batch accuracy at that step",
    "loss": "the loss at that step",
    "trained_steps": "optimization steps run",
    "stopped": "why training stopped: threshold, patience, max_steps, cancelled or non-finite",
}


@dataclass
class TrainJob:
    """What to train and where it goes. ``out`` None: keep the token in memory only."""

    backend: Backend
    classifier: Classifier
    target: int
    config: TrainConfig
    name: str = "class-token"  # the trigger word
    prompt_label: str | None = None  # default: the classifier's name for the class
    target_on: bool = True
    out: Path | None = None
    overwrite: bool = False
    overwrite_hint: str = "allow overwriting or choose another name"  # how this front end says "overwrite"
    recipe: str = DEFAULT_PRESET
    base_model: str = ""
    classifier_name: str | None = None
    sampler: str = ""
    cancel_exceptions: tuple[type[BaseException], ...] = ()  # the host's "cancel" raised mid-step

    @property
    def label(self) -> str:
        return self.prompt_label or self.classifier.class_name(self.target)


@dataclass
class RunOutcome:
    result: TrainResult
    path: Path | None = None  # where the token was saved
    save_error: str | None = None  # the save failed: what happened and where the token was kept instead


def token_metadata(job: TrainJob) -> dict[str, str]:
    """The settings part of the schema (the result part is added after training)."""
    c, s = job.config, job.config.sampling
    meta = {
        "format": METADATA_FORMAT, "class_index": str(job.target),
        "class_label": job.classifier.class_name(job.target), "prompt_label": job.label,
        "target": "on" if job.target_on else "off",
        "classifier": job.classifier_name or getattr(job.classifier, "name", type(job.classifier).__name__),
        "base_model": job.base_model, "trigger": job.name, "recipe": job.recipe,
        "templates": json.dumps(list(c.templates)), "init_word": c.init_word, "num_vectors": str(c.num_vectors),
        "lr": str(c.lr), "batch_size": str(c.batch_size), "seed": str(c.seed),
        "fresh_seeds": str(c.fresh_seeds).lower(), "backprop_depth": str(c.backprop_depth),
        "max_steps": str(c.max_steps), "resolution": str(s.resolution), "sampling_steps": str(s.steps),
        "guidance": str(s.guidance), "sampler": job.sampler or s.scheduler,
    }
    return {k: v for k, v in meta.items() if k in METADATA_KEYS}


def check_job(job: TrainJob) -> Path | None:
    """Everything that can be checked before a long training: settings, class, the save target."""
    job.config.validate()
    if not 0 <= job.target < job.classifier.num_classes:
        raise DCTError(f"target class {job.target} is outside the classifier's {job.classifier.num_classes} classes.")
    if job.out is None:
        return None
    return check_save_target(job.out, overwrite=job.overwrite, overwrite_hint=job.overwrite_hint)


def run_training(
    job: TrainJob,
    *,
    on_step: Callable[[StepRecord, torch.Tensor], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> RunOutcome:
    """Check, train, save. A cancelled run still saves the best token so far; a save that fails keeps the
    token in a fallback file (``RunOutcome.save_error`` says where) instead of losing the training."""
    out = check_job(job)
    result = train_class_token(job.backend, job.classifier, job.target, job.label, job.config, name=job.name,
                               on_step=on_step, should_cancel=should_cancel, metadata=token_metadata(job),
                               target_on=job.target_on, cancel_exceptions=job.cancel_exceptions)
    result.token.metadata.update(trained_steps=str(len(result.history)), stopped=result.stopped)
    outcome = RunOutcome(result)
    if out is None or not result.history:
        return outcome
    try:
        outcome.path = save_class_token(result.token, out, overwrite=job.overwrite, fallback=True,
                                        overwrite_hint=job.overwrite_hint)
    except TokenSaveError as exc:
        outcome.save_error = str(exc)
    return outcome


def before_after(
    backend: Backend, vectors: Vectors, templates: Sequence[str], label: str, seeds: Sequence[int],
    sampling: SamplingConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images on the same seeds and prompt (the first template) without and with the token."""
    prompts = [fill_label(templates[0], label)] * len(seeds)
    with torch.no_grad():
        before = generate_images(backend, [strip_token(p) for p in prompts], seeds, sampling)
        after = generate_images(backend, prompts, seeds, sampling, vectors)
    return before, after
