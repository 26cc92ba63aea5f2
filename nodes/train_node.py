"""Train Discriminative Token: the engine on the host's own MODEL, CLIP and VAE, with progress, previews
and a clean Cancel; the token is saved atomically to models/embeddings.

``DCTTrainToken`` has the few inputs an artist needs plus an optional DCT Training Options node; the deprecated
``DCTTrainClassToken`` (legacy_train_node.py) runs the same :func:`train`."""

from __future__ import annotations

import torch

from dct_core.config import DEFAULT_PRESET, PRESETS, config_values
from dct_core.errors import DCTError
from dct_core.formats.images import make_grid
from dct_core.formats.plot import training_plot
from dct_core.formats.tokens import sanitize_name, token_path
from dct_core.jobs.run import RunHooks, TrainJob, before_after, execute, plan_run
from dct_core.method.evaluation import diversity_line
from dct_core.settings import setting

from .adapters import host_internals as host
from .adapters import model_folders as folders
from .adapters.autograd import autograd_enabled, out_of_place_clip, trainable_weights
from .adapters.comfy_backend import ComfyBackend
from .adapters.decoders import installed as installed_decoders
from .adapters.decoders import load_taesd
from .adapters.images import captioned, pil_to_host_image
from .adapters.node_api import io, schema_fields, ui
from .adapters.settings_widgets import describe, widget
from .adapters.sockets import CATEGORY, ClassifierSocket, ClassTokenSocket, TrainingOptionsSocket
from .adapters.static_models import taesd_in_place_of
from .training_options import CHECKPOINT_VAE, TrainingOptions

OVERWRITE_HINT = "enable 'overwrite' or change save_name"
PROGRESS_EVENT = "dct.train.progress"  # each finished step: the live chart
STARTED_EVENT = "dct.train.started"  # training begins: the frontend clears the previous run's chart and outputs
STOPPED_EVENT = "dct.train.stopped"  # Cancel: which step's token was saved, and where
SAVED_EVENT = "dct.train.saved"  # a token file was written: the frontend refreshes its model lists
DISPLAY_NAME = "Train Discriminative Token (DCT)"


def subject_inputs() -> list:
    """What both Train nodes start with: the models, the classifier and the class."""
    return [
        io.Model.Input("model", tooltip="The diffusion model to train the token for (SD1.x, SD2.x, SDXL)."),
        io.Clip.Input("clip", tooltip="Its text encoder; the token gets one vector per encoder."),
        io.Vae.Input("vae", tooltip="Decodes the generated latents for the classifier."),
        ClassifierSocket.Input("classifier", tooltip="The teacher, from Load Classifier (DCT)."),
        io.String.Input("target_class", default="tiger cat",
                        tooltip="The class to steer toward: a label name (any synonym, any case) or an index. A "
                                "miss lists close names."),
    ]


def outputs() -> list:
    return [
        ClassTokenSocket.Output("CLASS_TOKEN", display_name="class token"),
        io.Image.Output("PLOT", display_name="loss / accuracy"),
        io.Image.Output("BEFORE_AFTER", display_name="before / after"),
    ]


