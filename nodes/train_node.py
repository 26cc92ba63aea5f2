"""Train Discriminative Token: the engine on the host's own MODEL, CLIP and VAE, with progress, previews
and a clean Cancel; the token is saved atomically to models/embeddings.

Two nodes share one implementation (:func:`_train`): ``DCTTrainToken``, the few inputs an artist needs plus an
optional DCT Training Options node, and ``DCTTrainClassToken``, the original node with every setting as a widget,
kept (deprecated, out of the node search) so workflows saved with it load and run as before. The frontend restores
a saved node's widgets by position, which is why the simple node is a new node id and the old one never changes."""

from __future__ import annotations

import dataclasses
import inspect

from dct_core.config import DEFAULT_PRESET, PRESETS, preset_config
from dct_core.errors import DCTError
from dct_core.images import make_grid
from dct_core.plot import training_plot
from dct_core.run import TrainJob, before_after, run_training
from dct_core.tokens import check_save_target, sanitize_name, token_path

from . import folders, host
from .comfy_backend import ComfyBackend
from .host_api import io, ui
from .host_autograd import autograd_enabled, out_of_place_clip, trainable_weights
from .images import captioned, pil_to_host_image
from .sockets import CATEGORY, ClassifierSocket, ClassTokenSocket, TrainingOptionsSocket
from .training_options import CHECKPOINT_VAE, TrainingOptions, decoders, from_recipe

OVERWRITE_HINT = "enable 'overwrite' or change save_name"
PROGRESS_EVENT = "dct.train.progress"
DISPLAY_NAME = "Train Discriminative Token (DCT)"
LEGACY_SUFFIX = " (legacy, all settings)"
LEGACY_RECIPE = "paper"  # what the legacy node trained with before it had a recipe input


def _deprecated() -> dict:
    """``is_deprecated=True`` where the host's io.Schema has it (0.3.6x does): the frontend then leaves the node
    out of its search and library but still loads saved workflows with it."""
    return {"is_deprecated": True} if "is_deprecated" in inspect.signature(io.Schema).parameters else {}


def _subject_inputs() -> list:
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


def _outputs() -> list:
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
            display_name=DISPLAY_NAME,
            category=CATEGORY,
            description="Learns a class token from a classifier on the connected model (its LoRAs and patches "
                        "apply). Saves it to models/embeddings so embedding:<name> works in any prompt. More "
                        "settings: plug a DCT Training Options node into 'options'.",
            inputs=[
                *_subject_inputs(),
                io.Int.Input("steps", default=0, min=0, max=10000,
                             tooltip=from_recipe("Maximum optimization steps", "max_steps")),
                io.String.Input("save_name", default="class-token",
                                tooltip="Saved as models/embeddings/<name>.safetensors; use embedding:<name> in "
                                        "prompts. Empty: do not save."),
                io.Boolean.Input("overwrite", default=False, tooltip="Replace an existing token file of that name."),
                io.Combo.Input("recipe", options=list(PRESETS), default=DEFAULT_PRESET,
                               tooltip=f"The training recipe: every setting not on this node comes from it, unless "
                                       f"a DCT Training Options node sets it. {DEFAULT_PRESET}: the measured "
                                       "default (README, 'Recipes'); paper: Schwartz et al. exactly."),
                TrainingOptionsSocket.Input("options", optional=True,
                                            tooltip="From DCT Training Options: learning rate, batch size, prompts, "
                                                    "sampler, resolution, seed and more. Not connected: all the "
                                                    "recipe's."),
            ],
            outputs=_outputs(),
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, clip, vae, classifier, target_class, steps, save_name, overwrite, recipe,
                options=None) -> io.NodeOutput:
        return _train(model, clip, vae, classifier, target_class, steps, save_name, overwrite, recipe,
                      options or TrainingOptions(), _unique_id(cls))


