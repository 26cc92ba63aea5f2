"""Reading the small text files around a classifier (labels, sidecars, configs) with one-line errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import DCTError


def existing_file(path: str | Path, what: str) -> Path:
    """``path`` as a Path, or a DCTError saying it is missing or a folder."""
    path = Path(path)
    if path.is_dir():
        raise DCTError(f"{what} {path} is a folder, not a file.")
    if not path.is_file():
        raise DCTError(f"{what} {path} does not exist.")
    return path


def read_text(path: str | Path, what: str) -> str:
    path = existing_file(path, what)
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DCTError(f"{what} {path} is not UTF-8 text (a binary file?); byte {exc.start} cannot be read.") from exc


def read_json(path: str | Path, what: str) -> Any:
    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DCTError(f"{what} {path} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}.") from exc


def json_kind(value: Any) -> str:
    """How JSON would call ``value``, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    kinds = {str: "a string", int: "a number", float: "a number", list: "a list", dict: "an object"}
    return kinds.get(type(value), type(value).__name__)


def read_json_object(path: str | Path, what: str) -> dict[str, Any]:
    data = read_json(path, what)
    if not isinstance(data, dict):
        raise DCTError(f"{what} {path} holds {json_kind(data)}; it must be a JSON object {{\"key\": value, ...}}.")
    return data


def read_model_config(folder: str | Path) -> dict[str, Any]:
    """A model folder's config.json."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise DCTError(f"{folder} has no config.json; it is not a timm or transformers model folder.")
    return read_json_object(folder / "config.json", "model config")


def existing_path(spec: str) -> Path | None:
    """``spec`` as an existing path (``~`` expanded), or None; a name the system cannot take counts as missing."""
    try:
        path = Path(spec).expanduser()
        return path if path.exists() else None
    except (OSError, ValueError, RuntimeError):  # a name too long, a NUL byte, an unknown ~user
        return None


def model_config_or_none(spec: str) -> dict[str, Any] | None:
    """The config.json of the model folder ``spec`` names, or None where it names no folder or the config cannot
    be read (the source that takes such a folder reports why)."""
    path = existing_path(spec)
    if path is None or not path.is_dir():
        return None
    try:
        return read_model_config(path)
    except DCTError:
        return None
