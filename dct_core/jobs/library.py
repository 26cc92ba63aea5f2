"""`dct library`: one class token per class of a classifier, into one folder, resumable and split over ranks.

The folder is the state: ``<class>.safetensors`` per finished class (written atomically by the one run layer,
``run.run_training``, whose metadata says steps, accuracy, seconds, ...), ``.failed/<class>.json`` per class whose
last attempt failed (written atomically by the run that owned it, removed when the class succeeds),
``.locks/<class>.lock`` while a run trains the class, and ``index.json``, which is only derived from those files:
rank 0 rebuilds it at the start and after the final barrier, so a missing, stale or damaged index costs nothing.

- A class counts as done only when its token file loads, validates and its metadata says it is this class (index
  and label) of this base model and classifier. A file under the class's name that is not (another class's,
  another model's, damaged, a folder) is never overwritten: the class is failed with a line saying what differs.
- File names are the sanitized labels; labels whose names would collide (``bird 1`` / ``bird-1``, ``a/b`` / ``b``,
  or ``Bird`` / ``bird`` on a case-insensitive file system) all get their class index as a suffix, so each class
  has its own file. A label that gives no usable name fails that class alone.
- A run takes a class's lock (``formats.locks``) before training it, so two runs on one folder train each class
  once; a class locked by a live other run is skipped and shown as "running elsewhere".
- Failures of the bookkeeping (a ``.failed`` record that cannot be written, a lock folder that cannot be used)
  warn once on stderr and never stop the run.

Under ``torchrun --nproc_per_node=N`` (or ``python -m torch.distributed.run``) each rank trains every N-th class
(``distributed.Ranks.share``) on its own device; without a launcher it is one process.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import stat
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..classifiers import Classifier
from ..config import DEFAULT_PRESET, TrainConfig
from ..errors import DCTError
from ..formats import locks
from ..formats.files import atomic_write, remove_stale_temps, temp_name
from ..formats.printable import json_text, printable
from ..formats.tokens import load_class_token, sanitize_name
from ..method.backend import Backend
from ..method.training import StepRecord, TrainResult
from ..settings import parse_ranges
from .distributed import Ranks, barrier
from .run import RunHooks, TrainJob, run_training

INDEX_NAME = "index.json"
FAILED_DIR = ".failed"
LOCK_DIR = ".locks"
INDEX_FORMAT = "dct-library/1"
TOKEN_FORMAT_PREFIX = "dct-token/"
EVAL_FIRST_SEED = 100_000  # held-out evaluation seeds: far from the training seeds
STATE_NAME_MAX = 120  # bytes of a class name in .failed/ and .locks/ file names (longer ones are shortened)
NAME_MAX = 255  # bytes of a file name on common file systems (the token's temp name must fit too)


@dataclass(frozen=True)
class LibraryClass:
    """One entry of the selection: a resolved class, or what was asked for and why it cannot be trained."""

    key: str  # the file stem: the sanitized label, made unique (or a stand-in when the class has no usable name)
    index: int | None
    label: str
    error: str | None = None
    class_name: str = ""  # the classifier's name for the class, as token metadata records it (class_label)
    legacy: str | None = None  # the stem this class's token had before colliding names were told apart


@dataclass
class LibrarySettings:
    config: TrainConfig
    recipe: str = DEFAULT_PRESET
    base_model: str = ""
    classifier_name: str = ""
    prompt_words: dict[str, str] | None = None  # class label -> the word prompts use (default: the label)
    init_from_word: bool = False  # each token starts from its class's prompt word (the demo's way)
    eval_classifier: Classifier | None = None
    eval_name: str = ""
    eval_images: int = 8


# --- names and the selection ---------------------------------------------------------------------------------


def _fold(name: str) -> str:
    return name.casefold()


def _unique(name: str, suffix: str, taken: set[str]) -> str:
    """``name-suffix`` (then ``-suffix`` again) until no taken name equals it case-insensitively."""
    candidate = f"{name}-{suffix}"
    while _fold(candidate) in taken:
        candidate = f"{candidate}-{suffix}"
    taken.add(_fold(candidate))
    return candidate


def library_classes(classifier: Classifier) -> list[LibraryClass]:
    """Every class of the classifier with its file stem. A label's stem is ``sanitize_name(label)`` as always,
    unless several labels give the same stem compared case-insensitively (``bird 1`` / ``bird-1``, ``a/b`` / ``b``,
    ``Bird`` / ``bird``): then each of them gets ``-<class index>``, so that every class has its own file on any
    file system. A label that gives no usable stem (``..``, a script the rule removes entirely) is an error entry."""
    labels = list(classifier.labels)
    stems: list[str | None] = []
    for label in labels:
        try:
            stems.append(sanitize_name(str(label)))
        except DCTError:
            stems.append(None)
    counts = Counter(_fold(s) for s in stems if s is not None)
    taken = set(counts)
    out = []
    for i, (label, stem) in enumerate(zip(labels, stems)):
        name = _class_name(classifier, i)
        if stem is None:
            unusable = (f"class {i}'s label {label!r} gives no usable file name (letters, digits, '.', '_' and '-' "
                        "are kept; no leading dot); name the class differently in a labels file (--labels) to "
                        "train it.")
            out.append(LibraryClass(_unique("unnamed", str(i), taken), i, str(label), unusable, name))
            continue
        colliding = counts[_fold(stem)] > 1
        key = _unique(stem, str(i), taken) if colliding else stem
        size = len(os.fsencode(temp_name(f"{key}.safetensors", pid=4194304)))
        error: str | None = None
        if size > NAME_MAX:
            error = (f"class {i}'s label is too long for a file name ({size} bytes with the token file's suffixes, "
                     f"over the {NAME_MAX} file systems allow); give it a shorter name in a labels file (--labels) "
                     "to train it.")
        out.append(LibraryClass(key, i, str(label), error, name, legacy=stem if colliding else None))
    return out


def _class_name(classifier: Classifier, index: int) -> str:
    try:
        return classifier.class_name(index)
    except Exception:  # a classifier object without the usual naming: the label itself
        return str(classifier.labels[index])


def _unresolved(text: str, error: str, taken: set[str]) -> LibraryClass:
    """A line of a --classes file that names no class: kept with its error so that it is recorded as failed,
    under a name no class has."""
    try:
        stem = sanitize_name(text)
    except DCTError:
        stem = "unnamed"
    if _fold(stem) in taken:
        stem = _unique(stem, hashlib.sha1(text.encode()).hexdigest()[:8], taken)
    taken.add(_fold(stem))
    return LibraryClass(stem, None, text, error)


def _ascii_int(text: str) -> int:
    text = text.strip()
    if not re.fullmatch(r"[0-9]{1,12}", text):
        raise ValueError(text)
    return int(text)


def _is_file(spec: str) -> bool:
    try:
        return Path(spec).is_file()
    except (OSError, ValueError):  # a name too long for a path, a NUL byte: not a file
        return False


def _read_lines(spec: str) -> list[str]:
    try:
        text = Path(spec).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DCTError(f"--classes file {spec} is not UTF-8 text; write one label or index per line.") from None
    except OSError as exc:
        raise DCTError(f"cannot read the --classes file {spec}: {exc.strerror or exc}.") from None
    return [line.strip() for line in text.splitlines()]


def select_classes(spec: str, classifier: Classifier) -> list[LibraryClass]:
    """``all``, indices (``0-9``, ``3,5,7``) or a file with one label or index per line; duplicates once.
    A line that names no class is kept, with its error, so that it is recorded as failed."""
    spec = spec.strip()
    n = classifier.num_classes
    every = library_classes(classifier)
    if spec == "all":
        chosen = every
    elif _is_file(spec):
        taken = {_fold(c.key) for c in every}
        chosen = []
        asked: set[str] = set()
        for line in _read_lines(spec):
            if not line or line.startswith("#"):
                continue
            try:
                chosen.append(every[classifier.class_index(line)])
            except DCTError as exc:
                if _fold(line) not in asked:
                    asked.add(_fold(line))
                    chosen.append(_unresolved(line, str(exc), taken))
    else:
        if not spec.isascii():
            raise DCTError(f"--classes must be all, indices like 0-9 or 3,5,7, or an existing file; got "
                           f"{printable(spec, 80)!r}.")
        # Checked arithmetically before anything is listed: "0-50000000" costs nothing.
        indices = parse_ranges("--classes", spec, 0, n - 1, max_count=n)
        chosen = [every[i] for i in indices]
    seen: set[str] = set()
    out = []
    for c in chosen:
        if c.key not in seen:
            seen.add(c.key)
            out.append(c)
    if not out:
        raise DCTError(f"--classes {spec!r} selects no class.")
    return out


# --- the folder's state ----------------------------------------------------------------------------------------


def _state_name(key: str) -> str:
    """The class's name in .failed/ and .locks/ file names: the key, or a shortened one with a hash when long."""
    if len(key.encode()) <= STATE_NAME_MAX:
        return key
    return f"{key[:80]}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"


