"""Train Discriminative Token: the engine on the host's own MODEL, CLIP and VAE, with progress, previews
and a clean Cancel; the token is saved atomically to models/embeddings."""

from __future__ import annotations

from dct_core.config import DEFAULT_PRESET, PRESETS, SamplingConfig, preset_config
from dct_core.errors import DCTError
from dct_core.images import make_grid
from dct_core.plot import training_plot
from dct_core.run import TrainJob, before_after, run_training
from dct_core.tokens import check_save_target, sanitize_name, token_path

from . import folders
from .comfy_backend import ComfyBackend
from .host_api import io, ui
from .host_autograd import autograd_enabled, out_of_place_clip, trainable_weights
from .images import captioned, pil_to_host_image
from .sockets import CATEGORY, ClassifierSocket, ClassTokenSocket

CHECKPOINT_VAE = "checkpoint VAE"
OVERWRITE_HINT = "enable 'overwrite' or change save_name"
PROGRESS_EVENT = "dct.train.progress"


def _sampler_names() -> list[str]:
    import comfy.samplers

    return list(comfy.samplers.KSampler.SAMPLERS)


def _scheduler_names() -> list[str]:
    import comfy.samplers

    return list(comfy.samplers.KSampler.SCHEDULERS)


def _decoders() -> list[str]:
    import folder_paths

    return [CHECKPOINT_VAE] + [f for f in folder_paths.get_filename_list("vae_approx") if "decoder" in f]


def _from_recipe(text: str, field: str) -> str:
    """A tooltip for a setting where 0 means "the recipe's", naming the default recipe's and the paper's value."""
    default, paper = preset_config(DEFAULT_PRESET), preset_config("paper")
    return f"{text}; 0 = the recipe's ({getattr(default, field)}; paper {getattr(paper, field)})."


