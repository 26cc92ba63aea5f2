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
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..errors import DCTError, TokenSaveError
from .files import atomic_write, probe_writable, temp_name
from .safe_load import FileKind, read_safetensors_metadata, read_tensors

ENCODER_KEYS = ("clip_l", "clip_g", "clip_h")
# Which encoder a lone tensor belongs to, by width (SD1 CLIP-L, SDXL CLIP-G, SD2 OpenCLIP-H).
_KEY_BY_WIDTH = {768: "clip_l", 1280: "clip_g", 1024: "clip_h"}
TOKEN_SUFFIXES = (".safetensors", ".pt", ".bin")
TOKEN_FILE = FileKind("token file", "re-save it as .safetensors in an environment you trust.")
OVERWRITE_HINT = "choose another name, or save with overwrite=True"
# CLIP's own token embeddings stay well below 1 per element and trained tokens within a few units: a value past
# this bound only comes from a diverged run or a broken file.
MAX_ABS_VALUE = 1e4


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


def validate_class_token(token: ClassToken, source: str | None = None) -> ClassToken:
    """The token itself, or a one-line DCTError when no host could use it: NaN or infinite values, any value
    beyond +-MAX_ABS_VALUE, or an all-zero vector. ``source`` names it in the message (default: its name)."""
    for key, vec in token.vectors.items():
        problem = _vector_problem(vec)
        if problem:
            raise DCTError(f"{source or f'class token {token.name!r}'} is unusable: its {key} vector {problem}; "
                           "retrain it or use another token.")
    return token


def _vector_problem(vec: torch.Tensor) -> str | None:
    if vec.numel() == 0:
        return "is empty"
    if not torch.isfinite(vec).all():
        return "has NaN or infinite values"
    peak = vec.abs().max().item()
    if peak > MAX_ABS_VALUE:
        return f"has a value of {peak:.3g}, beyond any real embedding (limit {MAX_ABS_VALUE:g})"
    zero = (vec == 0).all(dim=-1).nonzero()
    if len(zero):
        return f"{int(zero[0, 0])} is all zeros" if vec.shape[0] > 1 else "is all zeros"
    return None


def check_save_target(path: str | os.PathLike, *, overwrite: bool, overwrite_hint: str) -> Path:
    """The final path a token saved to ``path`` gets (``.safetensors`` appended unless it ends in .safetensors
    or .pt), after checking that it can be written: a one-line DCTError otherwise. Call it before training."""
    path = _final_path(path)
    _make_folder(path.parent)
    _check_name_length(path)  # first: a stat of an over-long name fails
    if path.is_dir():
        raise DCTError(f"{path} is a folder; give a file name for the token.")
    try:
        probe_writable(path.parent)
    except OSError as exc:
        raise DCTError(f"cannot write to the folder {path.parent}: {exc.strerror or exc}.") from exc
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise DCTError(f"{path} already exists; {_sentence(overwrite_hint)}")
    return path


def save_class_token(
    token: ClassToken,
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    fallback: bool = False,
    overwrite_hint: str = OVERWRITE_HINT,
) -> Path:
    """Write the token atomically, ``.safetensors`` (default) or A1111 ``.pt``; the saved path.

    Failures raise TokenSaveError (a DCTError). With ``fallback`` a token that cannot be saved where asked
    (folder gone, disk full, name taken meanwhile) is written to a spare folder first and the error says where
    (``.fallback_path``): for a token that took long to train.
    """
    validate_class_token(token)
    final = _final_path(path)
    writer = _writer(token, final.suffix)
    try:
        final = check_save_target(final, overwrite=overwrite, overwrite_hint=overwrite_hint)
        return atomic_write(final, writer, overwrite=overwrite, exists_hint=overwrite_hint)
    except (OSError, DCTError) as exc:
        failure = str(exc).rstrip(".") if isinstance(exc, DCTError) else f"could not save {final}: {_reason(exc)}"
        if not fallback:
            raise TokenSaveError(failure + ".") from exc
        raise _kept_elsewhere(final, writer, failure) from exc


def _final_path(path: str | os.PathLike) -> Path:
    path = Path(path).expanduser()
    if path.suffix not in (".safetensors", ".pt"):
        path = path.with_name(path.name + ".safetensors")
    return path


def _make_folder(folder: Path) -> None:
    if folder.exists() and not folder.is_dir():
        raise DCTError(f"cannot save into {folder}: it is a file, not a folder.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DCTError(f"cannot create the folder {folder}: {exc.strerror or exc}.") from exc


def _check_name_length(path: Path) -> None:
    limit = _name_max(path.parent)
    for what, name in (("file name", path.name), ("temporary file name", temp_name(path.name))):
        size = len(os.fsencode(name))
        if size > limit:
            shown = path.name if len(path.name) <= 60 else path.name[:57] + "..."
            raise DCTError(f"{shown!r} is too long: its {what} is {size} bytes, over this file system's limit "
                           f"of {limit}; choose a shorter name.")


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (AttributeError, OSError, ValueError):  # no pathconf (Windows) or no answer
        return 255


def _writer(token: ClassToken, suffix: str):
    """A callback writing the token file at the temp path it is given."""
    if suffix == ".pt":
        if len(token.vectors) != 1:
            raise DCTError("the A1111 .pt format holds one text encoder; save SDXL tokens as .safetensors.")
        vec = next(iter(token.vectors.values()))
        data = {"string_to_token": {"*": 265}, "string_to_param": {"*": vec}, "name": token.name,
                "step": int(token.metadata.get("steps", 0))}
        return lambda tmp: torch.save(data, tmp)
    meta = {f"dct.{k}": str(v) for k, v in token.metadata.items()}
    meta["dct.name"] = token.name
    meta["dct.encoders"] = json.dumps(list(token.vectors))
    state = _state_dict(token)
    return lambda tmp: save_file(state, str(tmp), metadata=meta)


def _kept_elsewhere(path: Path, writer, failure: str) -> TokenSaveError:
    """Write the token to the first spare folder that takes it; the error to raise, saying where it went."""
    stem = path.stem[:100]  # the asked-for name may be what failed (too long)
    name = f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}{path.suffix}"
    failures = []
    for folder in fallback_folders():
        try:
            kept = atomic_write(folder / name, writer, overwrite=False)
        except (OSError, DCTError) as exc:
            failures.append(f"{folder}: {_reason(exc)}")
            continue
        return TokenSaveError(f"{failure}; the trained token was kept in {kept} instead: move it where it belongs.",
                              fallback_path=kept)
    return TokenSaveError(f"{failure}; keeping a copy elsewhere failed too ({'; '.join(failures)}).")


