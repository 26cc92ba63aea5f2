"""Load a Stable Diffusion pipeline (SD1.x, SD2.x, SDXL) from local files only; nothing comes from the hub.

Two inputs are accepted: a diffusers folder (with model_index.json) or a single-file checkpoint in the
original (LDM / A1111 / ComfyUI) layout. Single files are read with the diffusers configs shipped in
``configs/<kind>/``; the CLIP BPE vocabulary is shipped once (``configs/clip_tokenizer/``) and the
tokenizers are built from it here.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..errors import DCTError
from ..formats.clip_vocab import CONFIGS_DIR, TOKENIZER_DIR, clip_tokenizer  # noqa: F401  (re-exported)
from ..formats.safe_load import FileKind, read_safetensors_shapes, read_tensors

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

log = logging.getLogger(__name__)

KINDS = ("sd1", "sd2", "sd2-v", "sdxl")
PIPELINES = ("StableDiffusionPipeline", "StableDiffusionXLPipeline")
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth")
CHECKPOINT = FileKind(
    "checkpoint",
    "use the model's .safetensors release, or convert the file to .safetensors with a tool you trust.",
    short_name=True,
)

_UNET = "model.diffusion_model."
# Text-encoder layout tells the family apart: SD1 has OpenAI CLIP-L in the HF layout, SD2 OpenCLIP-H,
# SDXL both CLIP-L and OpenCLIP-bigG under `conditioner.embedders`.
_TEXT_ENCODERS = {
    "sdxl": ("conditioner.embedders.0.transformer.", "conditioner.embedders.1.model."),
    "sd2": ("cond_stage_model.model.",),
    "sd1": ("cond_stage_model.transformer.",),
}
_CONTEXT_DIM = {"sd1": 768, "sd2": 1024, "sdxl": 2048}
# Pad tokens of the official tokenizers: (tokenizer, tokenizer_2).
_PADS = {"sd1": ("<|endoftext|>",), "sd2": ("!",), "sd2-v": ("!",), "sdxl": ("<|endoftext|>", "!")}


def load_pipeline(
    path: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    kind: str | None = None,
    config: str | os.PathLike | None = None,
) -> DiffusionPipeline:
    """A StableDiffusionPipeline or StableDiffusionXLPipeline on ``device``, loaded from local files only.

    ``path``: a diffusers folder or a .safetensors (or weights-only .ckpt/.pt) checkpoint. For a single
    file, ``kind`` ("sd1", "sd2", "sd2-v", "sdxl") settles what the weights cannot (SD2 768-v vs 512-base)
    and ``config`` replaces the shipped diffusers config folder (e.g. for a non-standard architecture);
    for a folder, ``kind`` is only checked against its pipeline class. User mistakes raise DCTError.
    """
    if kind is not None and kind not in KINDS:
        raise DCTError(f"unknown model kind {kind!r}; use one of {', '.join(KINDS)}.")
    file = Path(path).expanduser()
    if not file.exists():
        raise DCTError(
            f"model not found: {file}; give a diffusers folder (with model_index.json) or a .safetensors "
            "checkpoint."
        )
    pipe = _load_folder(file, dtype, kind) if file.is_dir() else _load_single_file(file, dtype, kind, config)
    return pipe.to(device)


def _load_folder(folder: Path, dtype: torch.dtype, kind: str | None):
    index_file = folder / "model_index.json"
    if not index_file.is_file():
        raise DCTError(
            f"{folder} is not a diffusers pipeline folder (no model_index.json); give the folder that holds "
            "model_index.json, or a single .safetensors checkpoint."
        )
    class_name = _read_json(index_file).get("_class_name")
    if class_name not in PIPELINES:
        raise DCTError(
            f"{folder} holds a {class_name or 'unknown pipeline'}; only text-to-image Stable Diffusion "
            "1.x/2.x (StableDiffusionPipeline) and SDXL (StableDiffusionXLPipeline) models are supported."
        )
    if kind is not None and (kind == "sdxl") != (class_name == "StableDiffusionXLPipeline"):
        raise DCTError(f"kind={kind!r} does not match {folder}, which holds a {class_name}; drop kind.")
    import diffusers

    cls = getattr(diffusers, class_name)
    try:
        with _quiet_torch_dtype():
            return cls.from_pretrained(folder, torch_dtype=dtype, local_files_only=True, **_no_extras(cls))
    except Exception as exc:  # a broken or incomplete folder: say which, keep the cause chained
        raise DCTError(f"could not load the diffusers folder {folder}: {_first_line(exc)}") from exc


def _load_single_file(file: Path, dtype: torch.dtype, kind: str | None, config: str | os.PathLike | None):
    shapes = read_checkpoint_shapes(file)
    yaml = file.with_suffix(".yaml")  # A1111 convention: the original config next to the checkpoint
    kind = detect_kind(shapes, kind=kind, name=file.name, check_dims=config is None, yaml=yaml)
    config_dir = Path(config) if config is not None else CONFIGS_DIR / kind
    if not (config_dir / "model_index.json").is_file():
        raise DCTError(f"config folder {config_dir} has no model_index.json; give a diffusers config folder.")
    import diffusers

    cls = diffusers.StableDiffusionXLPipeline if kind == "sdxl" else diffusers.StableDiffusionPipeline
    tokenizers = dict(zip(("tokenizer", "tokenizer_2"), (clip_tokenizer(pad) for pad in _PADS[kind])))
    try:
        # diffusers reads the file again itself (safetensors: mmap; pickles: torch.load(weights_only=True)
        # in 0.42.1), and read_checkpoint_shapes has already refused any pickle needing more than that.
        with _quiet_torch_dtype():
            return cls.from_single_file(
                str(file), config=str(config_dir), local_files_only=True, torch_dtype=dtype, **tokenizers,
                **_no_extras(cls),
            )
    except Exception as exc:
        raise DCTError(f"could not load {file.name} as a {kind} checkpoint: {_first_line(exc)}") from exc


def read_checkpoint_shapes(file: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of a checkpoint file, read without running any pickled code."""
    file = Path(file)
    suffix = file.suffix.lower()
    if suffix == ".safetensors":
        return read_safetensors_shapes(file, CHECKPOINT)
    if suffix not in PICKLE_SUFFIXES:
        raise DCTError(
            f"unsupported model file type {file.suffix!r}: give a .safetensors (or .ckpt) file or a folder."
        )
    state = read_tensors(file, CHECKPOINT, mmap=True)  # weights-only: nothing in the file can run
    while isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]  # A1111-era .ckpt files nest the weights
    return {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}


