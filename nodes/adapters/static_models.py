"""The models a gradient passes through, on hosts that load models with dynamic VRAM (2026 cores on NVIDIA, by
default; README, "Dynamic VRAM").

A dynamic patcher (comfy-aimdo) streams each op's weight into a view of virtual VRAM that is cached from earlier
runs (made under inference mode, so autograd refuses it) and unpinned after the op (so a view autograd saved may be
gone or overwritten before backward). No gradient may pass through its forward; every branch below avoids it:

- MODEL: its non-dynamic delegate, core's own escape hatch (it reloads the model from disk: a second copy in RAM
  while training). Models from loaders that give no delegate (GGUF and other custom loaders) are refused.
- CLIP: ``clip.clone(disable_dynamic=True)`` where ``CLIP.clone`` takes the flag (asked once per class): a static
  copy of the text encoder, loaded from disk; the user's CLIP is untouched.
- VAE: it has no static copy. The training signal comes from an installed TAESD decoder instead (said in the
  node's output); without one the node stops naming both ways out.
Hosts without dynamic VRAM (0.3.6x, ``--cpu``, ``--disable-dynamic-vram``, ``--highvram``) take none of these.
"""

from __future__ import annotations

import functools
import inspect
import logging

from . import host_internals as host

SWITCH = "--disable-dynamic-vram"


def _refused(what: str, why: str) -> host.HostMismatch:
    return host.HostMismatch(f"{host.host_version()} loaded {what} with dynamic VRAM {why}; start ComfyUI with "
                             f"{SWITCH} to train class tokens or steer with DATE.")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def is_dynamic(patcher) -> bool:
    """Whether a ModelPatcher (or CLIP/VAE) streams its weights; False on hosts without the notion."""
    check = getattr(patcher, "is_dynamic", None)
    return bool(check()) if callable(check) else False


def static_model(model):
    """``model`` itself, or for a dynamic MODEL its non-dynamic delegate (HostMismatch where there is none)."""
    if not is_dynamic(model):
        return model
    delegate = getattr(model, "get_non_dynamic_delegate", None)
    if not callable(delegate):
        raise _refused("this MODEL", "and offers no static copy of it")
    try:
        static = delegate()
    except RuntimeError as exc:  # core: "Cannot create non-dynamic delegate: cached_patcher_init is not initialized."
        raise _refused("this MODEL", f"and cannot reload a static copy of it ({_first_line(exc)}: models from "
                                     "GGUF and other custom loaders cannot)") from exc
    if static is None or is_dynamic(static):
        raise _refused("this MODEL", "and gave no static copy of it")
    logging.info("[DCT] the MODEL is loaded with dynamic VRAM: training through its static copy (reloaded from "
                 "disk; a second copy in RAM while training)")
    return static


@functools.cache
def _clone_takes_disable_dynamic(clip_class: type) -> bool:
    clone = getattr(clip_class, "clone", None)
    try:
        return callable(clone) and "disable_dynamic" in inspect.signature(clone).parameters
    except (TypeError, ValueError):
        return False


def static_clip(clip):
    """``clip`` itself, or for a dynamic text encoder a static clone of it (HostMismatch where the host cannot)."""
    if not is_dynamic(getattr(clip, "patcher", None)):
        return clip
    if not _clone_takes_disable_dynamic(type(clip)):
        raise _refused("the text encoder", "and its CLIP.clone cannot make a static copy")
    try:
        static = clip.clone(disable_dynamic=True)
    except RuntimeError as exc:
        raise _refused("the text encoder", f"and cannot reload a static copy of it ({_first_line(exc)})") from exc
    loaded = getattr(static.patcher, "model", None)
    if loaded is not None and static.cond_stage_model is not loaded:
        # 0.38: the static patcher holds its own, freshly loaded encoder while the clone's cond_stage_model still
        # is the dynamic one (which encode would run): encode with the static one. The clone is ours alone.
        static.cond_stage_model = loaded
    if is_dynamic(static.patcher):
        raise _refused("the text encoder", "and gave no static copy of it")
    return static


def require_static_vae(vae) -> None:
    """The checkpoint VAE may give the training signal only where it is static (see ``taesd_in_place_of``)."""
    if is_dynamic(getattr(vae, "patcher", None)):
        raise _refused("the VAE", "(it has no static copy), and no TAESD decoder stands in for it")


def taesd_in_place_of(vae, model, installed: list[str]) -> str | None:
    """For a dynamic VAE: the installed TAESD decoder (a models/vae_approx file name from ``installed``) for the
    model's latent format, to give the training signal instead; None where the VAE is static. HostMismatch naming
    both ways out where none is installed."""
    if not is_dynamic(getattr(vae, "patcher", None)):
        return None
    fmt = model.get_model_object("latent_format")
    prefix = getattr(fmt, "taesd_decoder_name", None)
    matches = sorted(f for f in installed if prefix and f.rsplit("/", 1)[-1].startswith(prefix))
    if matches:
        return matches[0]
    wanted = f"{prefix}.safetensors" if prefix else "a TAESD decoder for this model"
    raise host.HostMismatch(
        f"{host.host_version()} loaded the VAE with dynamic VRAM, and no gradient may pass through it. Either put "
        f"{wanted} (github.com/madebyollin/taesd) into models/vae_approx, and it gives the training signal "
        f"instead, or start ComfyUI with {SWITCH}.")