def fallback_folders() -> list[Path]:
    """Where a token that cannot be saved where asked is kept, in order of preference."""
    return [Path(tempfile.gettempdir()) / "dct-unsaved", Path.home() / "dct-unsaved"]


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc).rstrip(".")


def _sentence(text: str) -> str:
    return text.rstrip(".") + "."


def _file_tensor(value, key: str, path: Path) -> torch.Tensor:
    """A tensor from a token file that can be a [vectors, width] embedding, or a one-line DCTError."""
    if not isinstance(value, torch.Tensor):
        raise DCTError(f"{path} holds {type(value).__name__!r} data under {key!r}, not a tensor; it is not a class "
                       "token.")
    if value.dim() == 0 or value.numel() == 0:
        what = "a single number" if value.dim() == 0 else "an empty tensor"
        raise DCTError(f"{path} holds {what} under {key!r}, not [vectors, width] embedding; it is not a class token.")
    if not value.is_floating_point():
        raise DCTError(f"{path} holds {value.dtype} values under {key!r}, not floats; it is not a class token.")
    return value


def _vectors_from_state(data: dict, path: Path) -> dict[str, torch.Tensor]:
    """Resolve keys in the order ComfyUI does: string_to_param, per-encoder keys, emb_params, lone tensor."""
    if "string_to_param" in data:
        params = data["string_to_param"]
        if not isinstance(params, dict) or not params:
            raise DCTError(f"{path} has an empty or malformed string_to_param (A1111 format); it holds no embedding.")
        vec = _file_tensor(next(iter(params.values())), "string_to_param", path)
        return {_KEY_BY_WIDTH.get(vec.shape[-1], "clip_l"): vec}
    per_encoder = {k: _file_tensor(data[k], k, path) for k in ENCODER_KEYS if k in data}
    if per_encoder:
        return per_encoder
    keys = ["emb_params"] if "emb_params" in data else [k for k, v in data.items() if isinstance(v, torch.Tensor)]
    if len(keys) != 1:
        raise DCTError(f"{path} holds {len(keys)} tensors and no known embedding key; it is not a class token.")
    vec = _file_tensor(data[keys[0]], keys[0], path)
    return {_KEY_BY_WIDTH.get(vec.shape[-1], "clip_l"): vec}


# Longest metadata value read from a token file: a label or prompt a text encoder can read is far shorter (77
# tokens); a longer one is a damaged or hostile file (a 40 MB label would be copied into every dataset record).
MAX_METADATA_CHARS = 16_384


def _encoder_names(text: str | None, path: Path) -> list[str] | None:
    """``dct.encoders``: a JSON list of encoder names, or absent; anything else is ignored (the tensors' own keys
    and widths name the encoders then)."""
    if not text:
        return None
    try:
        names = json.loads(text)
    except ValueError:
        return None
    return names if isinstance(names, list) and names and all(isinstance(n, str) for n in names) else None


def _check_metadata_sizes(metadata: dict[str, str], path: Path) -> None:
    for key, value in metadata.items():
        if len(value) > MAX_METADATA_CHARS:
            raise DCTError(f"token file {path}: its metadata {key!r} is {len(value)} characters long (at most "
                           f"{MAX_METADATA_CHARS}); the file is damaged or not one of ours.")


def load_class_token(path: str | os.PathLike) -> ClassToken:
    """Read any embedding file a host reads (.safetensors, A1111 .pt, diffusers .bin), never running code.

    A token no host could use (see validate_class_token) raises a one-line DCTError.
    """
    path = Path(path)
    data = read_tensors(path, TOKEN_FILE, tensor_key="*")
    meta = read_safetensors_metadata(path, TOKEN_FILE) if path.suffix.lower() == ".safetensors" else {}
    encoders = _encoder_names(meta.get("dct.encoders"), path)
    if encoders and "emb_params" in data and len(encoders) == 1:
        data = {encoders[0]: data["emb_params"]}
    vectors = _vectors_from_state(data, path)
    # The trigger word is the file name, as in every host (embedding:NAME, A1111's embeddings folder).
    metadata = {k[4:]: v for k, v in meta.items() if k.startswith("dct.") and k not in ("dct.encoders", "dct.name")}
    _check_metadata_sizes(metadata, path)
    return validate_class_token(ClassToken(vectors=vectors, name=path.stem, metadata=metadata), f"token file {path}")
