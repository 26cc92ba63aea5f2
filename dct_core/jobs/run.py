"""The one run path, the same for every front end (``dct train``, ``dct library``, ``dct demo``, the ComfyUI
node): plan (check the settings, the class and where the token will go, once), execute (train, describe the token
in one metadata schema, keep it by one policy for saved / kept elsewhere / cancelled / diverged), and draw
before/after images on fixed seeds. Front ends only translate their inputs into a TrainJob and show the outcome.

The token file's metadata (safetensors header, keys prefixed ``dct.``; hosts ignore them) is described in
``METADATA_KEYS`` and in the README ("Token files"), for people who read it in other tools.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..classifiers import Classifier
from ..config import DEFAULT_PRESET, SamplingConfig, TrainConfig, config_values
from ..errors import DCTError, TokenSaveError
from ..formats.tokens import check_save_target, save_class_token
from ..method.backend import Backend, Vectors
from ..method.generation import generate_images
from ..method.prompts import fill_label, strip_token
from ..method.training import StepRecord, TrainResult, train_class_token
from ..settings import SETTINGS, format_value, metadata_names

METADATA_FORMAT = "dct-token/1"
_JOB_KEYS: dict[str, str] = {
    "format": f"schema of these keys ({METADATA_FORMAT})",
    "class_index": "the target class's index in the classifier",
    "class_label": "the classifier's name for the class",
    "prompt_label": "the class as written in the training prompts (e.g. 'bird' for a species)",
    "target": "'on' (raise the class / attribute) or 'off' (multi-label: train toward its absence)",
    "classifier": "the guiding classifier (spec or file name)",
    "base_model": "the diffusion model the token was trained on",
    "trigger": "the trigger word (the file name, as hosts use it)",
    "recipe": "the named preset the settings started from",
}
_RESULT_KEYS: dict[str, str] = {
    "sampler": "sampler and scheduler while training",
    "steps": "the optimization step the saved token comes from (the best one; keep=average: the last of the "
             "averaged steps, which are the second half of trained_steps), counted from 0 as in every file saved so "
             "far (what a person reads counts from 1)",
    "accuracy": "guiding classifier's batch accuracy at that step",
    "loss": "the loss at that step",
    "trained_steps": "optimization steps run",
    "stopped": "why training stopped: threshold, patience, max_steps, cancelled or non-finite",
}
# The schema: who the token is for, then every setting the table marks for metadata (by its one name), then
# how training went.
METADATA_KEYS: dict[str, str] = {**_JOB_KEYS, **{s.name: s.help for s in SETTINGS if s.metadata}, **_RESULT_KEYS}


@dataclass
class TrainJob:
    """What to train and where it goes. ``out`` None: keep the token in memory only. ``backend`` may come after
    planning (RunPlan.with_backend), so that a bad setting or save target fails before a model is loaded."""

    backend: Backend | None
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
    cancel_exceptions: tuple[type[BaseException], ...] = ()  # the host's "cancel" raised mid-step
    keep_diverged: bool = True  # save the best finite token of a run that diverged (False: the library retries)

    @property
    def label(self) -> str:
        return self.prompt_label or self.classifier.class_name(self.target)


@dataclass(frozen=True)
class RunPlan:
    """A job whose settings, class and save target were checked (once), ready to run."""

    job: TrainJob
    out: Path | None  # the checked save target (suffix added), or None: in memory only

    def with_backend(self, backend: Backend) -> RunPlan:
        return RunPlan(replace(self.job, backend=backend), self.out)


@dataclass
class RunHooks:
    """What a front end adds to a run: progress and previews, a cancel poll, metadata computed after training
    (and before the save), e.g. a held-out accuracy or the seconds taken."""

    on_step: Callable[[StepRecord, torch.Tensor], None] | None = None
    should_cancel: Callable[[], bool] | None = None
    extra_metadata: Callable[[TrainResult], dict[str, str]] | None = None


@dataclass
class RunOutcome:
    """How a run ended. The one policy, for every front end: the best token is saved whenever a step finished,
    also when cancelled or when the loss later became non-finite (the best finite step's; a job may ask to keep
    nothing of a diverged run instead, as the library does so that the class is tried again); a save that fails
    keeps it in a fallback file (``save_error`` says where)."""

    result: TrainResult
    path: Path | None = None  # where the token was saved
    save_error: str | None = None  # the save failed: what happened and where the token was kept instead

    @property
    def cancelled(self) -> bool:
        return self.result.stopped == "cancelled"

    @property
    def diverged(self) -> bool:
        return self.result.stopped == "non-finite"

    def error(self) -> str | None:
        """Why this run gave no usable token where it was asked for, or None."""
        if self.save_error is not None:
            return self.save_error
        if not self.result.history:
            if self.diverged:
                return ("training diverged: non-finite loss or gradient at its first step; nothing was saved. Lower "
                        "the learning rate (lr) or the guidance.")
            return f"training stopped before its first step finished ({self.result.stopped}); nothing was saved."
        return None

    def diverged_message(self) -> str:
        return (f"training diverged: non-finite loss or gradient at step {len(self.result.history) + 1}. Lower the "
                "learning rate (lr) or the guidance.")

    def summary(self, label: str = "") -> str:
        """One line: why it stopped, the best step (counted from 1, as every progress display), where the token
        went."""
        best = self.result.best
        where = f"; saved {self.path}" if self.path is not None else ""
        head = f"{label}: " if label else ""
        stopped = f"{head}stopped by {self.result.stopped} after {len(self.result.history)} steps"
        if self.result.token_source() and best is not None:
            return f"{stopped}; token: {self.result.token_source()} (last batch accuracy {best.accuracy:.2f}){where}"
        return (f"{stopped}; best step {best.step + 1 if best else '-'} accuracy {best.accuracy if best else 0:.2f}"
                f"{where}")

    def cli_line(self) -> str:
        """The line `dct train` has always printed (scripts read it); its step counted from 1 since 2026-12, as the
        progress lines count."""
        best = self.result.best
        assert best is not None
        return (f"stopped: {self.result.stopped}; best step {best.step + 1}: accuracy {best.accuracy:.2f}, "
                f"loss {best.loss:.4f}")


def token_metadata(job: TrainJob) -> dict[str, str]:
    """The settings part of the schema (the result part is added after training)."""
    values = config_values(job.config)
    meta = {
        "format": METADATA_FORMAT, "class_index": str(job.target),
        "class_label": job.classifier.class_name(job.target), "prompt_label": job.label,
        "target": "on" if job.target_on else "off",
        "classifier": job.classifier_name or getattr(job.classifier, "name", type(job.classifier).__name__),
        "base_model": job.base_model, "trigger": job.name, "recipe": job.recipe,
        **{name: format_value(values[name]) for name in metadata_names()},
        "sampler": getattr(job.backend, "sampler", ""),
    }
    return {k: v for k, v in meta.items() if k in METADATA_KEYS}


def plan_run(job: TrainJob) -> RunPlan:
    """Everything that can be checked before a long training, once: settings, class, the save target."""
    job.config.validate()
    if not 0 <= job.target < job.classifier.num_classes:
        raise DCTError(f"target class {job.target} is outside the classifier's {job.classifier.num_classes} classes.")
    out = None
    if job.out is not None:
        out = check_save_target(job.out, overwrite=job.overwrite, overwrite_hint=job.overwrite_hint)
    return RunPlan(job, out)


def execute(plan: RunPlan, hooks: RunHooks | None = None) -> RunOutcome:
    """Train, then keep the token by the one policy (see RunOutcome)."""
    job, hooks = plan.job, hooks or RunHooks()
    if job.backend is None:
        raise ValueError("execute needs the plan's backend: RunPlan.with_backend(backend).")
    result = train_class_token(job.backend, job.classifier, job.target, job.label, job.config, name=job.name,
                               on_step=hooks.on_step, should_cancel=hooks.should_cancel,
                               metadata=token_metadata(job), target_on=job.target_on,
                               cancel_exceptions=job.cancel_exceptions)
    result.token.metadata.update(trained_steps=str(len(result.history)), stopped=result.stopped)
    outcome = RunOutcome(result)
    if not result.history or (outcome.diverged and not job.keep_diverged):
        return outcome
    if hooks.extra_metadata is not None:
        result.token.metadata.update(hooks.extra_metadata(result))
    if plan.out is None:
        return outcome
    try:
        outcome.path = save_class_token(result.token, plan.out, overwrite=job.overwrite, fallback=True,
                                        overwrite_hint=job.overwrite_hint)
    except TokenSaveError as exc:
        outcome.save_error = str(exc)
    return outcome


def run_training(job: TrainJob, hooks: RunHooks | None = None) -> RunOutcome:
    """Plan and execute in one call (what every front end runs)."""
    return execute(plan_run(job), hooks)


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
