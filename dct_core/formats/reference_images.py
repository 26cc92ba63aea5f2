"""Reading a folder of real (reference) images as a tensor, e.g. for the Fréchet distance of ``dct eval``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import DCTError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def image_files(folder: str | os.PathLike, *, recursive: bool = False) -> list[Path]:
    """The image files in ``folder`` (by suffix, any case), sorted by their path inside it; names starting with
    "." (hidden files, macOS "._" metadata) are skipped."""
    root = Path(folder).expanduser()
    if not root.exists():
        raise DCTError(f"reference image folder {root} does not exist.")
    if not root.is_dir():
        raise DCTError(f"{root} is a file; give the folder that holds the reference images.")
    candidates = root.rglob("*") if recursive else root.iterdir()
    files = [
        p for p in candidates
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    ]
    if not files:
        where = " or its subfolders" if recursive else ""
        raise DCTError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {root}{where}.")
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _read(path: Path, size: int | None) -> np.ndarray:
    try:
        with Image.open(path) as image:
            image.load()
            rgb = image.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise DCTError(f"cannot read image {path}: {reason}") from exc
    if size is not None:
        side = min(rgb.size)
        left, top = (rgb.width - side) // 2, (rgb.height - side) // 2
        rgb = rgb.crop((left, top, left + side, top + side))
        if side != size:
            rgb = rgb.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(rgb, dtype=np.uint8)


def load_image_folder(
    folder: str | os.PathLike, *, size: int | None = None, limit: int | None = None, recursive: bool = False,
) -> torch.Tensor:
    """Images [N, 3, H, W] (float32 in [0, 1]) from a folder's .png/.jpg/.jpeg/.webp/.bmp files in sorted order,
    as RGB; the first ``limit`` only when given. With ``size`` each is center-cropped to a square and resized
    (bicubic) to size x size; without it all images must have the same size."""
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise DCTError(f"the reference image size must be a positive whole number, not {size!r}.")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise DCTError(f"the reference image limit must be a positive whole number, not {limit!r}.")
    files = image_files(folder, recursive=recursive)[:limit]
    arrays: list[np.ndarray] = []
    for path in files:
        array = _read(path, size)
        if arrays and array.shape != arrays[0].shape:
            raise DCTError(f"reference images differ in size ({files[0].name}: {arrays[0].shape[1]}x"
                           f"{arrays[0].shape[0]}, {path.name}: {array.shape[1]}x{array.shape[0]}); "
                           f"give a size to crop and resize them to.")
        arrays.append(array)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous().float().div_(255)
