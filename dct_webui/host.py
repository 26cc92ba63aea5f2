"""Every webui internal the extension touches (``modules.*``, ``ldm_patched.*``, Neo's ``backend.*``), each behind
a feature check.

Nothing here imports the webui at import time: each internal is looked up when first used, and a missing one
raises one ``HostMismatch`` naming what is missing, the fork and version found, and the forks the extension
supports, so the tab or the script says so instead of the extension failing to load.
"""

from __future__ import annotations

import importlib
import importlib.util
import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from dct_core.errors import DCTError

TESTED = "Forge Classic (Haoming02/sd-webui-forge-classic, branch classic, 2025-02 commit 1f95d717)"
SUPPORTED = (f"{TESTED}; Forge Neo from its code (tested with fakes); reForge and Automatic1111 1.9-1.10 through "
             "the shared modules.* API, untested")

# name -> (module, attribute path, what the extension uses it for)
INTERNALS: dict[str, tuple[str, str, str]] = {
    "shared": ("modules.shared", "", "the loaded model, the job state and the command-line options"),
    "state": ("modules.shared", "state", "the webui's progress, Interrupt and job bookkeeping"),
    "queue_lock": ("modules.call_queue", "queue_lock", "one job at a time on the model (txt2img or training)"),
    "script_callbacks": ("modules.script_callbacks", "", "the tab, the API routes and DATE's per-step callback"),
    "scripts": ("modules.scripts", "", "the always-on DATE script"),
    "model_hijack": ("modules.sd_hijack", "model_hijack", "the embedding database (token lookup and reload)"),
    "Embedding": ("modules.textual_inversion.textual_inversion", "Embedding", "the token as the text encoder sees "
                                                                             "it while training"),
    "models_path": ("modules.paths_internal", "models_path", "models/classifiers"),
    "sampling_function": ("ldm_patched.modules.samplers", "sampling_function", "the CFG'd x0 prediction"),
    "cond_from_a1111": ("modules_forge.forge_sampler", "cond_from_a1111_to_patched_ldm",
                        "DATE's conditioning in the UNet's format"),
    "CONDCrossAttn": ("ldm_patched.modules.conds", "CONDCrossAttn", "the conditioning the UNet gets"),
    "CONDRegular": ("ldm_patched.modules.conds", "CONDRegular", "SDXL's pooled and size conditioning"),
    "load_models_gpu": ("ldm_patched.modules.model_management", "load_models_gpu", "loading UNet and VAE"),
    "get_torch_device": ("ldm_patched.modules.model_management", "get_torch_device", "the device to train on"),
}

# Forge Neo keeps the same roles in its own backend package (read from its code; tested with fakes).
NEO_INTERNALS: dict[str, tuple[str, str, str]] = {
    "sampling_function": ("backend.sampling.sampling_function", "sampling_function_inner", "the CFG'd x0 prediction"),
    "cond_from_a1111": ("backend.sampling.condition", "compile_conditions", "DATE's conditioning in the UNet's format"),
    "CONDCrossAttn": ("backend.sampling.condition", "ConditionCrossAttn", "the conditioning the UNet gets"),
    "CONDRegular": ("backend.sampling.condition", "Condition", "SDXL's pooled and size conditioning"),
    "load_models_gpu": ("backend.memory_management", "load_models_gpu", "loading UNet and VAE"),
    "get_torch_device": ("backend.memory_management", "get_torch_device", "the device to train on"),
    "Embedding": ("backend.text_processing.textual_inversion", "Embedding", "the token as the text encoder sees "
                                                                           "it while training"),
}
NEO_ENGINES = ("text_processing_engine", "text_processing_engine_l", "text_processing_engine_g")


class HostMismatch(DCTError):
    """The running webui lacks an internal the extension needs (or it changed shape)."""


