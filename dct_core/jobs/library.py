"""`dct library`: one class token per class of a classifier, into one folder, resumable and split over ranks.

The folder is the state: ``<class>.safetensors`` per finished class (written atomically by the one run layer,
``run.run_training``, whose metadata says steps, accuracy, seconds, ...), ``.failed/<class>.json`` per class whose
last attempt failed (written atomically by the rank that owned it, removed when the class succeeds), and
``index.json``, which is only derived from those files: rank 0 rebuilds it at the start and after the final
barrier, so a missing, stale or damaged index costs nothing. A class whose token file loads and validates is
skipped, so a run killed at any moment (even kill -9) and started again finishes the rest; failed classes are
tried again.

Under ``torchrun --nproc_per_node=N`` (or ``python -m torch.distributed.run``) each rank trains every N-th class
(``distributed.Ranks.share``) on its own device; without a launcher it is one process.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..classifiers import Classifier
from ..config import DEFAULT_PRESET, TrainConfig
from ..errors import DCTError
from ..formats.files import atomic_write, remove_stale_temps
from ..formats.safe_load import read_safetensors_metadata
from ..formats.tokens import TOKEN_FILE, load_class_token, sanitize_name
from ..method.backend import Backend
from ..method.training import StepRecord, TrainResult
from .distributed import Ranks, barrier
from .run import RunHooks, TrainJob, run_training

INDEX_NAME = "index.json"
FAILED_DIR = ".failed"
INDEX_FORMAT = "dct-library/1"
EVAL_FIRST_SEED = 100_000  # held-out evaluation seeds: far from the training seeds


@dataclass(frozen=True)
class LibraryClass:
    """One entry of the selection: a resolved class, or what was asked for and why it cannot be trained."""

    key: str  # the file stem: the sanitized label (or what was asked for, when it does not resolve)
    index: int | None
    label: str
    error: str | None = None


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


# --- the selection -------------------------------------------------------------------------------------------


def _entry(classifier: Classifier, index: int) -> LibraryClass:
    label = classifier.labels[index]  # the whole label: "kite, bird of prey", not its first synonym "kite"
    return LibraryClass(sanitize_name(label), index, label)


def _asked(classifier: Classifier, text: str) -> LibraryClass:
    try:
        return _entry(classifier, classifier.class_index(text))
    except DCTError as exc:
        try:
            key = sanitize_name(text)
        except DCTError:
            key = "unnamed"
        return LibraryClass(key, None, text, str(exc))


def select_classes(spec: str, classifier: Classifier) -> list[LibraryClass]:
    """``all``, indices (``0-9``, ``3,5,7``) or a file with one label or index per line; duplicates once.
    A line that names no class is kept, with its error, so that it is recorded as failed."""
    spec = spec.strip()
    n = classifier.num_classes
    if spec == "all":
        chosen = [_entry(classifier, i) for i in range(n)]
    elif Path(spec).is_file():
        lines = [line.strip() for line in Path(spec).read_text(encoding="utf-8").splitlines()]
        chosen = [_asked(classifier, line) for line in lines if line and not line.startswith("#")]
    else:
        indices: list[int] = []
        try:
            for part in spec.split(","):
                lo, _, hi = part.strip().partition("-")
                indices += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
        except ValueError:
            raise DCTError(f"--classes must be all, indices like 0-9 or 3,5,7, or an existing file; got {spec!r}.") \
                from None
        bad = [i for i in indices if not 0 <= i < n]
        if bad:
            raise DCTError(f"class index {bad[0]} is out of range: the classifier has {n} classes (0-{n - 1}).")
        chosen = [_entry(classifier, i) for i in indices]
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


def token_file(out: Path, key: str) -> Path:
    return out / f"{key}.safetensors"


def failure_file(out: Path, key: str) -> Path:
    return out / FAILED_DIR / f"{key}.json"


def finished(out: Path, key: str) -> bool:
    """The class's token file exists, loads and validates."""
    path = token_file(out, key)
    if not path.is_file():
        return False
    try:
        load_class_token(path)
    except Exception:
        return False
    return True


