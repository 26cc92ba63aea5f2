"""`dct dataset`: a synthetic training set from a token library (the paper's Sec. 5 data augmentation).

For every token file in a library folder (``dct library``'s ``<class>.safetensors``) it writes
``OUT/<class>/<seed>.png`` (an ImageFolder tree: one folder per class, named like the token file) and
``OUT/manifest.jsonl``, one line per image: class (and its index), prompt, seed, token file, generation settings.

- The prompt is the token's own training templates (image i uses template i mod their number, as training did)
  with its prompt label, or ``--prompt-template``; ``--without-tokens`` drops the token from the same prompts
  (the plain-prompt baseline, same seeds).
- Resumable: the work is cut into (class, chunk of seeds) units; a complete PNG of ours is never redrawn, PNGs are
  written atomically, and each finished unit leaves a small record (``OUT/<class>/.records-<first>-<n>.json``,
  hidden: ImageFolder readers skip it). The manifest is rebuilt from the records at the end, by rank 0 only,
  atomically, so a kill never leaves it half-written or duplicated.
- Nothing lost: the folder is marked as ours (``OUT/.dct-dataset``) before the first image, a folder holding other
  files is refused unless asked, every PNG carries its manifest record, and a file we did not write is never
  overwritten nor adopted as an image (see ``dataset_folder``). Damaged records are rewritten; every bad input
  (library, token metadata, state files) is a one-line error naming the file.
- Parallel like ``dct library``: under ``torchrun`` each rank takes every world_size-th unit, and rank 0
  writes the manifest after a barrier.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import PAPER_TEMPLATES, SamplingConfig
from ..errors import DCTError
from ..formats.files import atomic_write
from ..formats.tokens import TOKEN_SUFFIXES, ClassToken, load_class_token, sanitize_name
from ..method.backend import Backend
from ..method.prompts import check_templates, fill_label, strip_token
from ..settings import check
from .dataset_folder import (
    MANIFEST,
    RECORD_PREFIX,
    Found,
    check_class_folder,
    check_manifest_target,
    check_out_folder,
    find_image,
    foreign_image_error,
    png_text,
    read_records,
    write_marker,
)
from .distributed import Ranks, barrier, ranks_from_env

FIRST_SEED = 300_000  # far from the seeds tokens train on (0, 1, ...) and from the world's evaluation seeds
CHUNK = 16  # seeds per unit of work (and per record file)


@dataclass(frozen=True)
class ClassPlan:
    """One token file and what its images are drawn with."""

    token_file: Path
    token: ClassToken
    label: str  # the classifier's class name (token metadata class_label, else the file stem)
    folder: str  # OUT/<folder>/: the token file's stem
    prompt_label: str
    templates: tuple[str, ...]
    class_index: int | None = None  # the classifier's index of the class (token metadata), when known

    def prompt(self, i: int, without_tokens: bool) -> str:
        text = fill_label(self.templates[i % len(self.templates)], self.prompt_label)
        return strip_token(text) if without_tokens else text


@dataclass
class DatasetSummary:
    out_dir: Path
    classes: int
    images: int  # in the whole dataset
    written: int  # PNGs this rank wrote
    skipped: int  # PNGs this rank found complete
    manifest: Path | None  # written (or found up to date) by rank 0


def library_tokens(library_dir: str | Path) -> list[Path]:
    """The token files of a library folder, sorted by name (index.json, temps and hidden files are skipped)."""
    folder = Path(library_dir)
    if folder.exists() and not folder.is_dir():
        raise DCTError(f"{folder} is a file; give the library folder (dct library's --out) for --library.")
    if not folder.is_dir():
        raise DCTError(f"the library folder {folder} does not exist; train one with 'dct library'.")
    try:
        files = sorted(p for p in folder.iterdir()
                       if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in TOKEN_SUFFIXES)
    except OSError as exc:
        raise DCTError(f"cannot read the library folder {folder} ({exc.strerror or exc}).") from exc
    if not files:
        raise DCTError(f"{folder} holds no token files (.safetensors, .pt, .bin); train some with 'dct library'.")
    return files


def plan_classes(library_dir: str | Path, prompt_template: str | None = None,
                 without_tokens: bool = False) -> list[ClassPlan]:
    plans = []
    for path in library_tokens(library_dir):
        token = load_class_token(path)
        meta = token.metadata
        label = _meta_text(meta, "class_label", path) or path.stem
        if prompt_template is not None:
            templates: tuple[str, ...] = (prompt_template,)
            if not without_tokens:
                check_templates(templates)
        else:
            templates = _meta_templates(meta, path, without_tokens)
        plans.append(ClassPlan(path, token, label, sanitize_name(path.stem),
                               _meta_text(meta, "prompt_label", path) or label, templates, _class_index(meta, path)))
    folders = [p.folder for p in plans]
    if len(set(folders)) != len(folders):
        raise DCTError(f"two token files in {library_dir} map to the same class folder; rename one.")
    return plans


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _meta_text(meta: dict, key: str, path: Path) -> str | None:
    """A text of the token's metadata (None when absent or empty)."""
    value = meta.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise DCTError(f"{path} has {key} {_shown(value)} in its metadata, not a text; retrain it with 'dct library' "
                       "or take it out of the library folder.")
    return value


