"""Which files of a `dct dataset` output folder are ours, so that nothing the user put there is ever overwritten.

- ``OUT/.dct-dataset`` (the marker) is written before anything else: a folder holding it is ours. A folder from
  before the marker existed is ours when it holds our manifest or our unit records (JSON records with the
  manifest's keys); a missing folder, or one without files (empty folders at most), is fresh; anything else holds
  someone else's files, and we write there only when asked (``allow_foreign``), beside them, never over them.
- Every PNG we draw carries its manifest record in a PNG text chunk (``dct:record``, with ``dct:seed`` and
  ``dct:prompt`` for image viewers). A file where an image goes is kept when it is a complete PNG of the expected
  size whose record is the planned one; it may be redrawn when it carries our chunk or the unit's record lists it
  (images from before the chunk existed); any other file there is someone else's and stops the run.
- Unit records (``OUT/<class>/.records-<first>-<n>.json``) that are damaged or hand-edited into something that is
  not a list of our records are ignored and rewritten; a folder in a state file's place is a one-line error.
"""

from __future__ import annotations

import json
import os
from enum import Enum
from pathlib import Path

from ..errors import DCTError
from ..formats.files import TEMP_SUFFIX, atomic_write

MARKER = ".dct-dataset"
MANIFEST = "manifest.jsonl"
RECORD_PREFIX = ".records-"
# The manifest format: the keys of every record (one line of manifest.jsonl, one entry of a unit's record file).
RECORD_KEYS = frozenset({"class", "class_index", "folder", "file", "seed", "prompt", "with_token", "token_file",
                         "model", "sampling"})
PNG_RECORD = "dct:record"
_MARKER_TEXT = json.dumps({"made_by": "dct dataset", "format": 1}) + "\n"
# What a file manager leaves in any folder it shows: not the user's data.
_SYSTEM_FILES = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})


class Found(Enum):
    """What is in the place of a planned image."""

    NOTHING = "nothing"
    OURS = "ours"  # our chunk with the planned record, complete, the expected size: kept
    OURS_OTHER = "ours, other"  # our chunk, but damaged or drawn with other settings: redrawn
    PLAIN = "plain"  # a complete PNG of the expected size without our chunk: ours only if our records list it
    OTHER = "other"  # anything else: ours only if our records list it


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def _is_ours_temp(name: str) -> bool:
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


def check_out_folder(out: Path, allow_foreign: bool) -> None:
    """Refuse an ``--out`` that holds files we did not write (unless ``allow_foreign``); reads only."""
    if out.exists() and not out.is_dir():
        raise DCTError(f"{out} is a file; give a folder for --out (a new or empty one, or one dct dataset wrote).")
    if not out.is_dir():
        return
    marker = out / MARKER
    if marker.is_file():
        return
    if os.path.lexists(marker):
        raise DCTError(f"{marker} is not a file (dct dataset marks its folders with a file of that name); "
                       "remove it and run again.")
    try:
        first = _first_file(out)
    except OSError as exc:
        raise DCTError(f"cannot read the folder {out} ({_reason(exc)}); give a folder you can read for --out.") from exc
    # Look at the marker again: another rank may have claimed the folder (marker first) while this one listed it.
    if first is None or marker.is_file() or is_our_manifest(out / MANIFEST) or _holds_our_records(out):
        return
    if not allow_foreign:
        raise DCTError(f"{out} holds files that dct dataset did not write (e.g. {first!r}); give a new or empty "
                       "folder for --out, or add --allow-foreign-files to write beside them (they are never "
                       "overwritten).")


def _first_file(folder: Path, prefix: str = "") -> str | None:
    """The first file (or link) in the tree, as a relative path; None when it holds only (empty) folders."""
    entries = sorted(os.scandir(folder), key=lambda e: e.name)
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            continue
        if not _is_ours_temp(entry.name) and entry.name not in _SYSTEM_FILES:
            return prefix + entry.name
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            found = _first_file(Path(entry.path), f"{prefix}{entry.name}/")
            if found is not None:
                return found
    return None


