"""The class token and its files, in the formats ComfyUI, A1111/Forge and diffusers all load.

Files:
- one text encoder (SD1 768, SD2 1024): ``{"emb_params": [n, dim]}`` (.safetensors), or A1111's
  ``{"string_to_param": {"*": [n, dim]}, ...}`` (.pt)
- SDXL: ``{"clip_l": [n, 768], "clip_g": [n, 1280]}``
Our metadata rides in the safetensors header under ``dct.*`` keys; hosts ignore it.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .errors import DCTError

ENCODER_KEYS = ("clip_l", "clip_g", "clip_h")
# Which encoder a lone tensor belongs to, by width (SD1 CLIP-L, SDXL CLIP-G, SD2 OpenCLIP-H).
_KEY_BY_WIDTH = {768: "clip_l", 1280: "clip_g", 1024: "clip_h"}
TOKEN_SUFFIXES = (".safetensors", ".pt", ".bin")


@dataclass
class ClassToken:
    """Learned vectors per text encoder (``clip_l``, ``clip_g``, ``clip_h``), each [num_vectors, width]."""

    vectors: dict[str, torch.Tensor]
    name: str = "class-token"
    metadata: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.vectors:
            raise DCTError("a class token needs at least one vector.")
        self.vectors = {k: v.detach().float().cpu().reshape(-1, v.shape[-1]) for k, v in self.vectors.items()}
        counts = {v.shape[0] for v in self.vectors.values()}
        if len(counts) != 1:
            raise DCTError(f"class token {self.name!r} has a different number of vectors per encoder: {counts}.")

    @property
    def num_vectors(self) -> int:
        return next(iter(self.vectors.values())).shape[0]

    def widths(self) -> dict[str, int]:
        return {k: v.shape[1] for k, v in self.vectors.items()}

    def for_encoders(self, encoders: dict[str, int]) -> dict[str, torch.Tensor]:
        """The vectors matched to a model's encoders ({name: width}); a clear error when they do not fit."""
        if len(self.vectors) == 1 and len(encoders) == 1:
            (vec,), ((name, width),) = self.vectors.values(), encoders.items()
            if vec.shape[1] == width:
                return {name: vec}
        elif set(self.vectors) == set(encoders) and all(
            self.vectors[k].shape[1] == w for k, w in encoders.items()
        ):
            return dict(self.vectors)
        have = ", ".join(f"{k}: {w}" for k, w in self.widths().items())
        want = ", ".join(f"{k}: {w}" for k, w in encoders.items())
        raise DCTError(
            f"class token {self.name!r} has widths ({have}) but the model's text encoder(s) need ({want}); "
            "train a token for this model family (SD1: 768, SD2: 1024, SDXL: 768 + 1280)."
        )


def sanitize_name(name: str) -> str:
    """A safe file stem: letters, digits, '.', '_', '-'; no directories, no leading dot."""
    stem = Path(str(name).replace("\\", "/")).name
    for suffix in TOKEN_SUFFIXES:
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip(".-")
    if not stem:
        raise DCTError(f"{name!r} is not a usable token name; use letters, digits, '-', '_' or '.'.")
    return stem


def token_path(directory: str | os.PathLike, name: str, suffix: str = ".safetensors") -> Path:
    """Path of token ``name`` inside ``directory``; the name cannot escape the folder."""
    folder = Path(directory).resolve()
    path = (folder / (sanitize_name(name) + suffix)).resolve()
    if path.parent != folder:
        raise DCTError(f"token name {name!r} would be written outside {folder}.")
    return path


def _state_dict(token: ClassToken) -> dict[str, torch.Tensor]:
    if len(token.vectors) == 1:
        return {"emb_params": next(iter(token.vectors.values())).contiguous()}
    return {k: v.contiguous() for k, v in token.vectors.items()}


def save_class_token(token: ClassToken, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write atomically (temp file + rename). ``.safetensors`` (default) or A1111 ``.pt``."""
    path = Path(path)
    if path.suffix not in (".safetensors", ".pt"):
        path = path.with_name(path.name + ".safetensors")
    if path.exists() and not overwrite:
        raise DCTError(f"{path} already exists; pass --overwrite to replace it or choose another name.")
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {f"dct.{k}": str(v) for k, v in token.metadata.items()}
    meta["dct.name"] = token.name
    meta["dct.encoders"] = json.dumps(list(token.vectors))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        if path.suffix == ".pt":
            if len(token.vectors) != 1:
                raise DCTError("the A1111 .pt format holds one text encoder; save SDXL tokens as .safetensors.")
            vec = next(iter(token.vectors.values()))
            torch.save(
                {"string_to_token": {"*": 265}, "string_to_param": {"*": vec}, "name": token.name,
                 "step": int(token.metadata.get("steps", 0))},
                tmp,
            )
        else:
            save_file(_state_dict(token), tmp, metadata=meta)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _load_pickle(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, EOFError) as exc:
        raise DCTError(
            f"{path} cannot be read safely (it is not a plain tensor file, and running the code a pickle "
            "may hold is refused); re-save it as .safetensors."
        ) from exc


def _vectors_from_state(data: dict, path: Path) -> dict[str, torch.Tensor]:
    """Resolve keys in the order ComfyUI does: string_to_param, per-encoder keys, emb_params, lone tensor."""
    if isinstance(data, torch.Tensor):
        data = {"*": data}
    if not isinstance(data, dict):
        raise DCTError(f"{path} holds no embedding (found {type(data).__name__}).")
    if isinstance(data.get("string_to_param"), dict):
        vec = next(iter(data["string_to_param"].values()))
        return {_KEY_BY_WIDTH.get(vec.shape[-1], "clip_l"): vec}
    per_encoder = {k: data[k] for k in ENCODER_KEYS if isinstance(data.get(k), torch.Tensor)}
    if per_encoder:
        return per_encoder
    tensors = [v for v in data.values() if isinstance(v, torch.Tensor)]
    if "emb_params" in data:
        tensors = [data["emb_params"]]
    if len(tensors) != 1:
        raise DCTError(f"{path} holds {len(tensors)} tensors and no known embedding key; it is not a class token.")
    return {_KEY_BY_WIDTH.get(tensors[0].shape[-1], "clip_l"): tensors[0]}


def load_class_token(path: str | os.PathLike) -> ClassToken:
    """Read any embedding file a host reads (.safetensors, A1111 .pt, diffusers .bin), never running code."""
    path = Path(path)
    if not path.is_file():
        raise DCTError(f"token file {path} does not exist.")
    meta: dict[str, str] = {}
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as f:
                data = {k: f.get_tensor(k) for k in f.keys()}
                meta = dict(f.metadata() or {})
        except Exception as exc:  # safetensors raises its own error types for corrupt headers
            raise DCTError(f"{path} is not a readable .safetensors file ({exc}).") from exc
        encoders = json.loads(meta.get("dct.encoders", "null") or "null")
        if encoders and "emb_params" in data and len(encoders) == 1:
            data = {encoders[0]: data["emb_params"]}
    else:
        data = _load_pickle(path)
    vectors = _vectors_from_state(data, path)
    # The trigger word is the file name, as in every host (embedding:NAME, A1111's embeddings folder).
    metadata = {k[4:]: v for k, v in meta.items() if k.startswith("dct.") and k not in ("dct.encoders", "dct.name")}
    return ClassToken(vectors=vectors, name=path.stem, metadata=metadata)