def detect_kind(
    shapes: Mapping[str, Sequence[int]],
    *,
    kind: str | None = None,
    name: str = "",
    check_dims: bool = True,
    yaml: str | os.PathLike | None = None,
) -> str:
    """The family ("sd1", "sd2", "sd2-v", "sdxl") of an original-layout checkpoint, from tensor names/shapes.

    ``kind`` may settle what the weights cannot (SD2 v vs epsilon) but not contradict them. Without it, SD2
    is "sd2-v" given a ComfyUI ``v_pred`` marker, a companion ``yaml`` with ``parameterization: v`` or "768"
    in ``name``; "sd2" (epsilon) when the yaml says otherwise or ``name`` has "512"/"base"; else "sd2-v"
    with a warning. ``check_dims`` compares the UNet context width with the shipped config of the family.
    """
    what = name or "the checkpoint"
    conv_in = shapes.get(_UNET + "input_blocks.0.0.weight")
    if conv_in is None and "conv_in.weight" in shapes:
        raise DCTError(f"{what} is one diffusers component; give its folder (the one with model_index.json).")
    if conv_in is None:
        raise DCTError(
            f"{what} has no Stable Diffusion UNet (model.diffusion_model.*): it may be a LoRA, VAE, "
            "embedding or another model type. Give a full SD1.x, SD2.x or SDXL checkpoint."
        )
    if len(conv_in) != 4 or conv_in[1] != 4:
        raise DCTError(
            f"{what} has a UNet with {conv_in[1]} input channels (inpainting / instruct-pix2pix?); only "
            "text-to-image models with 4 latent channels are supported."
        )
    family = next((f for f, pre in _TEXT_ENCODERS.items() if all(_has(shapes, p) for p in pre)), None)
    if family is None:
        if _has(shapes, "conditioner.embedders.0.model."):
            raise DCTError(f"{what} is an SDXL refiner, which is not supported; use an SDXL base model.")
        raise DCTError(f"{what} has no text encoder weights (a UNet-only file?); give a full checkpoint.")
    if ("v_pred" in shapes and family != "sd2") or _has(shapes, "edm_"):
        raise DCTError(f"{what} is a v-prediction or EDM variant of {family}, which is not supported.")
    if not _has(shapes, "first_stage_model."):
        raise DCTError(f"{what} has no VAE weights (first_stage_model.*); give a full checkpoint.")
    context = {s[-1] for k, s in shapes.items() if k.startswith(_UNET) and k.endswith("attn2.to_k.weight")}
    if check_dims and context != {_CONTEXT_DIM[family]}:
        raise DCTError(
            f"{what} looks like {family} but its UNet cross-attention width is {sorted(context)}, not "
            f"{_CONTEXT_DIM[family]}; this architecture variant is not supported."
        )
    if kind is not None:
        if kind.split("-")[0] != family:
            raise DCTError(f"kind={kind!r} does not match {what}, whose weights are {family}; drop kind.")
        return kind
    if family != "sd2":
        return family
    return _sd2_prediction(shapes, name, yaml)


def _sd2_prediction(shapes: Mapping[str, Sequence[int]], name: str, yaml: str | os.PathLike | None) -> str:
    if "v_pred" in shapes:  # ComfyUI writes this marker into the v-prediction checkpoints it saves
        return "sd2-v"
    if yaml is not None and Path(yaml).is_file():
        text = Path(yaml).read_text(errors="replace")  # read as text, never evaluated
        return "sd2-v" if re.search(r"parameterization:\s*['\"]?v['\"]?\s*$", text, re.MULTILINE) else "sd2"
    if "768" in name:
        return "sd2-v"
    if "512" in name or "base" in name.lower():
        return "sd2"
    log.warning(
        "%s is SD2.x but nothing says whether it is 768-v (v-prediction) or 512-base (epsilon); assuming "
        "768-v. Pass kind='sd2' (--model-kind sd2) if images come out as noise or flat colour.",
        name or "the checkpoint",
    )
    return "sd2-v"


def _no_extras(cls) -> dict:
    """No safety checker, feature extractor or watermark, for the pipeline classes that take them."""
    extras = dict(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    extras["add_watermarker"] = False  # SDXL
    params = inspect.signature(cls.__init__).parameters
    return {k: v for k, v in extras.items() if k in params}


@contextlib.contextmanager
def _quiet_torch_dtype():
    """diffusers renamed torch_dtype to dtype (with a FutureWarning); older releases know only torch_dtype."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
        yield


def _has(shapes: Mapping[str, object], prefix: str) -> bool:
    return any(k.startswith(prefix) for k in shapes)


def _read_json(file: Path) -> dict:
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise DCTError(f"{file} is not valid JSON ({_first_line(exc)}); re-download the model.") from exc
    if not isinstance(data, dict):
        raise DCTError(f"{file} is not a diffusers model index; re-download the model folder.")
    return data


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")
