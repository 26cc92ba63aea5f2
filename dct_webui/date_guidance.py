"""Class guidance (DATE) inside the webui's own sampling: at chosen steps the prompt's conditioning moves toward a
classifier's class (dct_core.method.adaptive.date_adapt, the loop the engine and the ComfyUI node run too), through
the webui's ``on_cfg_denoiser`` callback, per image.

The moved conditioning stays in use for the following steps (as in the engine) until the next chosen step or until
the prompt's own conditioning changes (prompt editing). Strength (rho) 0 chooses no step, so the image is bit for bit
the one the script makes when off. Errors never pass silently: the webui swallows exceptions raised in callbacks, so
the reason goes into the image's comments (shown under the image) and the log, and guidance stops for that job.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from dct_core.classifiers import Classifier
from dct_core.errors import DCTError
from dct_core.method.adaptive import AdaptiveConfig, class_score, date_adapt
from dct_core.method.host_weights import gradient_checkpointing, trainable_weights
from dct_core.settings import from_request

from . import classifiers, host

log = logging.getLogger(__name__)

TITLE = "Class guidance (DATE)"
# The controls' labels, in the order of the script's arguments (API clients find them in /sdapi/v1/script-info).
LABELS = ("Enable", "Classifier", "Architecture", "Labels file", "Target class", "Strength (rho)", "Every N steps",
          "Step window")
DEFAULTS = (False, "", "", "", "", AdaptiveConfig().rho, AdaptiveConfig().every, "0-1")
# Infotext keys (PNG Info, "send to"): one per control but Enable (a key present means on).
INFOTEXT = {"Classifier": "DCT DATE classifier", "Architecture": "DCT DATE architecture",
            "Labels file": "DCT DATE labels", "Target class": "DCT DATE class", "Strength (rho)": "DCT DATE rho",
            "Every N steps": "DCT DATE every", "Step window": "DCT DATE window"}
ATTRIBUTE = "_dct_date"  # where a job's guidance state rides on the webui's processing object


@dataclass
class Guidance:
    """One job's DATE: what to raise, when, and the conditioning moved so far."""

    classifier: Classifier
    target: int
    config: AdaptiveConfig
    infotext: dict[str, str]
    moved: torch.Tensor | None = None  # the last update's result ...
    source: torch.Tensor | None = None  # ... and the prompt conditioning it was computed from
    updates: int = 0
    failed: str | None = None
    steps_cache: dict[int, set[int]] = field(default_factory=dict)

    def chosen(self, total: int) -> set[int]:
        if total not in self.steps_cache:
            self.steps_cache[total] = set(self.config.update_steps(total))
        return self.steps_cache[total]


def guidance_from_args(args: tuple | list) -> Guidance | None:
    """The script's arguments (in LABELS order) -> the job's guidance, None when off; DCTError naming the control
    that is wrong."""
    values = dict(zip(LABELS, list(args) + list(DEFAULTS[len(args):])))
    if not values["Enable"]:
        return None
    name = str(values["Classifier"] or "").strip()
    if not name:
        raise DCTError("Class guidance (DATE) is enabled but no Classifier is chosen (a file in models/classifiers).")
    wanted = str(values["Target class"] or "").strip()
    if not wanted:
        raise DCTError("Class guidance (DATE) is enabled but 'Target class' is empty: type a class name or index.")
    rho = from_request("rho", values["Strength (rho)"])
    every = from_request("every", values["Every N steps"])
    window = from_request("interval", values["Step window"]) or (0.0, 1.0)
    config = AdaptiveConfig(rho=AdaptiveConfig.rho if rho is None else rho, every=every or 1, interval=window)
    config.validate()
    arch, labels = str(values["Architecture"] or "").strip(), str(values["Labels file"] or "").strip()
    classifier = classifiers.load(name, arch, labels)
    target = classifier.class_index(wanted)
    info = {INFOTEXT["Classifier"]: name, INFOTEXT["Target class"]: classifier.class_name(target),
            INFOTEXT["Strength (rho)"]: f"{config.rho:g}", INFOTEXT["Every N steps"]: str(config.every),
            INFOTEXT["Step window"]: f"{window[0]:g}-{window[1]:g}"}
    if arch:
        info[INFOTEXT["Architecture"]] = arch
    if labels:
        info[INFOTEXT["Labels file"]] = labels
    return Guidance(classifier, target, config, info)


def _hidden(cond: Any) -> torch.Tensor:
    return cond["crossattn"] if isinstance(cond, dict) else cond


