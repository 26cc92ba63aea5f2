"""Training a class token inside the webui: one job at a time, on the loaded checkpoint, through the engine's one
run path (dct_core.jobs.run), shared by the tab and the HTTP API.

A training holds the webui's own queue lock for its whole length, so a txt2img never runs on the model
mid-training, nor a training mid-generation (the later one waits; a second training is refused). Progress goes
to ``status()`` and to the webui's own progress state; the webui's Interrupt button and ``interrupt()`` both stop
at the next step and keep the best token. The token is saved into the webui's embeddings folder and the embedding
database reloaded, so ``<name>`` works in the next prompt.
"""

from __future__ import annotations

import base64
import io
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from dct_core.config import DEFAULT_PRESET, PRESETS, preset_config
from dct_core.errors import DCTError
from dct_core.formats.images import make_grid
from dct_core.formats.plot import training_plot
from dct_core.formats.tokens import sanitize_name, token_path
from dct_core.jobs.run import RunHooks, TrainJob, before_after, execute, plan_run
from dct_core.method.evaluation import diversity_line
from dct_core.method.host_weights import trainable_weights
from dct_core.settings import BACKEND, GENERATION, TRAINING, WEBUI, from_request, setting

from . import classifiers, host
from .backend import SCHEDULERS, WebuiBackend

OVERWRITE_HINT = "tick 'Overwrite' (API: \"overwrite\": true) or choose another name"
BEFORE_AFTER_SEEDS = 4
NATIVE_SDXL = 1024


class Busy(DCTError):
    """A training already runs."""


def option_names() -> list[str]:
    """The settings a webui training takes by name (``options`` of /dct/v1/train, the tab's "More settings")."""
    from dct_core.settings import SETTINGS

    return [s.name for s in SETTINGS if WEBUI in s.fronts and s.section in (TRAINING, GENERATION)
            and s.name != "max_steps"] + ["scheduler"]


@dataclass
class TrainRequest:
    """What the tab and POST /dct/v1/train give: the classifier, the class, the budget, where it goes."""

    classifier: str
    target_class: str
    timm_architecture: str = ""
    labels: str = ""
    steps: int | None = None  # None: the recipe's max_steps
    save_name: str = "class-token"
    overwrite: bool = False
    recipe: str = DEFAULT_PRESET
    options: Mapping[str, Any] = field(default_factory=dict)
    allow_torchscript: bool = False

    @classmethod
    def from_json(cls, body: Any) -> TrainRequest:
        """A request body, checked: unknown fields and wrong types are named."""
        if not isinstance(body, dict):
            raise DCTError("the body must be a JSON object with at least 'classifier' and 'target_class'.")
        known = {"classifier", "target_class", "timm_architecture", "labels", "steps", "save_name", "overwrite",
                 "recipe", "options", "allow_torchscript"}
        unknown = sorted(set(body) - known)
        if unknown:
            raise DCTError(f"unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))} (other "
                           "settings go in 'options').")
        for name in ("classifier", "target_class"):
            if not isinstance(body.get(name), (str, int)) or str(body.get(name)).strip() == "":
                raise DCTError(f"'{name}' is required (a name from models/classifiers; a class name or index).")
        for name in ("timm_architecture", "labels", "save_name", "recipe"):
            if name in body and not isinstance(body[name], str):
                raise DCTError(f"'{name}' must be text, got {body[name]!r}.")
        for name in ("overwrite", "allow_torchscript"):
            if name in body and not isinstance(body[name], bool):
                raise DCTError(f"'{name}' must be true or false, got {body[name]!r}.")
        options = body.get("options", {}) or {}
        if not isinstance(options, dict):
            raise DCTError("'options' must be an object of settings by name, e.g. {\"resolution\": 64}.")
        return cls(classifier=str(body["classifier"]), target_class=str(body["target_class"]),
                   timm_architecture=body.get("timm_architecture", ""), labels=body.get("labels", ""),
                   steps=from_request("max_steps", body.get("steps")), save_name=body.get("save_name", "class-token"),
                   overwrite=body.get("overwrite", False), recipe=body.get("recipe", DEFAULT_PRESET),
                   options=options, allow_torchscript=body.get("allow_torchscript", False))

    def settings(self) -> tuple[dict[str, Any], str]:
        """The engine settings that are set (checked, by name) and the scheduler."""
        if self.recipe not in PRESETS:
            raise DCTError(f"unknown recipe {self.recipe!r}; choose one of: {', '.join(PRESETS)}.")
        known = option_names()
        unknown = sorted(set(self.options) - set(known))
        if unknown:
            raise DCTError(f"unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}.")
        scheduler = self.options.get("scheduler") or "normal"
        if scheduler not in SCHEDULERS:
            raise DCTError(f"unknown scheduler {scheduler!r}; choose one of: {', '.join(SCHEDULERS)}.")
        values = {k: from_request(k, v) for k, v in self.options.items() if k != "scheduler"}
        return {k: v for k, v in values.items() if v is not None and setting(k).section != BACKEND}, scheduler


@dataclass
class Status:
    """What GET /dct/v1/status answers and the tab shows."""

    phase: str = "idle"  # idle | waiting | loading | training | drawing | done | interrupted | failed
    label: str = ""
    step: int = 0
    steps: int = 0
    loss: float | None = None
    accuracy: float | None = None
    best_step: int | None = None
    best_accuracy: float | None = None
    message: str = ""
    history: list[tuple[float, float]] = field(default_factory=list)  # (loss, accuracy) per step
    started: float = 0.0
    preview: Any = None  # the current batch (PIL image), not sent by the API

    def as_json(self) -> dict[str, Any]:
        data = {k: v for k, v in vars(self).items() if k not in ("preview", "history")}
        data["losses"] = [h[0] for h in self.history]
        data["accuracies"] = [h[1] for h in self.history]
        data["seconds"] = round(time.time() - self.started, 1) if self.started else 0.0
        return data