def token_file(out: Path, key: str) -> Path:
    return out / f"{key}.safetensors"


def failure_file(out: Path, key: str) -> Path:
    return out / FAILED_DIR / f"{_state_name(key)}.json"


def lock_file(out: Path, key: str) -> Path:
    return out / LOCK_DIR / f"{_state_name(key)}.lock"


def _int(value: Any) -> int | None:
    """An integer from metadata or a record: an int, or a string of ASCII digits; anything else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"[+-]?[0-9]{1,18}", value.strip()):
        return int(value.strip())
    return None


def _float(value: Any) -> float | None:
    """A finite number from metadata or a record: a number, or an ASCII decimal string; anything else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str) and re.fullmatch(r"[+-]?([0-9]{1,30}(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]{1,3})?",
                                                 value.strip()):
        number = float(value)
    else:
        return None
    return number if math.isfinite(number) else None


def _line(value: Any, default: str = "") -> str:
    """A one-line text from metadata or a record (anything else: the default)."""
    return " ".join(value.split()) if isinstance(value, str) else default


def _same_source(a: str, b: str) -> bool:
    """Two classifier specs or model names name the same thing (folders in front of file names aside)."""
    def bare(s: str) -> str:
        return re.sub(r"[^\s+@:]*[/\\]", "", s.strip())

    return a.strip() == b.strip() or bare(a) == bare(b)