def _meta_templates(meta: dict, path: Path, without_tokens: bool) -> tuple[str, ...]:
    """The token's training templates (a JSON list of texts; the paper's when absent)."""
    raw = _meta_text(meta, "templates", path)
    if raw is None:
        return PAPER_TEMPLATES
    try:
        value = json.loads(raw)
    except ValueError:
        value = None
    if not (isinstance(value, list) and value and all(isinstance(t, str) for t in value)):
        raise DCTError(f"{path} has templates {_shown(raw)} in its metadata, not a list of prompt texts; pass "
                       "--prompt-template.")
    if not without_tokens:
        try:
            check_templates(value)
        except DCTError as exc:
            raise DCTError(f"{path}: {str(exc).rstrip('.')}; or pass --prompt-template.") from None
    return tuple(value)


def _class_index(meta: dict, path: Path) -> int | None:
    """The classifier's index of the class: digits 0-9 only (what dct writes); None when absent."""
    value = meta.get("class_index")
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and re.fullmatch(r"[0-9]+", value.strip()):
        return int(value)
    raise DCTError(f"{path} has class_index {_shown(value)} in its metadata, not a class number (0, 1, 2, ...); "
                   "retrain it with 'dct library' or take it out of the library folder.")


def _units(plans: Sequence[ClassPlan], images_per_class: int) -> list[tuple[int, int, int]]:
    """(class position, first image index, image count) per unit, in a fixed order."""
    return [(c, start, min(CHUNK, images_per_class - start))
            for c in range(len(plans)) for start in range(0, images_per_class, CHUNK)]


def _record_path(out: Path, plan: ClassPlan, seed0: int, start: int, count: int) -> Path:
    return out / plan.folder / f"{RECORD_PREFIX}{seed0 + start}-{count}.json"


def _png_bytes(image: torch.Tensor, record: dict) -> bytes:
    import io

    from PIL.PngImagePlugin import PngInfo

    from ..formats.images import to_pil

    info = PngInfo()
    for key, value in png_text(record).items():
        info.add_text(key, value)  # iTXt when the text is not Latin-1
    buffer = io.BytesIO()
    to_pil(image).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def _sampling_record(sampling: SamplingConfig, sampler: str) -> dict:
    """The manifest's record of how an image was drawn (its keys are the manifest format's)."""
    return {"resolution": sampling.resolution, "steps": sampling.sampling_steps, "guidance": sampling.guidance,
            "scheduler": sampler, "negative_prompt": sampling.negative_prompt}


