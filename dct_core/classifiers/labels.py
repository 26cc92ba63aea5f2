"""Class names: loading, and lookup by index or (any synonym of) a name, with close matches on a miss."""

from __future__ import annotations

import difflib
import json
from pathlib import Path

from ..errors import DCTError


def imagenet_labels() -> list[str]:
    """ImageNet-1k descriptions ("tiger cat", "tabby, tabby cat", ...), shipped with timm: no download."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_description(i) for i in range(info.num_classes())]


def read_labels(path: str | Path) -> list[str]:
    """One label per line (.txt), or a JSON list, or a JSON {index: name} mapping."""
    path = Path(path)
    if not path.is_file():
        raise DCTError(f"labels file {path} does not exist.")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        data = json.loads(text)
        if isinstance(data, dict):
            return [str(data[k]) for k in sorted(data, key=lambda k: int(k))]
        return [str(x) for x in data]
    return [line.strip() for line in text.splitlines() if line.strip()]


def synonyms(label: str) -> list[str]:
    return [s.strip().lower() for s in label.split(",") if s.strip()]


def display_name(label: str) -> str:
    """The first synonym, used in prompts ("tabby, tabby cat" -> "tabby")."""
    return label.split(",")[0].strip()


def resolve_class(labels: list[str], query: str | int) -> int:
    """Index of ``query``: an index, or a case-insensitive name matching any comma-separated synonym."""
    text = str(query).strip()
    if text.isdigit():
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