def _found(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def fork() -> str:
    """Which member of the Automatic1111 family runs: "neo", "classic" (Forge Classic, lllyasviel's Forge and
    reForge share its ldm_patched layout), "a1111", or "unknown" (no webui)."""
    if not _found("modules"):
        return "unknown"
    if _found("backend.text_processing") or _found("backend.sampling"):
        return "neo"
    if _found("ldm_patched"):
        return "classic"
    return "a1111"


def version() -> str:
    """The fork and version, as messages name them."""
    names = {"neo": "Forge Neo", "classic": "Forge (Classic layout)", "a1111": "Automatic1111",
             "unknown": "no webui"}
    name = names[fork()]
    for module, attr in (("modules_forge.forge_version", "version"), ("modules.launch_utils", "git_tag")):
        try:
            value = getattr(importlib.import_module(module), attr)
            value = value() if callable(value) else value
        except Exception:  # a version lookup must never fail a feature check
            continue
        if value:
            return f"{name} {value}"
    return name


def _table() -> dict[str, tuple[str, str, str]]:
    return {**INTERNALS, **NEO_INTERNALS} if fork() == "neo" else INTERNALS


def mismatch(what: str, why: str) -> HostMismatch:
    return HostMismatch(
        f"{version()} has no {what}, which the Discriminative Class Tokens extension needs for {why}. Supported: "
        f"{SUPPORTED}. Update the extension, or report your webui and version to its issue tracker.")


def require(name: str) -> Any:
    """The internal ``name`` (a key of INTERNALS) of the running fork, or HostMismatch."""
    module_name, path, why = _table()[name]
    try:
        obj: Any = importlib.import_module(module_name)
        for part in filter(None, path.split(".")):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise mismatch(f"{module_name}{'.' + path if path else ''}", why) from exc
    return obj


def missing() -> list[str]:
    """Every internal this webui lacks, as "module.attr (use)" (tests and the startup log)."""
    out = []
    for name, (module_name, path, why) in _table().items():
        try:
            require(name)
        except HostMismatch:
            out.append(f"{module_name}{'.' + path if path else ''} ({why})")
    return out


def sd_model() -> Any:
    """The loaded checkpoint with Forge's model objects (UNet patcher, CLIP, VAE), or HostMismatch / a DCTError
    saying what to do."""
    model = getattr(require("shared"), "sd_model", None)
    if model is None:
        raise DCTError("no checkpoint is loaded: pick one in the webui's checkpoint list first.")
    if getattr(model, "forge_objects", None) is None and fork() == "neo":  # Neo loads at the first generation
        raise DCTError("the checkpoint is not loaded yet (Forge Neo loads it at the first generation): generate one "
                       "image, then train.")
    if getattr(model, "forge_objects", None) is None:
        raise mismatch("sd_model.forge_objects (Forge's UNet, CLIP and VAE objects)",
                       "training and DATE (Automatic1111 itself keeps its models differently)")
    return model


def embeddings_dir() -> str:
    """Where the webui reads textual-inversion embeddings (``--embeddings-dir``)."""
    opts = getattr(require("shared"), "cmd_opts", None)
    folder = getattr(opts, "embeddings_dir", None)
    if not folder:
        raise mismatch("cmd_opts.embeddings_dir", "saving the token where the webui finds it")
    return str(folder)


def text_engines(model: Any) -> list[Any]:
    """Neo: the model's text engines, each with its own embedding database; Classic: none (one shared database)."""
    return [e for e in (getattr(model, n, None) for n in NEO_ENGINES) if e is not None and hasattr(e, "embeddings")]


def embedding_db() -> Any:
    """Classic's one database the text encoder looks tokens up in (on the model hijack)."""
    db = getattr(require("model_hijack"), "embedding_db", None)
    if db is None or not hasattr(db, "register_embedding_by_name"):
        raise mismatch("sd_hijack.model_hijack.embedding_db.register_embedding_by_name",
                       "letting the text encoder see the token while it trains")
    return db


def register_embedding(model: Any, embedding: Any, name: str) -> None:
    """Register ``embedding`` under ``name`` where the model's text encoders look (None: unregister)."""
    engines = text_engines(model)
    if engines:  # Neo: register_embedding_by_name(embedding, name) on each engine's database
        for engine in engines:
            engine.embeddings.register_embedding_by_name(embedding, name)
        return
    embedding_db().register_embedding_by_name(embedding, model, name)


def reload_embeddings(model: Any | None = None) -> None:
    """Reload every embedding from disk, so a token just written (or written again) works in the next prompt:
    Classic ``force_reload`` (its own check looks only at the folder's time); Neo: each engine's database, which
    the webui reads only when it builds the model."""
    engines = text_engines(model) if model is not None else []
    for engine in engines:
        engine.embeddings.load_textual_inversion_embeddings()
    db = getattr(require("model_hijack"), "embedding_db", None)
    if db is not None:
        try:
            db.load_textual_inversion_embeddings(force_reload=True)
        except TypeError:  # a listing database without the flag
            db.load_textual_inversion_embeddings()


def learned_conditioning(model: Any, texts: list[str]) -> Any:
    """The webui's conditioning of ``texts`` with gradients allowed: a tensor [B, L, D], or SDXL's dict (crossattn,
    vector). Classic SD1/SD2: the text encoder itself; otherwise the model's own method, without the inference-mode
    decorator Neo puts on it."""
    if fork() != "neo" and not getattr(model, "is_sdxl", False):
        return model.cond_stage_model(texts)
    method = getattr(type(model), "get_learned_conditioning", None)
    if method is None:
        raise mismatch("sd_model.get_learned_conditioning", "the prompt's conditioning")
    return undecorated(method)(model, texts)


def undecorated(fn: Any) -> Any:
    """``fn`` without torch's grad-mode decorator (``@torch.inference_mode()``, ``@torch.no_grad()``), else itself."""
    inner = getattr(fn, "__wrapped__", None)
    code = getattr(fn, "__code__", None)
    if inner is not None and code is not None and code.co_name == "decorate_context":
        return inner
    return fn


@contextmanager
def autograd_forwards(module: Any) -> Iterator[None]:
    """For the duration, every submodule whose class forward carries torch's inference-mode decorator (Neo's VAE
    blocks) runs the undecorated forward (an instance attribute, removed afterwards), so a gradient can pass."""
    patched = []
    try:
        for m in module.modules():
            forward = type(m).forward
            plain = undecorated(forward)
            if plain is not forward and "forward" not in m.__dict__:
                m.forward = types.MethodType(plain, m)
                patched.append(m)
        yield
    finally:
        for m in patched:
            del m.forward


def process_out(model: Any, latents: Any) -> Any:
    """Latents as the VAE decodes them (Neo: the VAE's own scaling; Classic: the UNet's latent format)."""
    vae_model = model.forge_objects.vae.first_stage_model
    if hasattr(vae_model, "process_out"):
        return vae_model.process_out(latents)
    return model.forge_objects.unet.model.latent_format.process_out(latents)


def sigma_model(unet: Any) -> Any:
    """What knows the sigmas (Classic: ``model_sampling``; Neo: ``predictor``)."""
    found = getattr(unet.model, "model_sampling", None) or getattr(unet.model, "predictor", None)
    if found is None:
        raise mismatch("unet.model.model_sampling / predictor", "the sampling sigmas")
    return found