def write_marker(out: Path) -> None:
    """Claim the folder before the first image (every rank may: the content is the same)."""
    marker = out / MARKER
    if marker.is_file():
        return
    try:
        atomic_write(marker, _MARKER_TEXT.encode())
    except OSError as exc:
        raise DCTError(f"cannot write into {out} ({_reason(exc)}); give a folder you can write to for --out.") from exc


def _holds_our_records(out: Path) -> bool:
    try:
        folders = [Path(e.path) for e in os.scandir(out) if e.is_dir()]
        return any(_load_records(f) is not None for folder in folders for f in folder.glob(f"{RECORD_PREFIX}*.json"))
    except OSError:
        return False


def _is_record(value) -> bool:
    return isinstance(value, dict) and RECORD_KEYS <= value.keys()


def _load_records(path: Path) -> list[dict] | None:
    """A unit's records, or None when absent, unreadable or not a non-empty list of our records."""
    try:
        value = json.loads(path.read_bytes())
    except (OSError, ValueError):  # ValueError: not JSON, not UTF-8
        return None
    if isinstance(value, list) and value and all(_is_record(r) for r in value):
        return value
    return None


def read_records(path: Path) -> list[dict] | None:
    """As ``_load_records``; a folder in its place (which we would have to delete) is a one-line error."""
    if path.is_dir():
        raise DCTError(f"{path} is a folder where dct dataset keeps a record file; remove it and run again.")
    return _load_records(path)


def is_our_manifest(path: Path) -> bool:
    """A manifest we wrote (perhaps hand-edited since): its first line is one of our records. Only that line is
    read, so that every rank can ask cheaply of a manifest of millions of images."""
    try:
        with open(path, "rb") as f:
            for _ in range(1000):
                line = f.readline(1 << 20)
                if not line:
                    return False
                if line.strip():
                    return _is_record(json.loads(line.decode("utf-8")))
    except (OSError, ValueError):
        pass
    return False


def check_manifest_target(path: Path) -> None:
    """The manifest may be (re)written: nothing there, or a manifest we wrote."""
    if path.is_dir():
        raise DCTError(f"{path} is a folder where dct dataset writes its manifest; move it away and run again.")
    if os.path.lexists(path) and not is_our_manifest(path) and not _empty_file(path):
        raise DCTError(f"{path} is not a manifest dct dataset wrote (lines of JSON records); move it away (dct "
                       "dataset writes its manifest there) and run again.")


def _empty_file(path: Path) -> bool:
    """Nothing to lose (a filtered dataset where no image passed writes an empty manifest)."""
    try:
        return path.is_file() and path.stat().st_size == 0
    except OSError:
        return False


def check_class_folder(folder: Path) -> None:
    if os.path.lexists(folder) and not folder.is_dir():
        raise DCTError(f"{folder} is a file where dct dataset puts a class's images; move it away and run again.")


def png_text(record: dict) -> dict[str, str]:
    """The text chunks an image is saved with."""
    return {"dct:seed": str(record["seed"]), "dct:prompt": record["prompt"],
            PNG_RECORD: json.dumps(record, sort_keys=True)}


def find_image(path: Path, record: dict, size: tuple[int, int]) -> Found:
    """What is where the image of ``record`` goes (a folder there is a one-line error)."""
    if not os.path.lexists(path):
        return Found.NOTHING
    if path.is_dir() or not path.is_file():
        raise DCTError(f"{path} is not a file, and an image of this dataset goes there; move it away and run again.")
    from PIL import Image

    text = None
    complete = False
    try:
        with Image.open(path) as image:
            text = image.info.get(PNG_RECORD)  # text chunks before the image data: read even if it is cut short
            image.load()
            complete = image.format == "PNG" and image.size == size
    except Exception:  # any decoding failure: not a usable image
        pass
    if isinstance(text, str):
        try:
            same = json.loads(text) == record
        except ValueError:
            same = False
        return Found.OURS if same and complete else Found.OURS_OTHER
    return Found.PLAIN if complete else Found.OTHER


def foreign_image_error(path: Path) -> DCTError:
    return DCTError(f"{path} is not an image dct dataset drew, and an image of this dataset goes there; move it "
                    "elsewhere and run again (dct dataset never overwrites a file it did not write).")