class TrainClassToken(io.ComfyNode):
    """The original Train node, every setting a widget. Kept as it was, inputs and behaviour, so that workflows
    saved with it load (widget values are restored by position) and run; deprecated, so new graphs use
    DCTTrainToken. Never change its inputs."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        d = preset_config(DEFAULT_PRESET)
        return io.Schema(
            node_id="DCTTrainClassToken",
            display_name=DISPLAY_NAME + LEGACY_SUFFIX,
            category=CATEGORY,
            description="The original Train Discriminative Token node with every setting on it, kept so saved "
                        "workflows run as before. New workflows: Train Discriminative Token (DCT), with DCT "
                        "Training Options for the other settings.",
            inputs=[
                *_subject_inputs(),
                io.String.Input("init_word", default="",
                                tooltip="Word whose embedding starts the token: empty = the recipe's ('a', as the "
                                        "paper for ImageNet); a related word such as 'bird' helps a bird "
                                        "classifier."),
                io.String.Input("templates", default="", multiline=True,
                                tooltip="Training prompts, one per line; {token} marks the class token and "
                                        "{label} the class name. Empty = the recipe's (the paper's two)."),
                io.Int.Input("steps", default=0, min=0, max=10000,
                             tooltip=from_recipe("Maximum optimization steps", "max_steps")),
                io.Float.Input("learning_rate", default=0.0, min=0.0, max=1.0, step=1e-5,
                               tooltip=from_recipe("AdamW learning rate on the token only", "lr")),
                io.Int.Input("batch_size", default=0, min=0, max=64,
                             tooltip=from_recipe("Images (seeds) per step", "batch_size")),
                io.Int.Input("micro_batch", default=0, min=0, max=64,
                             tooltip="Images per forward/backward to save VRAM (0 = the whole batch at once)."),
                io.Float.Input("cfg", default=d.sampling.guidance, min=0.0, max=30.0, step=0.1,
                               tooltip="Classifier-free guidance scale while training."),
                io.Combo.Input("sampler_name", options=host.sampler_names(), default="euler",
                               tooltip="The host sampler for the steps without gradient."),
                io.Combo.Input("scheduler", options=host.scheduler_names(), default="normal",
                               tooltip="The host scheduler (sigmas)."),
                io.Int.Input("sampling_steps", default=d.sampling.steps, min=1, max=200,
                             tooltip="Sampling steps per image (paper: 30)."),
                io.Int.Input("resolution", default=d.sampling.resolution, min=64, max=2048, step=8,
                             tooltip="Image size while training (SD1.x: 512, SDXL: 1024)."),
                io.Int.Input("seed", default=d.seed, min=0, max=0xFFFFFFFF, control_after_generate=False,
                             tooltip="First training seed; the batch uses seed, seed+1, ..."),
                io.Float.Input("accuracy_threshold", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip=from_recipe("Stop once a batch is classified this well",
                                                   "accuracy_threshold")),
                io.Int.Input("patience", default=0, min=0, max=1000,
                             tooltip=from_recipe("Or stop after this many steps without a lower loss", "patience")),
                io.Int.Input("backprop_depth", default=0, min=0, max=50,
                             tooltip="Sampling steps taken with gradient when the recipe takes it at the last "
                                     "steps; 0 = the recipe's (paper: 1, its gradient skipping)."),
                io.Combo.Input("decoder", options=decoders(), default=CHECKPOINT_VAE,
                               tooltip="Decoder for the training signal: the checkpoint's VAE, or a TAESD decoder "
                                       "from models/vae_approx (much cheaper at 512 px)."),
                io.String.Input("save_name", default="class-token",
                                tooltip="Saved as models/embeddings/<name>.safetensors; use embedding:<name> in "
                                        "prompts. Empty: do not save."),
                io.Boolean.Input("overwrite", default=False, tooltip="Replace an existing token file of that name."),
                io.Int.Input("preview_every", default=1, min=0, max=1000,
                             tooltip="Show the current batch on the node every N steps (0: never)."),
                io.Boolean.Input("fresh_seeds", default=False, optional=True,
                                 tooltip="On: new seeds every step whatever the recipe says (the token then fits "
                                         "no particular images). Off: the recipe's choice."),
                # Default "paper", not the pack's default: the frontend gives a widget missing from a saved
                # workflow its default, and workflows saved before this input existed trained with the paper's.
                io.Combo.Input("recipe", options=list(PRESETS), default=LEGACY_RECIPE, optional=True,
                               tooltip=f"The training recipe the settings start from; a setting left at 0 or empty "
                                       f"takes the recipe's value. {DEFAULT_PRESET}: the measured default (README, "
                                       "'Recipes'); paper: Schwartz et al. exactly. Workflows saved before this "
                                       "input existed run as 'paper'."),
            ],
            outputs=_outputs(),
            hidden=[io.Hidden.unique_id],
            **_deprecated(),
        )

    @classmethod
    def execute(cls, model, clip, vae, classifier, target_class, init_word, templates, steps, learning_rate,
                batch_size, micro_batch, cfg, sampler_name, scheduler, sampling_steps, resolution, seed,
                accuracy_threshold, patience, backprop_depth, decoder, save_name, overwrite,
                preview_every, fresh_seeds=False, recipe=None) -> io.NodeOutput:
        options = TrainingOptions.from_widgets(
            init_word=init_word, templates=templates, learning_rate=learning_rate, batch_size=batch_size,
            micro_batch=micro_batch, sampler_name=sampler_name, scheduler=scheduler, seed=seed,
            accuracy_threshold=accuracy_threshold, patience=patience, backprop_depth=backprop_depth,
            decoder=decoder, preview_every=preview_every, fresh_seeds=bool(fresh_seeds))
        # cfg, sampling steps and resolution are plain values on this node (0 never meant "the recipe's")
        options = dataclasses.replace(options, cfg=cfg, sampling_steps=sampling_steps, resolution=resolution)
        recipe = recipe or LEGACY_RECIPE  # an API prompt saved before the recipe input: the paper's, as it ran
        return _train(model, clip, vae, classifier, target_class, steps, save_name, overwrite, recipe, options,
                      _unique_id(cls))


def _unique_id(node: type[io.ComfyNode]):
    return node.hidden.unique_id if node.hidden is not None else None


def _native_resolution(model) -> int | None:
    """The model's training size where it is not the recipes' 512: 1024 for SDXL-family models (their latent
    format, comfy.latent_formats.SDXL or a subclass, told by name: no host internal is needed), None otherwise."""
    get = getattr(model, "get_model_object", None)
    fmt = get("latent_format") if get is not None else None
    return 1024 if any(c.__name__ == "SDXL" for c in type(fmt).__mro__) else None


def _train(model, clip, vae, classifier, target_class: str, steps: int, save_name: str, overwrite: bool,
           recipe: str, options: TrainingOptions, unique_id) -> io.NodeOutput:
    """What both Train nodes run: the recipe with ``options`` over it (unset = the recipe's), ``steps`` (0 = the
    recipe's), progress and previews on node ``unique_id``, the token saved under ``save_name``."""
    try:
        target = classifier.class_index(target_class)
        config = options.train_config(recipe, max_steps=steps or None,
                                      default_resolution=_native_resolution(model))
        name = sanitize_name(save_name) if save_name.strip() else None
        out = token_path(folders.embeddings_dir(), name) if name else None
        if out is not None:
            out = check_save_target(out, overwrite=overwrite, overwrite_hint=OVERWRITE_HINT)
    except DCTError as exc:
        raise ValueError(str(exc)) from exc
    label = classifier.class_name(target)
    node_id = unique_id
    steps = config.max_steps
    preview_every = options.preview_every
    sampler_name, scheduler, decoder = options.sampler_name, options.scheduler, options.decoder
    bar = host.progress_bar(steps, node_id)

    def on_step(record, images):
        if host.interrupted():
            return  # the loop stops at its next poll and keeps the best token
        preview = None
        if preview_every and record.step % preview_every == 0:
            caption = f"step {record.step + 1}/{steps}  loss {record.loss:.3f}  accuracy {record.accuracy:.2f}"
            preview = ("JPEG", captioned(make_grid([images], min_cell=128), caption), 768)
        bar.update_absolute(record.step + 1, steps, preview)
        _send_progress(node_id, record, label)

    # The classifier was loaded by a node, i.e. under inference mode: autograd gets plain aliases of its weights.
    with autograd_enabled(), out_of_place_clip(), trainable_weights([classifier.module]):
        backend = ComfyBackend(model, clip, vae, sampler_name=sampler_name, scheduler=scheduler,
                               decoder=_load_decoder(decoder, model))
        job = TrainJob(backend, classifier, target, config, name=name or "class-token", out=out,
                       overwrite=overwrite, overwrite_hint=OVERWRITE_HINT, recipe=recipe,
                       base_model=type(model.model).__name__, sampler=f"{sampler_name}/{scheduler}",
                       cancel_exceptions=host.interrupt_exceptions())
        outcome = run_training(job, on_step=on_step, should_cancel=host.interrupted)
        result = outcome.result
        if outcome.save_error is not None:
            raise RuntimeError(outcome.save_error)
        if result.cancel_exception is not None:
            raise result.cancel_exception  # the host cancelled mid-step (and cleared its flag): hand it back
        if result.stopped == "cancelled":
            host.throw_if_interrupted()  # hand the Cancel back to the host
        vectors = {k: v.to(backend.device) for k, v in result.token.vectors.items()}
        seeds = list(range(config.seed, config.seed + min(config.batch_size, 4)))
        before, after = before_after(backend, vectors, config.templates, label, seeds, config.sampling)
    saved = outcome.path
    plot = training_plot([r.loss for r in result.history], [r.accuracy for r in result.history])
    best = result.best
    summary = (f"{label} ({target}): stopped by {result.stopped} after {len(result.history)} steps; best step "
               f"{best.step if best else '-'} accuracy {best.accuracy if best else 0:.2f}"
               + (f"; saved {saved.name}" if saved else ""))
    grid = pil_to_host_image(make_grid([before, after], min_cell=min(256, config.sampling.resolution),
                                       row_labels=["without\ntoken", "with\ntoken"]))
    return io.NodeOutput(result.token, pil_to_host_image(plot), grid,
                         ui=ui.PreviewText(summary))


def _load_decoder(choice: str, model):
    """A TAESD decoder from models/vae_approx (differentiable, ~1 M parameters), or None for the VAE."""
    if choice == CHECKPOINT_VAE:
        return None
    import folder_paths

    fmt = model.get_model_object("latent_format")
    taesd = host.require("TAESD")(decoder_path=folder_paths.get_full_path_or_raise("vae_approx", choice),
                                  latent_channels=fmt.latent_channels)
    taesd.vae_scale.data.fill_(fmt.scale_factor)
    taesd.vae_shift.data.fill_(getattr(fmt, "shift_factor", 0.0) or 0.0)
    return taesd.eval().to(host.torch_device())


def _send_progress(node_id, record, label: str) -> None:
    try:
        from server import PromptServer
    except ImportError:  # running without the server (scripts, in-process tests)
        return
    server = getattr(PromptServer, "instance", None)
    if server is not None:
        server.send_sync(PROGRESS_EVENT, {"node": node_id, "step": record.step, "loss": record.loss,
                                          "accuracy": record.accuracy, "target_prob": record.target_prob,
                                          "label": label}, server.client_id)