def _with_hidden(cond: Any, hidden: torch.Tensor) -> Any:
    return {**cond, "crossattn": hidden} if isinstance(cond, dict) else hidden


def on_cfg_denoiser(params: Any) -> None:
    """The webui's per-step callback: apply the job's guidance (if any) to ``params.text_cond``."""
    p = getattr(params.denoiser, "p", None)
    guidance: Guidance | None = getattr(p, ATTRIBUTE, None)
    if guidance is None or guidance.failed is not None:
        return
    try:
        apply_guidance(params, guidance)
    except Exception as exc:  # the webui would swallow it: say it under the image and in the log
        guidance.failed = str(exc)
        log.exception("[DCT] class guidance (DATE) stopped")
        comment = getattr(p, "comment", None)
        if callable(comment):
            comment(f"{TITLE} stopped at step {getattr(params.denoiser, 'step', '?')}: {exc}")


def apply_guidance(params: Any, guidance: Guidance) -> None:
    step = int(getattr(params.denoiser, "step", params.sampling_step))  # sampling_step lags in Forge
    hidden = _hidden(params.text_cond)
    if step in guidance.chosen(int(params.total_sampling_steps)):
        current = guidance.moved if (not guidance.config.reset and guidance.moved is not None
                                     and guidance.moved.shape == hidden.shape) else hidden
        guidance.moved = update(params, guidance, hidden, current)
        guidance.source, guidance.updates = hidden.detach().clone(), guidance.updates + 1
    moved, source = guidance.moved, guidance.source
    if moved is not None and source is not None and source.shape == hidden.shape and torch.equal(source, hidden):
        params.text_cond = _with_hidden(params.text_cond, moved.to(hidden.dtype))


def update(params: Any, guidance: Guidance, hidden: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
    """One chosen step's DATE updates of the prompt conditioning (per image), outside the webui's inference mode."""
    denoiser = params.denoiser
    sd_model = denoiser.inner_model.inner_model
    unet, vae = sd_model.forge_objects.unet, sd_model.forge_objects.vae
    to_ldm = host.require("cond_from_a1111")
    sampling_function = host.require("sampling_function")
    cfg = float(getattr(denoiser.p, "cfg_scale", 7.0))
    seed = denoiser.p.seeds[0] if getattr(denoiser.p, "seeds", None) else None
    decoder = vae.first_stage_model
    # The UNet block-checkpointed: its blocks add in place, which autograd refuses unless recomputed in backward.
    with torch.inference_mode(False), torch.enable_grad(), \
            trainable_weights([unet.model, decoder, guidance.classifier.module]), \
            gradient_checkpointing(unet.model.diffusion_model):
        x, sigma = params.x.detach().clone(), params.sigma.detach().clone()  # plain tensors autograd may save
        uncond = _clone(params.text_uncond)
        cond = _clone(params.text_cond)
        param = next(decoder.parameters())

        def predict_x0(values: list[torch.Tensor]) -> torch.Tensor:
            negative = None if uncond is None else to_ldm(uncond)  # Neo passes no uncond at CFG 1
            return sampling_function(unet.model, x, sigma, negative, to_ldm(_with_hidden(cond, values[0])),
                                     cfg, unet.model_options, seed)

        def decode(x0: torch.Tensor) -> torch.Tensor:
            z = host.process_out(sd_model, x0).to(param.device, param.dtype)
            with host.autograd_forwards(decoder):
                return ((decoder.decode(z).float() + 1) / 2).clamp(0, 1)

        moved = date_adapt([hidden.detach().clone()], [current.detach().clone()], predict_x0, decode,
                           class_score(guidance.classifier, guidance.target, guidance.config.score),
                           guidance.config)[0]
    return moved


def _clone(cond: Any) -> Any:
    if cond is None:
        return None
    if isinstance(cond, dict):
        return {k: v.detach().clone() if isinstance(v, torch.Tensor) else v for k, v in cond.items()}
    return cond.detach().clone()


def start_job(p: Any, args: tuple | list) -> Guidance | None:
    """At the start of a txt2img/img2img job: the job's guidance on ``p`` and in its infotext, or a comment
    saying why it is off."""
    setattr(p, ATTRIBUTE, None)
    try:
        guidance = guidance_from_args(args)
    except DCTError as exc:
        comment = getattr(p, "comment", None)
        if callable(comment):
            comment(f"{TITLE} is off for this job: {exc}")
        log.error("[DCT] %s is off for this job: %s", TITLE, exc)
        return None
    if guidance is not None:
        setattr(p, ATTRIBUTE, guidance)
        p.extra_generation_params.update(guidance.infotext)
    return guidance