class Trainer:
    """The one training the webui runs at a time."""

    def __init__(self) -> None:
        self._running = threading.Lock()
        self._interrupt = threading.Event()
        self.status = Status()

    def busy(self) -> bool:
        return self._running.locked()

    def interrupt(self) -> bool:
        """Stop the running training at its next step, keeping the best token; False when none runs."""
        if not self.busy():
            return False
        self._interrupt.set()
        return True

    def run(self, request: TrainRequest) -> dict[str, Any]:
        """Train (blocking) and answer what the API returns: the token file, steps, accuracy, before/after."""
        if not self._running.acquire(blocking=False):
            raise Busy(f"a training already runs ({self.status.label}, step {self.status.step}/{self.status.steps})"
                       "; wait for it or interrupt it (POST /dct/v1/interrupt).")
        self._interrupt.clear()
        self.status = Status(phase="waiting", message="waiting for the webui's queue", started=time.time())
        try:
            return self._run(request)
        except BaseException as exc:
            self.status.phase, self.status.message = "failed", str(exc)
            raise
        finally:
            self._running.release()

    def _cancelled(self) -> bool:
        state = host.require("state")
        return self._interrupt.is_set() or bool(getattr(state, "interrupted", False))

    def _run(self, request: TrainRequest) -> dict[str, Any]:
        options, scheduler = request.settings()  # bad input fails before anything waits or loads
        name = sanitize_name(request.save_name) if request.save_name.strip() else None
        classifier = classifiers.load(request.classifier, request.timm_architecture, request.labels,
                                      allow_torchscript=request.allow_torchscript)
        target = classifier.class_index(request.target_class)
        label = classifier.class_name(target)
        self.status.label = f"{label} ({target})"
        state, lock = host.require("state"), host.require("queue_lock")
        with lock:  # the webui's job lock: no txt2img on the model meanwhile
            state.begin(job="dct_train")
            try:
                return self._train(request, classifier, target, label, name, options, scheduler, state)
            finally:
                state.end()

    def _train(self, request, classifier, target, label, name, options, scheduler, state) -> dict[str, Any]:
        self.status.phase, self.status.message = "loading", ""
        model = host.sd_model()
        if getattr(model, "is_sdxl", False) and "resolution" not in options:
            options = {"resolution": NATIVE_SDXL, **options}
        config = preset_config(request.recipe, **options, max_steps=request.steps)
        out = token_path(host.embeddings_dir(), name) if name else None
        plan = plan_run(TrainJob(None, classifier, target, config, name=name or "class-token", out=out,
                                 overwrite=request.overwrite, overwrite_hint=OVERWRITE_HINT, recipe=request.recipe,
                                 base_model=str(getattr(model, "sd_model_checkpoint", "") or ""),
                                 classifier_name=request.classifier))
        self.status.steps = config.max_steps
        state.job_count, state.sampling_steps = 1, config.max_steps

        def on_step(record, images):
            self.status.phase = "training"
            self.status.step, self.status.loss, self.status.accuracy = record.step + 1, record.loss, record.accuracy
            self.status.history.append((record.loss, record.accuracy))
            if config.keep != "average":  # an averaged token has no best step to show
                best = max(self.status.history, key=lambda h: (h[1], -h[0]))
                self.status.best_step = self.status.history.index(best) + 1
                self.status.best_accuracy = best[1]
            self.status.preview = make_grid([images], min_cell=128)
            state.sampling_step = record.step + 1

        self.status.phase = "training"
        with torch.inference_mode(False), torch.enable_grad():
            backend = WebuiBackend(model, scheduler=scheduler, checkpointing=config.checkpointing)
            with trainable_weights([classifier.module]):  # a classifier loaded under inference mode
                outcome = execute(plan.with_backend(backend), RunHooks(on_step=on_step, should_cancel=self._cancelled))
            result = outcome.result
            error = outcome.error()
            if error is not None:
                raise DCTError(error)
            if outcome.path is not None:
                host.reload_embeddings(model)
            self.status.phase = "drawing"
            vectors = {k: v.to(backend.device) for k, v in result.token.vectors.items()}
            seeds = list(range(config.seed, config.seed + BEFORE_AFTER_SEEDS))
            before, after = before_after(backend, vectors, config.templates, label, seeds, config.sampling)
        best = result.best
        grid = make_grid([before, after], min_cell=min(256, config.sampling.resolution),
                         row_labels=["without\ntoken", "with\ntoken"])
        plot = training_plot([r.loss for r in result.history], [r.accuracy for r in result.history])
        self.status.phase = "interrupted" if outcome.cancelled else "done"
        self.status.message = outcome.summary(self.status.label)
        diversity = diversity_line(classifier, before, after)
        return {
            "token": str(outcome.path) if outcome.path else None,
            "name": outcome.path.stem if outcome.path else None,
            "class_index": target, "class_label": label,
            "steps": len(result.history), "best_step": best.step + 1 if best else None,
            "accuracy": best.accuracy if best else None, "loss": best.loss if best else None,
            "token_source": result.token_source() or None,
            "stopped": result.stopped, "summary": self.status.message, "diversity": diversity,
            "recipe": request.recipe,
            "before_after": png_base64(grid), "plot": png_base64(plot),
            "_images": {"before_after": grid, "plot": plot},
        }


def png_base64(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


TRAINER = Trainer()