class TrainToken(io.ComfyNode):
    """The simple face: model, clip, vae, classifier, target class, steps, save name, overwrite and recipe; every
    other setting comes from the recipe or from an optional DCT Training Options node."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DCTTrainToken",
            **schema_fields(search_aliases=[
                "textual inversion", "train embedding", "class token", "classifier guidance", "DCT"]),
            display_name=DISPLAY_NAME,
            category=CATEGORY,
            description="Learns a class token from a classifier on the connected model (its LoRAs and patches "
                        "apply). Saves it to models/embeddings so embedding:<name> works in any prompt. More "
                        "settings: plug a DCT Training Options node into 'options'.",
            inputs=[
                *subject_inputs(),
                widget(setting("max_steps")),
                io.String.Input("save_name", default="class-token",
                                tooltip="Saved as models/embeddings/<name>.safetensors; use embedding:<name> in "
                                        "prompts. Empty: do not save."),
                io.Boolean.Input("overwrite", default=False, tooltip="Replace an existing token file of that name."),
                io.Combo.Input("recipe", options=list(PRESETS), default=DEFAULT_PRESET,
                               tooltip=f"The training recipe: every setting not on this node comes from it, unless "
                                       f"a DCT Training Options node sets it. {DEFAULT_PRESET}: the measured "
                                       "default (README, 'Recipes'); varied: keeps the prompt's variety, about "
                                       "twice the cost per step; paper: Schwartz et al. exactly."),
                TrainingOptionsSocket.Input("options", optional=True,
                                            tooltip="From DCT Training Options: learning rate, batch size, prompts, "
                                                    "sampler, resolution, seed and more. Not connected: all the "
                                                    "recipe's."),
            ],
            outputs=outputs(),
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, clip, vae, classifier, target_class, max_steps, save_name, overwrite, recipe,
                options=None) -> io.NodeOutput:
        return train(model, clip, vae, classifier, target_class, max_steps, save_name, overwrite, recipe,
                     options or TrainingOptions(), unique_id(cls))


def unique_id(node: type[io.ComfyNode]):
    return node.hidden.unique_id if node.hidden is not None else None


def _native_resolution(model) -> int | None:
    """The model's training size where it is not the recipes' 512: 1024 for SDXL-family models (their latent
    format, comfy.latent_formats.SDXL or a subclass, told by name: no host internal is needed), None otherwise."""
    get = getattr(model, "get_model_object", None)
    fmt = get("latent_format") if get is not None else None
    return 1024 if any(c.__name__ == "SDXL" for c in type(fmt).__mro__) else None


def train(model, clip, vae, classifier, target_class: str, max_steps: int, save_name: str, overwrite: bool,
          recipe: str, options: TrainingOptions, node_id) -> io.NodeOutput:
    """What both Train nodes run: the recipe with ``options`` over it (unset = the recipe's), ``max_steps`` (0 =
    the recipe's), progress and previews on node ``node_id``, the token saved under ``save_name``."""
    try:  # everything checked before anything is built: a bad name or setting costs nothing
        target = classifier.class_index(target_class)
        config = options.train_config(recipe, max_steps=max_steps or None,
                                      default_resolution=_native_resolution(model))
        name = sanitize_name(save_name) if save_name.strip() else None
        plan = plan_run(TrainJob(None, classifier, target, config, name=name or "class-token",
                                 out=token_path(folders.embeddings_dir(), name) if name else None,
                                 overwrite=overwrite, overwrite_hint=OVERWRITE_HINT, recipe=recipe,
                                 base_model=type(model.model).__name__, cancel_exceptions=host.interrupt_exceptions()))
    except DCTError as exc:
        raise ValueError(str(exc)) from exc
    label = classifier.class_name(target)
    subject = f"{label} ({target})"  # how the node's texts name the class
    steps = config.max_steps
    preview_every = options.host("preview_every")
    bar = host.progress_bar(steps, node_id)

    def on_step(record, images):
        if host.interrupted():  # the loop stops at its next poll and keeps the best token
            _send_progress(node_id, record, label)  # the chart still gets the step (the bar would raise the Cancel)
            return
        preview = None
        if preview_every and record.step % preview_every == 0:
            caption = f"step {record.step + 1}/{steps}  loss {record.loss:.3f}  accuracy {record.accuracy:.2f}"
            preview = ("JPEG", captioned(make_grid([images], min_cell=128), caption), 768)
        bar.update_absolute(record.step + 1, steps, preview)
        _send_progress(node_id, record, label)

    _send_event(STARTED_EVENT, node_id, {"label": subject, "steps": steps})
    # The classifier was loaded by a node, i.e. under inference mode: autograd gets plain aliases of its weights.
    with autograd_enabled(), out_of_place_clip(), trainable_weights([classifier.module]):
        decoder, decoder_note = _decoder(options.host("decoder"), model, vae)
        backend = ComfyBackend(model, clip, vae, sampler_name=options.host("sampler_name"),
                               scheduler=options.host("scheduler"), decoder=decoder)
        outcome = execute(plan.with_backend(backend), RunHooks(on_step=on_step, should_cancel=host.interrupted))
        result = outcome.result
        if outcome.path is not None:
            _send_event(SAVED_EVENT, node_id, {"path": str(outcome.path), "name": outcome.path.name})
        if outcome.save_error is not None:
            raise RuntimeError(outcome.save_error)
        if outcome.cancelled:  # say on the node what the Cancel kept, before handing the Cancel back
            _send_event(STOPPED_EVENT, node_id, _stopped(outcome, subject))
        if result.cancel_exception is not None:
            raise result.cancel_exception  # the host cancelled mid-step (and cleared its flag): hand it back
        if outcome.cancelled:
            host.throw_if_interrupted()  # hand the Cancel back to the host
        if not result.history and not outcome.cancelled:  # diverged at its first step: nothing to show
            raise RuntimeError(outcome.error())
        vectors = {k: v.to(backend.device) for k, v in result.token.vectors.items()}
        seeds = list(range(config.seed, config.seed + min(config.batch_size, 4)))
        try:
            before, after = before_after(backend, vectors, config.templates, label, seeds, config.sampling)
        except host.interrupt_exceptions():  # cancelled after training, while drawing the before/after images
            _send_event(STOPPED_EVENT, node_id, _stopped(outcome, subject, after_training=True))
            raise
    plot = training_plot([r.loss for r in result.history], [r.accuracy for r in result.history])
    summary = (f"{subject}: {outcome.summary()}\n{diversity_line(classifier, before, after)}\nrecipe {recipe}; "
               f"settings: {describe(config_values(config))}{decoder_note}")
    grid = pil_to_host_image(make_grid([before, after], min_cell=min(256, config.sampling.resolution),
                                       row_labels=["without\ntoken", "with\ntoken"]))
    return io.NodeOutput(result.token, pil_to_host_image(plot), grid, ui=ui.PreviewText(summary))


def _decoder(choice: str, model, vae) -> tuple[torch.nn.Module | None, str]:
    """The differentiable decoder for the training signal (None: the checkpoint VAE) and a line for the node's
    output when the choice was not the user's: a VAE loaded with dynamic VRAM gives way to an installed TAESD."""
    if choice == CHECKPOINT_VAE:
        stand_in = taesd_in_place_of(vae, model, installed_decoders())
        if stand_in is None:
            return None, ""
        return load_taesd(stand_in, model), (f"\ntraining signal: {stand_in} (the VAE is loaded with dynamic VRAM, "
                                             "which no gradient may pass through)")
    return load_taesd(choice, model), ""


def _stopped(outcome, subject: str, after_training: bool = False) -> dict:
    """What the node says after a Cancel: where it stopped, which step's token was kept and where (steps counted
    from 1, as in the result text and on the chart)."""
    result, best = outcome.result, outcome.result.best
    done = len(result.history)
    if after_training:
        head = f"{subject}: cancelled after training ({done} steps), while drawing the before/after images"
    else:
        head = f"{subject}: cancelled at step {done + 1} ({done} steps finished)"
    kept = result.token_source() or (f"best step {best.step + 1}'s token" if best is not None else "")
    accuracy = "last batch accuracy" if result.token_source() else "accuracy"
    if best is not None and outcome.path is not None:
        text = f"{head}; {kept} ({accuracy} {best.accuracy:.2f}) saved to {outcome.path}"
    elif best is not None:
        text = f"{head}; {kept} was not saved (save_name is empty)"
    else:
        text = f"{head}; no step had finished, so no token was saved"
    return {"text": text, "steps": done, "best_step": best.step + 1 if best is not None else None,
            "path": str(outcome.path) if outcome.path is not None else None}


def _send_progress(node_id, record, label: str) -> None:
    _send_event(PROGRESS_EVENT, node_id, {"step": record.step, "loss": record.loss, "accuracy": record.accuracy,
                                          "target_prob": record.target_prob, "label": label})


def _send_event(event: str, node_id, data: dict) -> None:
    """A message to the browser that queued the prompt (web/dct.js listens), when a server runs."""
    try:
        from server import PromptServer
    except ImportError:  # running without the server (scripts, in-process tests)
        return
    server = getattr(PromptServer, "instance", None)
    if server is not None:
        server.send_sync(event, {"node": node_id, **data}, server.client_id)