def write_dataset(
    backend: Backend,
    library_dir: str | Path,
    out_dir: str | Path,
    images_per_class: int,
    prompt_template: str | None = None,
    without_tokens: bool = False,
    seed0: int = FIRST_SEED,
    ranks: Ranks | None = None,
    *,
    sampling: SamplingConfig | None = None,
    model: str = "",
    batch: int = 8,
    allow_foreign: bool = False,
    log=None,
) -> DatasetSummary:
    """Write this rank's share of the dataset, then (rank 0, after a barrier) the manifest. See the module doc.

    ``allow_foreign``: write into a folder that holds files we did not write (never over them).
    """
    check("images_per_class", images_per_class)
    ranks = ranks or ranks_from_env()
    sampling = sampling or SamplingConfig()
    sampling.validate()
    out = Path(out_dir)
    plans = plan_classes(library_dir, prompt_template, without_tokens)
    units = _units(plans, images_per_class)
    settings = _sampling_record(sampling, getattr(backend, "sampler", ""))
    size = (sampling.resolution, sampling.resolution)
    written = skipped = 0
    failure: BaseException | None = None
    try:
        # Everything this rank can check is checked before it writes anything (every rank finds the same errors).
        check_out_folder(out, allow_foreign)
        check_manifest_target(out / MANIFEST)
        work = []
        for c, start, count in ranks.share(units):
            plan = plans[c]
            seeds = [seed0 + start + i for i in range(count)]
            prompts = [plan.prompt(start + i, without_tokens) for i in range(count)]
            records = [{
                "class": plan.label, "class_index": plan.class_index, "folder": plan.folder,
                "file": f"{plan.folder}/{seed}.png", "seed": seed, "prompt": prompt,
                "with_token": not without_tokens, "token_file": plan.token_file.name, "model": model,
                "sampling": settings,
            } for seed, prompt in zip(seeds, prompts)]
            paths = [out / plan.folder / f"{seed}.png" for seed in seeds]
            record_path = _record_path(out, plan, seed0, start, count)
            todo = _unit_todo(out / plan.folder, record_path, records, paths, size)
            skipped += count - len(todo)
            work.append((plan, seeds, prompts, records, paths, record_path, todo))
        write_marker(out)
        for plan, seeds, prompts, records, paths, record_path, todo in work:
            if todo:
                vectors = None
                if not without_tokens:
                    vectors = {k: v.to(backend.device)
                               for k, v in plan.token.for_encoders(backend.encoders).items()}
                images = generate_images_for(backend, [prompts[i] for i in todo], [seeds[i] for i in todo],
                                             sampling, vectors, batch)
                for i, image in zip(todo, images):
                    atomic_write(paths[i], _png_bytes(image, records[i]))
                    written += 1
                if log is not None:
                    log(f"{plan.folder}: wrote {len(todo)} image(s), seeds {seeds[0]}-{seeds[-1]}")
            _write_if_changed(record_path, json.dumps(records).encode())
    except BaseException as exc:  # still meet the other ranks at the barrier, so none waits forever
        failure = exc
    barrier()
    if failure is not None:
        raise failure
    manifest = None
    if ranks.is_main:
        manifest = _write_manifest(out, plans, units, seed0)
    return DatasetSummary(out, len(plans), len(plans) * images_per_class, written, skipped, manifest)


def _unit_todo(folder: Path, record_path: Path, records: list[dict], paths: list[Path],
               size: tuple[int, int]) -> list[int]:
    """The images of a unit to draw; a file in an image's place that is not ours stops the run (reads only)."""
    check_class_folder(folder)
    old = read_records(record_path)
    if old is not None:
        _check_same_settings(record_path, old, records)
    listed = old is not None  # the unit was finished with these settings: its files are ours
    todo = []
    for i, (record, path) in enumerate(zip(records, paths)):
        found = find_image(path, record, size)
        if found is Found.OURS or (found is Found.PLAIN and listed):  # PLAIN: drawn before images had our chunk
            continue
        if found in (Found.NOTHING, Found.OURS_OTHER) or listed:
            todo.append(i)
            continue
        raise foreign_image_error(path)
    return todo


def generate_images_for(backend: Backend, prompts: list[str], seeds: list[int], sampling: SamplingConfig,
                        vectors, batch: int) -> torch.Tensor:
    from ..method.generation import generate_images

    return generate_images(backend, prompts, seeds, sampling, vectors, chunk=batch)


def _check_same_settings(record_path: Path, old: list[dict], records: list[dict]) -> None:
    """A unit already drawn with other settings (prompt, token or not, sampling, model) is not mixed in."""
    if old != records:
        changed = sorted({k for a, b in zip(old, records) for k in a if a.get(k) != b.get(k)}) or ["the count"]
        raise DCTError(f"{record_path.parent} was drawn with other settings ({', '.join(changed)} differ); "
                       "use another --out, or remove that folder to draw it again.")


def _write_if_changed(path: Path, data: bytes) -> bool:
    try:
        if path.read_bytes() == data:
            return False
    except OSError:
        pass
    atomic_write(path, data)
    return True


def _write_manifest(out: Path, plans: Sequence[ClassPlan], units, seed0: int) -> Path:
    lines = []
    missing = []
    for c, start, count in units:
        path = _record_path(out, plans[c], seed0, start, count)
        records = read_records(path)
        if records is None:
            missing.append(path)
            continue
        lines += [json.dumps(r, sort_keys=True) for r in records]
    if missing:
        raise DCTError(f"{len(missing)} part(s) of the dataset are unfinished (e.g. {missing[0]}); run again to "
                       "finish them.")
    manifest = out / MANIFEST
    check_manifest_target(manifest)
    _write_if_changed(manifest, ("\n".join(lines) + "\n").encode())
    return manifest
