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
  writes the manifest once the ranks agree that every unit is done.
- Filtered (``--classifier C --min-prob P``, ``dataset_filter``): only the images C gives their class >= P are
  written, drawing on in passes until images_per_class pass (or ``--max-draws`` seeds); each unit's record lists
  every seed with its probability and whether it was kept, so a rerun never draws a dropped seed again.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import PAPER_TEMPLATES, SamplingConfig
from ..errors import DCTError
from ..formats.files import atomic_write
from ..formats.tokens import TOKEN_SUFFIXES, ClassToken, load_class_token, sanitize_name
from ..method.backend import Backend
from ..method.prompts import check_templates, fill_label, strip_token
from ..settings import check
from .dataset_filter import KEPT, PROB, KeepFilter, class_units, manifest_row, next_units, planned, scored, trim
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
from .distributed import Ranks, all_ok, gather_objects, ranks_from_env

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
    kept: dict[str, tuple[int, int]] = field(default_factory=dict)  # with a filter (rank 0): per class folder,
    # (images kept, seeds drawn)


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
    keep: KeepFilter | None = None,
    log=None,
) -> DatasetSummary:
    """Write this rank's share of the dataset, then (rank 0, after the ranks agree) the manifest. See the module
    doc; ``keep``: draw on until images_per_class images per class pass the filter (dataset_filter).

    ``allow_foreign``: write into a folder that holds files we did not write (never over them).
    """
    check("images_per_class", images_per_class)
    ranks = ranks or ranks_from_env()
    sampling = sampling or SamplingConfig()
    sampling.validate()
    out = Path(out_dir)
    plans = plan_classes(library_dir, prompt_template, without_tokens)
    indices = [keep.class_index(p.label, p.token_file.name) for p in plans] if keep else []
    sequence = class_units(images_per_class, keep.max_draws if keep else None, CHUNK)  # the same for every class
    counts = [count for _, count in sequence]
    settings = _sampling_record(sampling, getattr(backend, "sampler", ""))
    drawn: list[list[list[bool]]] = [[] for _ in plans]  # per class: the kept flags of each unit drawn this run
    written = skipped = 0
    if keep is not None:
        keep.classifier.to(backend.device)
    while True:
        units = [(c, u) for c in range(len(plans)) for u in next_units(counts, drawn[c], images_per_class)]
        if not units:
            break
        failure: BaseException | None = None
        flags: dict[tuple[int, int], list[bool]] = {}
        try:
            w, s = _draw_units(backend, out, plans, ranks.share(units), sequence, seed0, without_tokens,
                               settings, sampling, model, batch, allow_foreign, keep, indices, images_per_class,
                               flags, log)
            written, skipped = written + w, skipped + s
        except BaseException as exc:  # still meet the other ranks, so that none waits forever
            failure = exc
        everyone = all_ok(failure is None)
        if failure is not None:
            raise failure
        if not everyone:
            raise DCTError("another rank failed (its message says why); run the same command again to finish.")
        for shared in gather_objects(flags):  # every rank plans the next pass from the same outcomes
            flags.update(shared)
        for c, u in units:
            drawn[c].append(flags[(c, u)])
    manifest: Path | None = None
    kept: dict[str, tuple[int, int]] = {}
    if ranks.is_main:
        manifest, kept = _write_manifest(out, plans, sequence, [len(d) for d in drawn], seed0, images_per_class,
                                         (sampling.resolution, sampling.resolution))
    total = sum(k for k, _ in kept.values()) if kept else len(plans) * images_per_class
    return DatasetSummary(out, len(plans), total, written, skipped, manifest, kept if keep else {})


def _draw_units(backend, out, plans, share, sequence, seed0, without_tokens, settings, sampling, model, batch,
                allow_foreign, keep, indices, wanted, flags, log) -> tuple[int, int]:
    """Draw this rank's units of one pass; everything this rank can check is checked before it writes anything
    (every rank finds the same errors). Returns (written, found complete); ``flags`` gets each unit's kept flags."""
    size = (sampling.resolution, sampling.resolution)
    written = skipped = 0
    check_out_folder(out, allow_foreign)
    check_manifest_target(out / MANIFEST)
    work = []
    surplus_of: dict[int, set[int]] = {}  # per class, read once per pass (a class has many units)
    for c, u in share:
        plan = plans[c]
        start, count = sequence[u]
        seeds = [seed0 + start + i for i in range(count)]
        prompts = [plan.prompt(start + i, without_tokens) for i in range(count)]
        records = [{
            "class": plan.label, "class_index": plan.class_index, "folder": plan.folder,
            "file": f"{plan.folder}/{seed}.png", "seed": seed, "prompt": prompt,
            "with_token": not without_tokens, "token_file": plan.token_file.name, "model": model,
            "sampling": settings, **({"filter": keep.settings()} if keep else {}),
        } for seed, prompt in zip(seeds, prompts)]
        paths = [out / plan.folder / f"{seed}.png" for seed in seeds]
        record_path = _record_path(out, plan, seed0, start, count)
        old = read_records(record_path)
        # The unit was finished with these settings (filtered: and every image scored): its files are ours.
        listed = old is not None and (scored(old) or keep is None)
        if listed and old is not None:
            _check_same_settings(record_path, [planned(r) for r in old], records)
            records = old  # filtered: with each image's outcome
        if keep and c not in surplus_of:
            surplus_of[c] = _surplus(out, plan, sequence, seed0, wanted)
        todo = _unit_todo(out / plan.folder, records, paths, size, listed, keep is not None,
                          surplus_of.get(c, set()))
        skipped += sum(1 for i, r in enumerate(records) if i not in todo and r.get(KEPT, True))
        work.append((c, u, plan, seeds, prompts, records, paths, record_path, todo))
    write_marker(out)
    for c, u, plan, seeds, prompts, records, paths, record_path, todo in work:
        if todo:
            vectors = None
            if not without_tokens:
                vectors = {k: v.to(backend.device) for k, v in plan.token.for_encoders(backend.encoders).items()}
            images = generate_images_for(backend, [prompts[i] for i in todo], [seeds[i] for i in todo],
                                         sampling, vectors, batch)
            probs = keep.probs(images, indices[c]) if keep else [None] * len(todo)
            for i, image, prob in zip(todo, images, probs):
                if prob is not None:
                    records[i] = {**planned(records[i]), PROB: round(prob, 6), KEPT: prob >= keep.min_prob}
                    if not records[i][KEPT]:
                        _remove_ours(paths[i], size)
                        continue
                atomic_write(paths[i], _png_bytes(image, manifest_row(records[i])))
                written += 1
            if log is not None:
                what = f"drew {len(todo)}, kept {sum(records[i][KEPT] for i in todo)}" if keep else \
                    f"wrote {len(todo)} image(s)"
                log(f"{plan.folder}: {what}, seeds {seeds[0]}-{seeds[-1]}")
        _write_if_changed(record_path, json.dumps(records).encode())
        flags[(c, u)] = [bool(r.get(KEPT, True)) for r in records]
    return written, skipped


