"""Adaptive Class Guidance (DATE): a MODEL patch that, at chosen sampling steps, moves the positive text
conditioning by a normalized gradient step raising the classifier's score of the predicted image. The node is
an adapter: the steps are chosen by the engine's ``AdaptiveConfig.update_steps`` and each chosen step runs the
engine's ``date_adapt`` loop (per-image ``date_update``, prior, reset) on callables built from the host's model,
VAE and classifier, so node and engine move alike.

It wraps the host's noise prediction (WrappersMP.PREDICT_NOISE), so the stock KSampler, KSamplerAdvanced and
SamplerCustom all use it. The user's CONDITIONING objects are never changed: the guider holds per-run
copies, and the updated tensors replace only those copies.
"""

from __future__ import annotations

import logging

import torch

from dct_core.errors import DCTError
from dct_core.method.adaptive import AdaptiveConfig, class_score, date_adapt
from dct_core.settings import setting

from .adapters import host_internals as host
from .adapters.autograd import autograd_enabled, trainable_weights
from .adapters.decoders import installed as installed_decoders
from .adapters.decoders import load_taesd
from .adapters.node_api import io, schema_fields
from .adapters.settings_widgets import widget
from .adapters.sockets import CATEGORY, ClassifierSocket
from .adapters.static_models import static_model, taesd_in_place_of

WRAPPER_KEY = "dct_date"


def _step_index(sigma: torch.Tensor, sample_sigmas: torch.Tensor) -> int:
    return int((sample_sigmas[:-1].to(sigma.device) - sigma.flatten()[0]).abs().argmin())


def make_date_wrapper(vae, classifier, target: int, config: AdaptiveConfig, decoder: torch.nn.Module | None = None):
    """The PREDICT_NOISE wrapper; ``decoder``: a TAESD decoding the predicted image instead of ``vae`` (a VAE loaded
    with dynamic VRAM)."""
    state: dict = {}

    def wrapper(executor, x, timestep, model_options, seed):
        guider = executor.class_obj
        sigmas = model_options.get("transformer_options", {}).get("sample_sigmas")
        if sigmas is None:
            return executor(x, timestep, model_options, seed)
        if state.get("run") is not sigmas:  # a new sampling run: remember its original positive conds
            state.update(run=sigmas, original=guider.conds["positive"],
                         steps=set(config.update_steps(len(sigmas) - 1)))
        if _step_index(timestep, sigmas) in state["steps"]:
            host.throw_if_interrupted()
            positive = _updated(guider, state["original"], x, timestep, model_options, seed, vae, decoder,
                                classifier, target, config)
            guider.conds = {**guider.conds, "positive": positive}
        return executor(x, timestep, model_options, seed)

    return wrapper


def _crossattn(entry: dict) -> torch.Tensor:
    return entry["model_conds"]["c_crossattn"].cond


def _with_crossattn(entry: dict, tensor: torch.Tensor) -> dict:
    new = dict(entry)
    new["model_conds"] = {**entry["model_conds"], "c_crossattn": host.require("CONDCrossAttn")(tensor)}
    return new