class TrainClassToken(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        d = preset_config(DEFAULT_PRESET)
        return io.Schema(
            node_id="DCTTrainClassToken",
            display_name="Train Discriminative Token (DCT)",
            category=CATEGORY,
            description="Learns a class token from a classifier on the connected model (its LoRAs and patches "
                        "apply). Saves it to models/embeddings so embedding:<name> works in any prompt.",
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model to train the token for (SD1.x, SD2.x, SDXL)."),
                io.Clip.Input("clip", tooltip="Its text encoder; the token gets one vector per encoder."),
                io.Vae.Input("vae", tooltip="Decodes the generated latents for the classifier."),
                ClassifierSocket.Input("classifier", tooltip="The teacher, from Load Classifier (DCT)."),
                io.String.Input("target_class", default="tiger cat",
                                tooltip="The class to steer toward: a label name (any synonym, any case) or an "
                                        "index. A miss lists close names."),
                io.String.Input("init_word", default="",
                                tooltip="Word whose embedding starts the token: empty = the recipe's ('a', as the "
                                        "paper for ImageNet); a related word such as 'bird' helps a bird "
                                        "classifier."),
                io.String.Input("templates", default="", multiline=True,
                                tooltip="Training prompts, one per line; {token} marks the class token and "
                                        "{label} the class name. Empty = the recipe's (the paper's two)."),
                io.Int.Input("steps", default=0, min=0, max=10000,
                             tooltip=_from_recipe("Maximum optimization steps", "max_steps")),
                io.Float.Input("learning_rate", default=0.0, min=0.0, max=1.0, step=1e-5,
                               tooltip=_from_recipe("AdamW learning rate on the token only", "lr")),
                io.Int.Input("batch_size", default=0, min=0, max=64,
                             tooltip=_from_recipe("Images (seeds) per step", "batch_size")),
                io.Int.Input("micro_batch", default=0, min=0, max=64,
                             tooltip="Images per forward/backward to save VRAM (0 = the whole batch at once)."),
                io.Float.Input("cfg", default=d.sampling.guidance, min=0.0, max=30.0, step=0.1,
                               tooltip="Classifier-free guidance scale while training."),
                io.Combo.Input("sampler_name", options=_sampler_names(), default="euler",
                               tooltip="The host sampler for the steps without gradient."),
                io.Combo.Input("scheduler", options=_scheduler_names(), default="normal",
                               tooltip="The host scheduler (sigmas)."),
                io.Int.Input("sampling_steps", default=d.sampling.steps, min=1, max=200,
                             tooltip="Sampling steps per image (paper: 30)."),
                io.Int.Input("resolution", default=d.sampling.resolution, min=64, max=2048, step=8,
                             tooltip="Image size while training (SD1.x: 512, SDXL: 1024)."),
                io.Int.Input("seed", default=d.seed, min=0, max=0xFFFFFFFF, control_after_generate=False,
                             tooltip="First training seed; the batch uses seed, seed+1, ..."),
                io.Float.Input("accuracy_threshold", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip=_from_recipe("Stop once a batch is classified this well",
                                                    "accuracy_threshold")),
                io.Int.Input("patience", default=0, min=0, max=1000,
                             tooltip=_from_recipe("Or stop after this many steps without a lower loss", "patience")),
                io.Int.Input("backprop_depth", default=0, min=0, max=50,
                             tooltip="Sampling steps taken with gradient when the recipe takes it at the last "
                                     "steps; 0 = the recipe's (paper: 1, its gradient skipping)."),
                io.Combo.Input("decoder", options=_decoders(), default=CHECKPOINT_VAE,
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
                io.Combo.Input("recipe", options=list(PRESETS), default=DEFAULT_PRESET, optional=True,
                               tooltip=f"The training recipe the settings start from; a setting left at 0 or empty "
                                       f"takes the recipe's value. {DEFAULT_PRESET}: the measured default (README, "
                                       "'Recipes'); paper: Schwartz et al. exactly. Workflows saved before this "
                                       "input existed run as 'paper'."),
            ],
            outputs=[
                ClassTokenSocket.Output("CLASS_TOKEN", display_name="class token"),
                io.Image.Output("PLOT", display_name="loss / accuracy"),
                io.Image.Output("BEFORE_AFTER", display_name="before / after"),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, clip, vae, classifier, target_class, init_word, templates, steps, learning_rate,
                batch_size, micro_batch, cfg, sampler_name, scheduler, sampling_steps, resolution, seed,
                accuracy_threshold, patience, backprop_depth, decoder, save_name, overwrite,
                preview_every, fresh_seeds=False, recipe=None) -> io.NodeOutput:
        import comfy.model_management as mm
        import comfy.utils

        try:
            target = classifier.class_index(target_class)
            lines = tuple(t.strip() for t in templates.splitlines() if t.strip()) or None
            recipe = recipe or "paper"  # a workflow saved before the recipe input: the paper's, as it ran then
            config = preset_config(
                recipe, templates=lines, init_word=init_word.strip() or None, batch_size=batch_size or None,
                micro_batch=micro_batch or None, seed=seed, fresh_seeds=True if fresh_seeds else None,
                lr=learning_rate or None, max_steps=steps or None, accuracy_threshold=accuracy_threshold or None,
                patience=patience or None, backprop_depth=backprop_depth or None,
                sampling=SamplingConfig(resolution=resolution, steps=sampling_steps, guidance=cfg),
            )
            name = sanitize_name(save_name) if save_name.strip() else None
            out = token_path(folders.embeddings_dir(), name) if name else None
            if out is not None:
                out = check_save_target(out, overwrite=overwrite, overwrite_hint=OVERWRITE_HINT)
        except DCTError as exc:
            raise ValueError(str(exc)) from exc
        label = classifier.class_name(target)
        node_id = cls.hidden.unique_id if cls.hidden is not None else None
        steps = config.max_steps
        bar = comfy.utils.ProgressBar(steps, node_id=node_id)

        def on_step(record, images):
            if mm.processing_interrupted():
                return  # the loop stops at its next poll and keeps the best token
            preview = None
            if preview_every and record.step % preview_every == 0:
                caption = f"step {record.step + 1}/{steps}  loss {record.loss:.3f}  accuracy {record.accuracy:.2f}"
                preview = ("JPEG", captioned(make_grid([images], min_cell=128), caption), 768)
            bar.update_absolute(record.step + 1, steps, preview)
            _send_progress(node_id, record, label)

        # The classifier was loaded by a node, i.e. under inference mode: give autograd plain copies of it too.
        with autograd_enabled(), out_of_place_clip(), trainable_weights([classifier.module]):
            backend = ComfyBackend(model, clip, vae, sampler_name=sampler_name, scheduler=scheduler,
                                   decoder=_load_decoder(decoder, model))
            job = TrainJob(backend, classifier, target, config, name=name or "class-token", out=out,
                           overwrite=overwrite, overwrite_hint=OVERWRITE_HINT, recipe=recipe,
                           base_model=type(model.model).__name__, sampler=f"{sampler_name}/{scheduler}",
                           cancel_exceptions=_host_interrupts())
            outcome = run_training(job, on_step=on_step, should_cancel=mm.processing_interrupted)
            result = outcome.result
            if outcome.save_error is not None:
                raise RuntimeError(outcome.save_error)
            if result.cancel_exception is not None:
                raise result.cancel_exception  # the host cancelled mid-step (and cleared its flag): hand it back
            if result.stopped == "cancelled":
                mm.throw_exception_if_processing_interrupted()  # hand the Cancel back to the host
            vectors = {k: v.to(backend.device) for k, v in result.token.vectors.items()}
            seeds = list(range(seed, seed + min(config.batch_size, 4)))
            before, after = before_after(backend, vectors, config.templates, label, seeds, config.sampling)
        saved = outcome.path
        plot = training_plot([r.loss for r in result.history], [r.accuracy for r in result.history])
        best = result.best
        summary = (f"{label} ({target}): stopped by {result.stopped} after {len(result.history)} steps; best step "
                   f"{best.step if best else '-'} accuracy {best.accuracy if best else 0:.2f}"
                   + (f"; saved {saved.name}" if saved else ""))
        grid = pil_to_host_image(make_grid([before, after], min_cell=min(256, resolution),
                                           row_labels=["without\ntoken", "with\ntoken"]))
        return io.NodeOutput(result.token, pil_to_host_image(plot), grid,
                             ui=ui.PreviewText(summary))


def _host_interrupts() -> tuple[type[BaseException], ...]:
    """The exception the host raises for Cancel (mid-forward since 2026 hosts check it in every op)."""
    import comfy.model_management as mm

    kind = getattr(mm, "InterruptProcessingException", None)
    return (kind,) if isinstance(kind, type) and issubclass(kind, BaseException) else ()


def _load_decoder(choice: str, model):
    """A TAESD decoder from models/vae_approx (differentiable, ~1 M parameters), or None for the VAE."""
    if choice == CHECKPOINT_VAE:
        return None
    import comfy.model_management
    import comfy.taesd.taesd
    import folder_paths

    fmt = model.get_model_object("latent_format")
    taesd = comfy.taesd.taesd.TAESD(decoder_path=folder_paths.get_full_path_or_raise("vae_approx", choice),
                                    latent_channels=fmt.latent_channels)
    taesd.vae_scale.data.fill_(fmt.scale_factor)
    taesd.vae_shift.data.fill_(getattr(fmt, "shift_factor", 0.0) or 0.0)
    return taesd.eval().to(comfy.model_management.get_torch_device())


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