@dataclass(frozen=True)
class TokenState:
    """What is under a class's token file name: nothing, this class's finished token, or something else."""

    status: str  # "absent", "done" or "foreign"
    path: Path
    message: str = ""  # foreign: what it is, what differs and what to do
    metadata: dict[str, str] = field(default_factory=dict)  # done: the token's dct.* metadata


def _differences(meta: dict[str, str], c: LibraryClass, settings: LibrarySettings | None) -> list[str]:
    """How a token's metadata differs from what this class's token in this library says (none: it is ours)."""
    if not str(meta.get("format", "")).startswith(TOKEN_FORMAT_PREFIX):
        return ["no dct metadata"]
    found: list[str] = []
    index, label = meta.get("class_index"), meta.get("class_label")
    if _int(index) != c.index:
        found.append(f"class index {index!r}, not {c.index}")
    if label != c.class_name:
        found.append(f"class label {label!r}, not {c.class_name!r}")
    if meta.get("target", "on") != "on":
        found.append(f"target {meta.get('target')!r}, not 'on'")
    if settings is not None:
        for key, want, what in (("base_model", settings.base_model, "base model"),
                                ("classifier", settings.classifier_name, "classifier")):
            have = meta.get(key) or ""
            if have and want and not _same_source(have, want):
                found.append(f"{what} {have!r}, not {want!r}")
    return found


def _in_the_way(c: LibraryClass, path: Path, what: str) -> TokenState:
    message = (f"{path} is in the way: {what}. It was left as is; move it away (or use another --out) and run "
               f"again to train class {c.index} ({c.label!r}).")
    return TokenState("foreign", path, " ".join(message.split()))