def _updated(guider, original, x, timestep, model_options, seed, vae, taesd, classifier, target, config):
    """The positive cond entries after one chosen step's updates (the engine's loop): copies of ``original``'s
    entries with their cross-attention tensors replaced."""
    repeat_to_batch_size, sampling_function = host.require("repeat_to_batch_size"), host.require("sampling_function")
    model = guider.inner_model
    decoder = vae.first_stage_model if taesd is None else taesd
    with autograd_enabled(), trainable_weights([model, decoder, classifier.module]):
        x, timestep = x.detach().clone(), timestep.detach().clone()  # plain tensors autograd may save
        if taesd is None:
            host.load_models([vae.patcher])  # once per chosen step, not per update
        param = next(decoder.parameters())

        def per_image(entries: list[dict]) -> list[torch.Tensor]:
            # One embedding per image (the host shares one across the batch): DATE updates each image on its own.
            return [repeat_to_batch_size(_crossattn(e), x.shape[0]) for e in entries]

        def predict_x0(embeds: list[torch.Tensor]) -> torch.Tensor:
            positive = [_with_crossattn(e, t) for e, t in zip(original, embeds)]
            return sampling_function(model, x, timestep, guider.conds.get("negative"), positive, guider.cfg,
                                     model_options=model_options, seed=seed)

        def decode(x0: torch.Tensor) -> torch.Tensor:
            images = (decoder.decode(model.process_latent_out(x0).to(param.device, param.dtype)).float() + 1) / 2
            return images.clamp(0, 1).to(host.torch_device())

        embeds = date_adapt(per_image(original), per_image(guider.conds["positive"]), predict_x0, decode,
                            class_score(classifier, target, config.score), config)
    return [_with_crossattn(e, t) for e, t in zip(original, embeds)]


def date_widget(name: str, defaults: AdaptiveConfig) -> io.Input:
    """The settings table's widget for a DATE setting, showing the engine's default."""
    return widget(setting(name), default=getattr(defaults, name))


class AdaptiveClassGuidance(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        d = AdaptiveConfig()
        return io.Schema(
            node_id="DCTAdaptiveClassGuidance",
            **schema_fields(search_aliases=["DATE", "classifier guidance", "adaptive text embedding", "DCT"]),
            display_name="Adaptive Class Guidance (DATE)",
            category=CATEGORY,
            description="Patches a MODEL so that, during normal sampling, the prompt's conditioning is nudged "
                        "toward a classifier's class at chosen steps (test-time, no training). Works with the "
                        "stock KSampler, KSamplerAdvanced and SamplerCustom.",
            inputs=[
                io.Model.Input("model", tooltip="The model to patch (a clone is returned; the input is unchanged)."),
                io.Vae.Input("vae", tooltip="Decodes the predicted image for the classifier."),
                ClassifierSocket.Input("classifier", tooltip="The classifier whose class to steer toward."),
                io.String.Input("target_class", default="tiger cat",
                                tooltip="A label name (any synonym) or an index."),
                date_widget("rho", d),
                date_widget("every", d),
                # The interval as two widgets (saved workflows restore them by position).
                io.Float.Input("start", default=d.interval[0], min=0.0, max=1.0, step=0.01,
                               tooltip="First fraction of the trajectory where updates may happen."),
                io.Float.Input("end", default=d.interval[1], min=0.0, max=1.0, step=0.01,
                               tooltip="Last fraction of the trajectory where updates may happen."),
                date_widget("updates_per_step", d),
                date_widget("reset", d),
                date_widget("prior", d),
                date_widget("score", d),
            ],
            outputs=[io.Model.Output("MODEL", display_name="model")],
        )

    @classmethod
    def execute(cls, model, vae, classifier, target_class, start, end, **settings) -> io.NodeOutput:
        try:
            target = classifier.class_index(target_class)
            config = AdaptiveConfig(interval=(start, end), **settings)
            config.validate()
        except DCTError as exc:
            raise ValueError(str(exc)) from exc
        # The gradient passes through the model and the decoder: on a dynamic-VRAM host the model's static copy
        # is patched (and samples), and an installed TAESD decodes in place of a dynamic VAE (static_models.py).
        patched = static_model(model).clone()
        stand_in = taesd_in_place_of(vae, model, installed_decoders())
        taesd = None
        if stand_in is not None:
            with torch.inference_mode(False):
                taesd = load_taesd(stand_in, model)
            logging.warning("[DCT] Adaptive Class Guidance: the VAE is loaded with dynamic VRAM, which no gradient "
                            "may pass through; %s decodes the predicted images instead.", stand_in)
        patched.add_wrapper_with_key(host.require("PREDICT_NOISE"), WRAPPER_KEY,
                                     make_date_wrapper(vae, classifier, target, config, decoder=taesd))
        return io.NodeOutput(patched)
