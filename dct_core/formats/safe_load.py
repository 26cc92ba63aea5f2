"""Reading a user's tensor file without running code: safetensors, or pickles through torch's weights-only loader.

Every failure is one line that names the file and says which of these it is: missing, a folder, damaged or
truncated, needing code to unpickle, or not holding a dict. torch's own message cannot tell the last two pickle
cases apart (a truncated file is reported as an "Unsupported global"), so a refused pickle is probed again with
a restricted unpickler that never resolves a global outside torch's allow-list (so nothing can run).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import zipfile
from _compat_pickle import IMPORT_MAPPING, NAME_MAPPING
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import DCTError

_ZIP_MAGIC = b"PK\x03\x04"
_LEGACY_PICKLES = 5  # torch's pre-1.6 format: magic, protocol, sys info, objects, storage keys


@dataclass(frozen=True)
class FileKind:
    """How messages speak of a kind of file."""

    noun: str  # "token file", "weights file", "checkpoint"
    convert: str  # what to do instead of loading a pickle that needs code
    short_name: bool = False  # name the file by its name only, not its path


WEIGHTS = FileKind(
    "weights file",
    "convert it once, in an environment you trust, with "
    "safetensors.torch.save_file(model.state_dict(), 'weights.safetensors').",
)


def read_tensors(
    path: str | os.PathLike, kind: FileKind = WEIGHTS, *, mmap: bool = False, tensor_key: str | None = None
) -> dict:
    """The dict a .safetensors file or weights-only pickle holds; a lone tensor becomes ``{tensor_key: t}``.

    ``mmap`` maps zip-format pickles instead of reading them into memory.
    """
    path = _existing_file(path, kind)
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        return _safetensors(path, kind, lambda: load_file(str(path)))
    data = _torch_load(path, kind, mmap)
    if isinstance(data, torch.Tensor) and tensor_key is not None:
        data = {tensor_key: data}
    if not isinstance(data, Mapping):
        raise DCTError(f"{_shown(path, kind)} holds a {type(data).__name__}, not a dict of tensors; "
                       f"it is not a {kind.noun}.")
    return dict(data)


def read_safetensors_metadata(path: str | os.PathLike, kind: FileKind = WEIGHTS) -> dict[str, str]:
    from safetensors import safe_open

    path = _existing_file(path, kind)

    def metadata():
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})

    return _safetensors(path, kind, metadata)


def read_safetensors_shapes(path: str | os.PathLike, kind: FileKind = WEIGHTS) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from the header alone (no tensor is read)."""
    from safetensors import safe_open

    path = _existing_file(path, kind)

    def shapes():
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}

    return _safetensors(path, kind, shapes)


def _shown(path: Path, kind: FileKind) -> str:
    return path.name if kind.short_name else str(path)


def _existing_file(path: str | os.PathLike, kind: FileKind) -> Path:
    path = Path(path)
    if path.is_dir():
        raise DCTError(f"{_shown(path, kind)} is a folder, not a file; give the {kind.noun} itself.")
    if not path.exists():
        raise DCTError(f"{kind.noun} {_shown(path, kind)} does not exist.")
    try:
        open(path, "rb").close()  # a failure to read past this point is the content's
    except OSError as exc:
        raise DCTError(f"cannot read {_shown(path, kind)}: {exc.strerror or exc}.") from exc
    return path


def _safetensors(path: Path, kind: FileKind, read):
    try:
        return read()
    except Exception as exc:  # safetensors raises its own error types for a bad header or short file
        raise DCTError(
            f"{_shown(path, kind)} is not a readable .safetensors file: damaged or truncated ({_first_line(exc)}); "
            "re-download it or save it again."
        ) from exc


def _torch_load(path: Path, kind: FileKind, mmap: bool):
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path))
    except Exception as exc:  # many types: UnpicklingError, RuntimeError, EOFError, struct.error, OSError
        raise _refusal(path, kind, exc) from exc


def _refusal(path: Path, kind: FileKind, exc: Exception) -> DCTError:
    """Why torch's weights-only load failed, told apart by probing the pickle (torch's message cannot)."""
    shown = _shown(path, kind)
    needs, problem = inspect_pickle(path)
    if needs:
        return DCTError(f"refusing to load {shown}: it would run arbitrary Python code when loaded (it calls "
                        f"{needs}); {kind.convert}")
    if problem is None and isinstance(exc, pickle.UnpicklingError):  # intact, in a form torch refuses
        return DCTError(f"{shown} is not a plain tensor file torch can load safely ({_torch_detail(exc)}); "
                        f"{kind.convert}")
    return DCTError(f"{shown} is not a readable {kind.noun}: damaged or truncated ({problem or _torch_detail(exc)}); "
                    "re-download it or save it again.")


def inspect_pickle(path: str | os.PathLike) -> tuple[str | None, str | None]:
    """(the first global outside torch's allow-list the file's pickle would call, what is wrong with the pickle).

    Nothing is resolved or called while looking. A pickle damaged before any such global gives (None, problem).
    """
    try:
        with _pickle_stream(Path(path)) as stream:
            for _ in range(_LEGACY_PICKLES):
                if not stream.peek(1)[:1]:
                    break
                _Probe(stream).load()
    except _NeedsCode as found:
        return str(found), None
    except Exception as exc:  # damaged: any failure of the probe itself
        return None, _first_line(exc)
    return None, None


@contextlib.contextmanager
def _pickle_stream(path: Path):
    """The pickle of a file: the file itself, or data.pkl of torch's zip format."""
    with open(path, "rb") as f:
        if f.peek(4)[:4] != _ZIP_MAGIC:
            yield f
            return
    with zipfile.ZipFile(path) as archive:
        member = next(n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl"))
        with archive.open(member) as stream:
            yield stream


class _NeedsCode(Exception):
    pass


class _Stub:
    """Stands in for every allowed global and every object built from one; accepts whatever a pickle does."""

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return _Stub()

    def __setitem__(self, key, value):
        pass

    def __setstate__(self, state):
        pass

    def append(self, item):
        pass

    def extend(self, items):
        pass

    def add(self, item):
        pass


class _Probe(pickle.Unpickler):
    def find_class(self, module, name):
        module, name = NAME_MAPPING.get((module, name), (IMPORT_MAPPING.get(module, module), name))  # Python 2 names
        if f"{module}.{name}" not in _allowed_globals():
            raise _NeedsCode(f"{module}.{name}")
        return _Stub

    def persistent_load(self, pid):
        return _Stub()


def _allowed_globals() -> set[str]:
    try:
        from torch._weights_only_unpickler import _get_allowed_globals

        return set(_get_allowed_globals())
    except (ImportError, AttributeError):  # a private torch API: fall back to what torch.save writes
        return {"collections.OrderedDict", "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter",
                "torch.FloatStorage", "torch.HalfStorage", "torch.BFloat16Storage", "torch.LongStorage"}


def _torch_detail(exc: BaseException) -> str:
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1]
    return _first_line(text) if text.strip() else type(exc).__name__


def _first_line(exc: BaseException | str) -> str:
    """The first sentence of a message, for a one-line error."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__).split(". ")[0].rstrip(".")[:160]