def record_failure(out: Path, c: LibraryClass, message: str, seconds: float = 0.0) -> None:
    record = {"class": c.key, "index": c.index, "label": c.label, "message": message, "seconds": round(seconds, 2),
              "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    atomic_write(failure_file(out, c.key), json.dumps(record, indent=2).encode())


def clear_failure(out: Path, key: str) -> None:
    try:
        failure_file(out, key).unlink()
    except FileNotFoundError:
        pass


def _float(value: str | None) -> float | None:
    try:
        return None if value is None else float(value)
    except ValueError:
        return None


def _int(value: str | None) -> int | None:
    try:
        return None if value is None else int(value)
    except ValueError:
        return None


def _done_entry(out: Path, key: str) -> dict:
    meta = {k[4:]: v for k, v in read_safetensors_metadata(token_file(out, key), TOKEN_FILE).items()
            if k.startswith("dct.")}
    return {"class": key, "file": token_file(out, key).name, "index": _int(meta.get("class_index")),
            "label": meta.get("class_label", key), "prompt_label": meta.get("prompt_label"), "status": "done",
            "steps": _int(meta.get("trained_steps")), "best_step": _int(meta.get("steps")),
            "accuracy": _float(meta.get("accuracy")), "held_out_accuracy": _float(meta.get("held_out_accuracy")),
            "held_out_without": _float(meta.get("held_out_without")), "seconds": _float(meta.get("seconds")),
            "stopped": meta.get("stopped")}


def _failed_entry(out: Path, key: str) -> dict | None:
    try:
        record = json.loads(failure_file(out, key).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    return {"class": key, "file": None, "index": record.get("index"), "label": record.get("label", key),
            "status": "failed", "message": record.get("message", ""), "seconds": record.get("seconds")}


def class_status(out: Path, c: LibraryClass) -> dict:
    if finished(out, c.key):
        return _done_entry(out, c.key)
    return _failed_entry(out, c.key) or {"class": c.key, "file": None, "index": c.index, "label": c.label,
                                         "status": "pending"}


def build_index(out: str | os.PathLike, selection: Sequence[LibraryClass] = ()) -> dict:
    """The index, from the files alone: the selection in order (done, failed or pending), then any other finished
    token or failure record in the folder."""
    out = Path(out)
    entries = [class_status(out, c) for c in selection]
    known = {c.key for c in selection}
    extra = sorted({p.stem for p in out.glob("*.safetensors")} | {p.stem for p in (out / FAILED_DIR).glob("*.json")})
    for key in extra:
        if key in known:
            continue
        if finished(out, key):
            entries.append(_done_entry(out, key))
        elif (failed := _failed_entry(out, key)) is not None:
            entries.append(failed)
    counts = {s: sum(e["status"] == s for e in entries) for s in ("done", "failed", "pending")}
    return {"format": INDEX_FORMAT, "counts": counts, "classes": entries}


def write_index(out: str | os.PathLike, selection: Sequence[LibraryClass] = ()) -> dict:
    index = build_index(out, selection)
    atomic_write(Path(out) / INDEX_NAME, (json.dumps(index, indent=2) + "\n").encode())
    return index


# --- training --------------------------------------------------------------------------------------------------


def _held_out(backend: Backend, settings: LibrarySettings, label: str, prompt_label: str, vectors,
              config: TrainConfig) -> tuple[float, float]:
    """Top-1 of the held-out classifier on a few fresh seeds, with and without the token."""
    from ..method.evaluation import WITH, WITHOUT, compare_with_token

    assert settings.eval_classifier is not None
    settings.eval_classifier.to(backend.device)
    seeds = list(range(EVAL_FIRST_SEED, EVAL_FIRST_SEED + settings.eval_images))
    results, _ = compare_with_token(backend, {"held-out": settings.eval_classifier}, label, prompt_label,
                                    config.templates, vectors, seeds, config.sampling, chunk=8)
    return results["held-out"][WITH]["top1"], results["held-out"][WITHOUT]["top1"]


def train_one(backend: Backend, classifier: Classifier, c: LibraryClass, out: Path, settings: LibrarySettings,
              on_step: Callable[[StepRecord, torch.Tensor], None] | None = None) -> dict:
    """Train, judge and save one class through the run path (its failure record on any error); its index entry."""
    started = time.perf_counter()
    try:
        if c.error is not None or c.index is None:
            raise DCTError(c.error or f"no class {c.label!r}.")
        word = (settings.prompt_words or {}).get(c.label, c.label)
        config = replace(settings.config, init_word=word) if settings.init_from_word else settings.config

        def judged(result: TrainResult) -> dict[str, str]:
            meta = {"seconds": f"{time.perf_counter() - started:.2f}"}
            if settings.eval_classifier is not None:
                with_token, without = _held_out(backend, settings, c.label, word,
                                                result.token.for_encoders(backend.encoders), config)
                meta.update(held_out_accuracy=f"{with_token:.4f}", held_out_without=f"{without:.4f}",
                            held_out_classifier=settings.eval_name)
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
        record_failure(out, c, message, time.perf_counter() - started)
        return class_status(out, c)
    clear_failure(out, c.key)
    return class_status(out, c)


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
        self.bar.set_description_str(f"{self.prefix} step {record.step} acc {record.accuracy:.2f}")

    def finish(self, entry: dict) -> None:
        status = entry["status"]
        detail = f"{status}" + (f": {entry.get('message')}" if status == "failed" else
                                f" (steps {entry.get('steps')}, acc {entry.get('accuracy')})")
        if self.tty:
            self.bar.set_description_str(f"{self.prefix}: {detail[:60]}")
        else:
            print(f"{self.prefix}: {detail}", file=sys.stderr, flush=True)

    def close(self) -> None:
        self.bar.close()


def train_share(backend: Backend, classifier: Classifier, selection: Sequence[LibraryClass], out: Path,
                settings: LibrarySettings, ranks: Ranks = Ranks()) -> list[dict]:
    """This rank's classes, skipping finished ones; the entries of those it trained (or failed)."""
    mine = ranks.share(list(selection))
    todo = [c for c in mine if not finished(out, c.key)]
    progress = _Progress(ranks, len(todo), settings.config.max_steps)
    entries = []
    try:
        for i, c in enumerate(todo, 1):
            progress.start(i, c)
            entry = train_one(backend, classifier, c, out, settings, on_step=progress.on_step)
            progress.finish(entry)
            entries.append(entry)
    finally:
        progress.close()
    return entries


def format_summary(index: dict) -> str:
    def num(v, fmt="{:.2f}"):
        return "-" if v is None else fmt.format(v)

    lines = [f"{'class':<28}{'status':<9}{'steps':>6}{'accuracy':>10}{'held-out':>10}{'seconds':>9}"]
    for e in index["classes"]:
        lines.append(f"{e['class'][:27]:<28}{e['status']:<9}{num(e.get('steps'), '{}'):>6}{num(e.get('accuracy')):>10}"
                     f"{num(e.get('held_out_accuracy')):>10}{num(e.get('seconds'), '{:.1f}'):>9}")
        if e["status"] == "failed":
            lines.append(f"    {e.get('message', '')}")
    c = index["counts"]
    lines.append(f"{c['done']} done, {c['failed']} failed, {c['pending']} pending")
    return "\n".join(lines)


# --- the job -----------------------------------------------------------------------------------------------------


def build_library(out: Path, classifier: Classifier, selection: Sequence[LibraryClass], settings: LibrarySettings,
                  load_backend: Callable[[], Backend], ranks: Ranks = Ranks()) -> dict | None:
    """This rank's share of the library (the backend is loaded only when a class is left to train); rank 0
    rebuilds the index before and after. The index on rank 0, None on the others."""
    if out.exists() and not out.is_dir():
        raise DCTError(f"--out {out} is a file; give a folder for the library.")
    out.mkdir(parents=True, exist_ok=True)
    if ranks.is_main:
        remove_stale_temps(out)
        remove_stale_temps(out / FAILED_DIR)
        write_index(out, selection)  # the state as found: what a killed run left
    if any(not finished(out, c.key) for c in ranks.share(list(selection))):
        train_share(load_backend(), classifier, selection, out, settings, ranks)
    barrier()
    return write_index(out, selection) if ranks.is_main else None
