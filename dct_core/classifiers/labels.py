"""Class names: loading, and lookup by index or (any synonym of) a name, with close matches on a miss."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from ..errors import DCTError
from .text_files import json_kind, read_json, read_text


def imagenet_labels() -> list[str]:
    """ImageNet-1k descriptions ("tiger cat", "tabby, tabby cat", ...), shipped with timm: no download."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_description(i) for i in range(info.num_classes())]


def read_labels(path: str | Path) -> list[str]:
    """One label per line (.txt), or a JSON list, or a JSON {index: name} mapping."""
    if Path(path).suffix == ".json":
        return names_from_json(read_json(path, "labels file"), f"labels file {path}")
    text = read_text(path, "labels file")
    return [line.strip() for line in text.splitlines() if line.strip()]


def labels_from(labels: str | Path | list[str]) -> list[str]:
    """Labels given as a list, or the path of a labels file."""
    return labels if isinstance(labels, list) else read_labels(labels)


def names_from_json(data: Any, source: str) -> list[str]:
    """Class names from parsed JSON: a list in class order, or {index: name} covering every index 0..N-1."""
    if isinstance(data, list):
        return [_name(value, f"entry {i}", source) for i, value in enumerate(data)]
    if isinstance(data, dict):
        return _names_by_index(data, source)
    raise DCTError(f"{source} holds {json_kind(data)}; expected a list of names or an {{index: name}} object.")


def _name(value: Any, where: str, source: str) -> str:
    if isinstance(value, str) or (isinstance(value, (int, float)) and not isinstance(value, bool)):
        return str(value)
    raise DCTError(f"{where} of {source} is {json_kind(value)}, not a class name (a string).")


def _index(key: Any, source: str) -> int:
    try:
        index = int(key)
    except (TypeError, ValueError):
        index = -1
    if index < 0:
        raise DCTError(f"key {key!r} of {source} is not a class index (0, 1, 2, ...).")
    return index


def _names_by_index(data: dict, source: str) -> list[str]:
    names: dict[int, str] = {}
    for key, value in data.items():
        index = _index(key, source)
        if index in names:
            raise DCTError(f"{source} names class index {index} twice.")
        names[index] = _name(value, f"the name for {key!r}", source)
    # Refuse gaps rather than renumber: class i must keep index i, which the classifier's outputs use.
    missing = [i for i in range(max(names, default=-1) + 1) if i not in names]
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (", ..." if len(missing) > 10 else "")
        raise DCTError(
            f"{source} has no name for class index {shown} (its keys go up to {max(names)}); "
            "give one name for every index from 0, in the classifier's class order."
        )
    return [names[i] for i in range(len(names))]


def check_label_count(names: list[str], num_classes: int, model_name: str) -> list[str]:
    """``names``, if there is one per output of the classifier."""
    if len(names) != num_classes:
        raise DCTError(
            f"the labels list has {len(names)} names but the classifier {model_name!r} outputs {num_classes} "
            "classes; give one name per class, in class-index order."
        )
    return names


def synonyms(label: str) -> list[str]:
    return [s.strip().lower() for s in label.split(",") if s.strip()]


def display_name(label: str) -> str:
    """The first synonym, used in prompts ("tabby, tabby cat" -> "tabby")."""
    return label.split(",")[0].strip()


def resolve_class(labels: list[str], query: str | int) -> int:
    """Index of ``query``: an index, or a case-insensitive name matching any comma-separated synonym."""
    text = str(query).strip()
    if text.isascii() and text.isdigit():  # "١" or "²" are digits to Python, not class indices
        index = int(text)
        if not 0 <= index < len(labels):
            raise DCTError(
                f"class index {index} is out of range: this classifier has {len(labels)} classes "
                f"(0-{len(labels) - 1})."
            )
        return index
    wanted = text.lower()
    for i, label in enumerate(labels):
        if wanted == label.strip().lower() or wanted in synonyms(label):
            return i
    names = {s: i for i, label in enumerate(labels) for s in synonyms(label)}
    close = difflib.get_close_matches(wanted, list(names), n=5, cutoff=0.6)
    close += [s for s in names if wanted in s and s not in close][: 5 - len(close)]
    hint = "; close matches: " + ", ".join(f"{s!r} ({names[s]})" for s in close) if close else ""
    raise DCTError(
        f"no class named {text!r} among the classifier's {len(labels)} labels{hint}. "
        "Give the name as the labels list spells it, or the class index."
    )