def _surplus(out: Path, plan: ClassPlan, sequence, seed0: int, wanted: int) -> set[int]:
    """Seeds of kept images beyond the class's first ``wanted`` (by the records on disk, in unit order, up to the
    first unit without scored records): not drawn again, and removed when the manifest is written. Empty while
    the class has fewer than ``wanted`` kept so far."""
    units = []
    for start, count in sequence:
        records = read_records(_record_path(out, plan, seed0, start, count))
        if records is None or not scored(records):
            break
        units.append(records)
    chosen, beyond = trim(units, wanted)
    return {units[u][i]["seed"] for u, i in beyond} if len(chosen) == wanted else set()


def _remove_ours(path: Path, size: tuple[int, int]) -> None:
    """An image we drew that is not (or no longer) in the dataset: removed; anything else there is left alone."""
    if os.path.lexists(path) and path.is_file() and find_image(path, {}, size) is Found.OURS_OTHER:
        path.unlink()


def _unit_todo(folder: Path, records: list[dict], paths: list[Path], size: tuple[int, int], listed: bool,
               filtered: bool = False, surplus: set[int] | None = None) -> list[int]:
    """The images of a unit to draw; a file in an image's place that is not ours stops the run (reads only).
    ``listed``: the unit's record was found (its files are ours). ``filtered``: ``records`` then carry each image's
    outcome; an image the filter dropped is not drawn again, nor one kept beyond the class's count (``surplus``),
    one never scored is."""
    check_class_folder(folder)
    todo = []
    for i, (record, path) in enumerate(zip(records, paths)):
        if filtered and listed and (not record[KEPT] or record["seed"] in (surplus or ())):
            continue
        found = find_image(path, manifest_row(record), size)
        if filtered and not listed and found is Found.OURS:
            found = Found.OURS_OTHER  # drawn, but its outcome was never recorded: drawn and scored again
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
        changed = sorted({k for a, b in zip(old, records) for k in {*a, *b} if a.get(k) != b.get(k)}) \
            or ["the count"]
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


def _write_manifest(out: Path, plans: Sequence[ClassPlan], sequence, drawn_units: list[int], seed0: int,
                    images_per_class: int, size: tuple[int, int]) -> tuple[Path, dict[str, tuple[int, int]]]:
    """The manifest from the unit records, in class and seed order; with a filter, each class's first
    images_per_class kept images (the images of every other record are removed: dropped, or kept beyond the
    count; records keep saying which passed, so a larger count later reuses them). Returns the manifest and per
    class folder (kept, seeds drawn)."""
    drawn = []
    missing = []
    for c, plan in enumerate(plans):
        units = []
        for start, count in sequence[:drawn_units[c]]:
            path = _record_path(out, plan, seed0, start, count)
            records = read_records(path)
            if records is None:
                missing.append(path)
            units.append(records or [])
        drawn.append(units)
    if missing:  # before anything is removed
        raise DCTError(f"{len(missing)} part(s) of the dataset are unfinished (e.g. {missing[0]}); run again to "
                       "finish them.")
    lines = []
    kept = {}
    for plan, units in zip(plans, drawn):
        chosen, _ = trim(units, images_per_class)
        files = {r["file"] for r in chosen}
        for records in units:
            for record in records:
                if record["file"] not in files:
                    _remove_ours(out / record["file"], size)
        lines += [json.dumps(manifest_row(r), sort_keys=True) for r in chosen]
        kept[plan.folder] = (len(chosen), sum(len(records) for records in units))
    manifest = out / MANIFEST
    check_manifest_target(manifest)
    _write_if_changed(manifest, "".join(line + "\n" for line in lines).encode())  # empty: nothing passed
    return manifest, kept