def _inspect(path: Path) -> tuple[str, Any]:
    """("absent", None), ("other", what it is), ("bad", DCTError text) or ("token", ClassToken)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return ("other", "a broken link") if os.path.lexists(path) else ("absent", None)
    except OSError as exc:  # a name too long for this file system, a file where a folder should be: not there
        return "absent", exc
    if stat.S_ISDIR(st.st_mode):
        return "other", "it is a folder, not a token file"
    if not stat.S_ISREG(st.st_mode):
        return "other", "it is not a regular file"
    try:
        return "token", load_class_token(path)
    except DCTError as exc:
        return "bad", str(exc).rstrip(".")
    except Exception as exc:  # whatever a hand-made file can raise: it is not a token we wrote
        return "bad", f"it does not load as a token ({type(exc).__name__}: {exc})"


def token_state(out: Path, c: LibraryClass, settings: LibrarySettings | None = None) -> TokenState:
    """Whether the class is done: its token file loads, validates and is this class's, for this model and
    classifier (when ``settings`` says which). A class renamed because its label collides also counts as done
    when the token it had under its old name is its own."""
    path = token_file(out, c.key)
    kind, found = _inspect(path)
    if kind == "absent":
        if c.legacy is not None:
            old = token_file(out, c.legacy)
            old_kind, old_token = _inspect(old)
            if old_kind == "token" and not _differences(old_token.metadata, c, settings):
                return TokenState("done", old, metadata=old_token.metadata)
        return TokenState("absent", path)
    if kind == "other":
        return _in_the_way(c, path, found)
    if kind == "bad":
        return _in_the_way(c, path, f"not a usable token ({found})")
    differences = _differences(found.metadata, c, settings)
    if differences == ["no dct metadata"]:
        return _in_the_way(c, path, "a token without dct metadata, not trained by dct library")
    if differences:
        return _in_the_way(c, path, "a token of " + "; ".join(differences))
    return TokenState("done", path, metadata=found.metadata)


def record_failure(out: Path, c: LibraryClass, message: str, seconds: float = 0.0) -> None:
    """Write the class's failure record (OSError when it cannot be written)."""
    record = {"class": c.key, "index": c.index, "label": c.label, "message": message, "seconds": round(seconds, 2),
              "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    atomic_write(failure_file(out, c.key), json_text(record, indent=2).encode())


def clear_failure(out: Path, key: str) -> None:
    """Remove the class's failure record (OSError when something that cannot be removed is there)."""
    try:
        failure_file(out, key).unlink()
    except (FileNotFoundError, NotADirectoryError):
        pass


def _read_record(path: Path) -> dict | None:
    """A failure record, or None when it is missing or damaged (not JSON, not an object, a folder...)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return record if isinstance(record, dict) else None


def _done_entry(key: str, state: TokenState) -> dict:
    meta = state.metadata
    return {"class": key, "file": state.path.name, "index": _int(meta.get("class_index")),
            "label": _line(meta.get("class_label"), key), "prompt_label": meta.get("prompt_label"), "status": "done",
            "steps": _int(meta.get("trained_steps")), "best_step": _int(meta.get("steps")),
            "accuracy": _float(meta.get("accuracy")), "held_out_accuracy": _float(meta.get("held_out_accuracy")),
            "held_out_without": _float(meta.get("held_out_without")),
            "diversity_ratio": _float(meta.get("diversity_ratio")), "leak": _float(meta.get("leak")),
            "seconds": _float(meta.get("seconds")),
            "stopped": meta.get("stopped")}


def _failed(key: str, index: int | None, label: str, message: str, seconds: float | None = None) -> dict:
    return {"class": key, "file": None, "index": index, "label": label, "status": "failed", "message": message,
            "seconds": seconds}


def _failed_entry(out: Path, c: LibraryClass) -> dict | None:
    record = _read_record(failure_file(out, c.key))
    if record is None:
        return None
    return _failed(c.key, c.index, c.label, _line(record.get("message")), _float(record.get("seconds")))


def _pending(c: LibraryClass) -> dict:
    return {"class": c.key, "file": None, "index": c.index, "label": c.label, "status": "pending"}


def class_status(out: Path, c: LibraryClass, settings: LibrarySettings | None = None,
                 unrecorded: dict[str, dict] | None = None) -> dict:
    """The class's index entry, from the files (and the failures this run could not record)."""
    state = token_state(out, c, settings)
    if state.status == "done":
        return _done_entry(c.key, state)
    if state.status == "foreign" and c.error is None:
        entry = _failed(c.key, c.index, c.label, state.message)
    else:  # (a class that cannot be trained is reported by its own error, whatever is under its stand-in name)
        entry = (unrecorded or {}).get(c.key) or _failed_entry(out, c) or _pending(c)
    if c.error is None:
        other = locks.holder(lock_file(out, c.key))
        if other is not None:
            entry = {**entry, "running_elsewhere": other.describe()}
    return entry


def _names(folder: Path, suffix: str) -> list[Path]:
    try:
        return sorted(Path(e.path) for e in os.scandir(folder) if e.name.endswith(suffix) and not
                      e.name.startswith("."))
    except OSError:
        return []


def _extra_token(path: Path) -> dict | None:
    kind, found = _inspect(path)
    if kind != "token" or not str(found.metadata.get("format", "")).startswith(TOKEN_FORMAT_PREFIX):
        return None  # not a token dct trained: not part of the library
    return _done_entry(path.stem, TokenState("done", path, metadata=found.metadata))


def _extra_failure(path: Path) -> dict | None:
    record = _read_record(path)
    if record is None:
        return None
    key = record.get("class")
    key = key if isinstance(key, str) and key.strip() else path.stem
    return _failed(key, _int(record.get("index")), _line(record.get("label"), key), _line(record.get("message")),
                   _float(record.get("seconds")))


def build_index(out: str | os.PathLike, selection: Sequence[LibraryClass] = (),
                settings: LibrarySettings | None = None, unrecorded: dict[str, dict] | None = None) -> dict:
    """The index, from the files alone: the selection in order (done, failed or pending; a class another run is
    training says so), then any other finished token or failure record in the folder."""
    out = Path(out)
    entries = [class_status(out, c, settings, unrecorded) for c in selection]
    known = {c.key for c in selection}
    claimed = {e["file"] for e in entries if e.get("file")}
    state_names = {f"{_state_name(c.key)}.json" for c in selection}
    extras: dict[str, dict] = {}
    for path in _names(out, ".safetensors"):
        if path.stem not in known and path.name not in claimed and (entry := _extra_token(path)) is not None:
            extras[path.stem] = entry
    for path in _names(out / FAILED_DIR, ".json"):
        if path.name in state_names:
            continue
        entry = _extra_failure(path)
        if entry is not None and entry["class"] not in known and entry["class"] not in extras:
            extras[entry["class"]] = entry
    entries += [extras[k] for k in sorted(extras)]
    counts = {s: sum(e["status"] == s for e in entries) for s in ("done", "failed", "pending")}
    elsewhere = sum(bool(e.get("running_elsewhere")) for e in entries)
    return {"format": INDEX_FORMAT, "counts": counts, "running_elsewhere": elsewhere, "classes": entries}


def write_index(out: str | os.PathLike, selection: Sequence[LibraryClass] = (),
                settings: LibrarySettings | None = None, unrecorded: dict[str, dict] | None = None) -> dict:
    index = build_index(out, selection, settings, unrecorded)
    path = Path(out) / INDEX_NAME
    try:
        atomic_write(path, (json_text(index, indent=2) + "\n").encode())
    except OSError as exc:
        raise DCTError(f"cannot write the library index {path}: {exc.strerror or exc}; make the folder writable "
                       "(and index.json a plain file) and run again.") from None
    return index


# --- training --------------------------------------------------------------------------------------------------


@dataclass
class _Bookkeeping:
    """This rank's part of a run: failures it could not record (they still reach the index), and warnings about
    the folder's bookkeeping, each shown once."""

    out: Path
    settings: LibrarySettings | None = None
    unrecorded: dict[str, dict] = field(default_factory=dict)
    warned: set[str] = field(default_factory=set)

    def warn(self, topic: str, message: str) -> None:
        if topic not in self.warned:
            self.warned.add(topic)
            print(f"warning: {message}", file=sys.stderr, flush=True)

    def fail(self, c: LibraryClass, message: str, seconds: float = 0.0) -> dict:
        message = " ".join(message.split())
        try:
            record_failure(self.out, c, message, seconds)
            self.unrecorded.pop(c.key, None)
        except OSError as exc:
            folder = self.out / FAILED_DIR
            reason = "it is not a folder" if folder.exists() and not folder.is_dir() else exc.strerror or exc
            self.warn("record", f"cannot write failure records in {folder} ({reason}); failed classes are listed in "
                                "the index only.")
            self.unrecorded[c.key] = _failed(c.key, c.index, c.label, message, round(seconds, 2))
        return class_status(self.out, c, self.settings, self.unrecorded)

    def succeed(self, c: LibraryClass) -> dict:
        self.unrecorded.pop(c.key, None)
        try:
            clear_failure(self.out, c.key)
        except OSError as exc:
            self.warn("clear", f"cannot remove the failure record {failure_file(self.out, c.key)} "
                               f"({exc.strerror or exc}); the index follows the token files regardless.")
        return class_status(self.out, c, self.settings, self.unrecorded)

    def lock(self, c: LibraryClass) -> locks.Lock | locks.Holder | None:
        """The class's lock, who holds it, or None when locks cannot be used here (warned once)."""
        try:
            return locks.acquire(lock_file(self.out, c.key))
        except OSError as exc:
            folder = self.out / LOCK_DIR
            reason = "it is not a folder" if folder.exists() and not folder.is_dir() else exc.strerror or exc
            self.warn("lock", f"cannot take class locks in {folder} ({reason}); training without them: two runs "
                              "on this folder may train the same class.")
            return None


def _held_out(backend: Backend, settings: LibrarySettings, label: str, prompt_label: str, vectors,
              config: TrainConfig) -> tuple[float, float, float | None, float | None]:
    """Top-1 of the held-out classifier on a few fresh seeds, with and without the token, the diversity ratio
    under its features (method/diversity.py; None where it has none), and the share of images the token sends to
    other classes (evaluation.class_leak; None for a multi-label classifier)."""
    from ..method.evaluation import WITH, WITHOUT, class_leak, compare_with_token, diversity_report

    assert settings.eval_classifier is not None
    settings.eval_classifier.to(backend.device)
    seeds = list(range(EVAL_FIRST_SEED, EVAL_FIRST_SEED + settings.eval_images))
    results, images = compare_with_token(backend, {"held-out": settings.eval_classifier}, label, prompt_label,
                                         config.templates, vectors, seeds, config.sampling, chunk=8)
    try:
        ratio = diversity_report(settings.eval_classifier, images)["ratio"]
    except DCTError:  # a classifier without features
        ratio = None
    leak = class_leak(settings.eval_classifier, images, settings.eval_classifier.class_index(label)).get("points")
    return results["held-out"][WITH]["top1"], results["held-out"][WITHOUT]["top1"], ratio, leak


def train_one(backend: Backend, classifier: Classifier, c: LibraryClass, out: Path, settings: LibrarySettings,
              on_step: Callable[[StepRecord, torch.Tensor], None] | None = None,
              books: _Bookkeeping | None = None) -> dict:
    """Train, judge and save one class through the run path (its failure record on any error); its index entry.
    The caller has checked that nothing else is under the class's file name."""
    books = books or _Bookkeeping(out, settings)
    started = time.perf_counter()
    try:
        if c.error is not None or c.index is None:
            raise DCTError(c.error or f"no class {c.label!r}.")
        word = (settings.prompt_words or {}).get(c.label, c.label)
        config = replace(settings.config, init_word=word) if settings.init_from_word else settings.config

        def judged(result: TrainResult) -> dict[str, str]:
            meta = {"seconds": f"{time.perf_counter() - started:.2f}"}
            if settings.eval_classifier is not None:
                with_token, without, diversity, leak = _held_out(backend, settings, c.label, word,
                                                           result.token.for_encoders(backend.encoders), config)
                meta.update(held_out_accuracy=f"{with_token:.4f}", held_out_without=f"{without:.4f}",
                            held_out_classifier=settings.eval_name)
                if diversity is not None:
                    meta["diversity_ratio"] = f"{diversity:.4f}"
                if leak is not None:
                    meta["leak"] = f"{leak:.4f}"
            return meta

        job = TrainJob(backend, classifier, c.index, config, name=c.key, prompt_label=word,
                       out=token_file(out, c.key), overwrite=True, recipe=settings.recipe,
                       base_model=settings.base_model, classifier_name=settings.classifier_name,
                       keep_diverged=False)
        outcome = run_training(job, hooks=RunHooks(on_step=on_step, extra_metadata=judged))
        if outcome.diverged:
            raise DCTError(outcome.diverged_message())
        error = outcome.error()
        if error is not None:
            raise DCTError(error)
    except Exception as exc:  # one class's failure never stops the others
        message = str(exc) if isinstance(exc, DCTError) else f"{type(exc).__name__}: {exc}"
        return books.fail(c, message, time.perf_counter() - started)
    return books.succeed(c)


class _Progress:
    """One tqdm line per rank ("rank r: class i/n <label> step s acc a"); plain lines when not on a terminal."""

    def __init__(self, ranks: Ranks, total: int, max_steps: int) -> None:
        from tqdm import tqdm

        self.ranks, self.total = ranks, total
        self.tty = sys.stderr.isatty()
        self.bar = tqdm(total=max_steps, position=ranks.rank, leave=True, file=sys.stderr, disable=not self.tty,
                        dynamic_ncols=True, bar_format="{desc} [{elapsed}]")
        self.prefix = ""

    def start(self, i: int, c: LibraryClass) -> None:
        self.prefix = f"rank {self.ranks.rank}: class {i}/{self.total} {c.label}"
        self.bar.reset()
        self.bar.set_description_str(self.prefix)

    def on_step(self, record: StepRecord, images: torch.Tensor) -> None:
        self.bar.update(1)
        self.bar.set_description_str(f"{self.prefix} step {record.step + 1} acc {record.accuracy:.2f}")

    def finish(self, entry: dict) -> None:
        status = entry["status"]
        if entry.get("running_elsewhere"):
            detail = f"running elsewhere ({entry['running_elsewhere']})"
        elif status == "failed":
            detail = f"failed: {entry.get('message')}"
        else:
            by = " by another run" if entry.get("finished_elsewhere") else ""
            detail = f"{status}{by} (steps {entry.get('steps')}, acc {entry.get('accuracy')})"
        if self.tty:
            self.bar.set_description_str(f"{self.prefix}: {detail[:60]}")
        else:
            print(f"{self.prefix}: {detail}", file=sys.stderr, flush=True)

    def close(self) -> None:
        self.bar.close()


def _attempt(backend: Callable[[], Backend], classifier: Classifier, c: LibraryClass, out: Path,
             settings: LibrarySettings, books: _Bookkeeping,
             on_step: Callable[[StepRecord, torch.Tensor], None]) -> dict:
    """One class of this rank's share: failed when it cannot be trained or something else holds its file name,
    skipped when another live run holds its lock, else trained under the lock."""
    if c.error is not None or c.index is None:
        return books.fail(c, c.error or f"no class {c.label!r}.")
    lock = books.lock(c)
    if isinstance(lock, locks.Holder):
        entry = class_status(out, c, settings, books.unrecorded)
        return {**entry, "running_elsewhere": lock.describe()} if entry["status"] != "done" else entry
    held: locks.Lock | None = lock
    try:
        state = token_state(out, c, settings)  # again, under the lock: another run may have finished it
        if state.status == "done":
            return {**books.succeed(c), "finished_elsewhere": True}
        if state.status == "foreign":
            return books.fail(c, state.message)

        def stepped(record: StepRecord, images: torch.Tensor) -> None:
            on_step(record, images)
            if held is not None:
                held.touch()

        return train_one(backend(), classifier, c, out, settings, on_step=stepped, books=books)
    finally:
        if held is not None:
            held.release()


def train_share(load_backend: Callable[[], Backend], classifier: Classifier, selection: Sequence[LibraryClass],
                out: Path, settings: LibrarySettings, ranks: Ranks = Ranks(),
                books: _Bookkeeping | None = None) -> list[dict]:
    """This rank's classes, skipping finished ones; the entries of those it trained, failed, found running
    elsewhere or found finished by another run meanwhile (``finished_elsewhere``). The backend is loaded when the
    first class is trained."""
    books = books or _Bookkeeping(out, settings)
    todo = [c for c in ranks.share(list(selection)) if token_state(out, c, settings).status != "done"]
    if not todo:
        return []
    loaded: list[Backend] = []

    def backend() -> Backend:
        if not loaded:
            loaded.append(load_backend())
        return loaded[0]

    progress = _Progress(ranks, len(todo), settings.config.max_steps)
    entries = []
    try:
        for i, c in enumerate(todo, 1):
            progress.start(i, c)
            entry = _attempt(backend, classifier, c, out, settings, books, progress.on_step)
            progress.finish(entry)
            entries.append(entry)
    finally:
        progress.close()
    return entries


def format_summary(index: dict) -> str:
    def num(v, fmt="{:.2f}"):
        return "-" if not isinstance(v, (int, float)) or isinstance(v, bool) else fmt.format(v)

    lines = [f"{'class':<28}{'status':<9}{'steps':>6}{'accuracy':>10}{'held-out':>10}{'diversity':>10}"
             f"{'leak':>7}{'seconds':>9}"]
    for e in index["classes"]:
        elsewhere = e.get("running_elsewhere")
        status = "running" if elsewhere and e["status"] != "done" else e["status"]
        lines.append(f"{e['class'][:27]:<28}{status:<9}{num(e.get('steps'), '{}'):>6}{num(e.get('accuracy')):>10}"
                     f"{num(e.get('held_out_accuracy')):>10}{num(e.get('diversity_ratio')):>10}"
                     f"{num(e.get('leak')):>7}{num(e.get('seconds'), '{:.1f}'):>9}")
        if elsewhere and e["status"] != "done":
            lines.append(f"    running elsewhere: {elsewhere}"
                         + (f"; last attempt failed: {e.get('message', '')}" if e["status"] == "failed" else ""))
        elif e["status"] == "failed":
            lines.append(f"    {e.get('message', '')}")
    c = index["counts"]
    elsewhere_count = index.get("running_elsewhere", 0)
    lines.append(f"{c['done']} done, {c['failed']} failed, {c['pending']} pending"
                 + (f" ({elsewhere_count} running elsewhere)" if elsewhere_count else ""))
    return "\n".join(lines)


# --- the job -----------------------------------------------------------------------------------------------------


def _prepare(out: Path) -> None:
    """The library folder, created if needed; a one-line DCTError when it cannot be one."""
    index = out / INDEX_NAME
    try:
        if out.exists() and not out.is_dir():
            raise DCTError(f"--out {out} is a file; give a folder for the library.")
        out.mkdir(parents=True, exist_ok=True)
        folder_index = index.is_dir()
    except OSError as exc:
        raise DCTError(f"cannot use {out} as the library folder: {exc.strerror or exc}; give a folder that can be "
                       "created and written.") from None
    if folder_index:
        raise DCTError(f"{index} is a folder, not the library's index file; move it away and run again.")


def _gather(unrecorded: dict[str, dict]) -> dict[str, dict]:
    """Every rank's unrecorded failures (just this one's without a process group)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return unrecorded
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, unrecorded)
    merged: dict[str, dict] = {}
    for part in parts:
        merged.update(part or {})
    return merged


def build_library(out: Path, classifier: Classifier, selection: Sequence[LibraryClass], settings: LibrarySettings,
                  load_backend: Callable[[], Backend], ranks: Ranks = Ranks()) -> dict | None:
    """This rank's share of the library (the backend is loaded only when a class is left to train); rank 0
    rebuilds the index before and after. The index on rank 0, None on the others."""
    _prepare(out)
    if ranks.is_main:
        remove_stale_temps(out)
        remove_stale_temps(out / FAILED_DIR)
        write_index(out, selection, settings)  # the state as found: what a killed run left
    books = _Bookkeeping(out, settings)
    train_share(load_backend, classifier, selection, out, settings, ranks, books)
    barrier()
    unrecorded = _gather(books.unrecorded)
    if not ranks.is_main:
        return None
    try:
        os.rmdir(out / LOCK_DIR)  # only when empty: no run holds a class
    except OSError:
        pass
    return write_index(out, selection, settings, unrecorded)
