"""`dct dataset`: an ImageFolder tree + manifest from a token library; resumable; split over ranks."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dct_core.cli import main
from dct_core.formats.files import TEMP_SUFFIX
from dct_core.formats.tokens import ClassToken, save_class_token
from dct_core.jobs import dataset, dataset_filter, dataset_folder

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = ["a photo of a {token} {label}", "a {token} {label}"]


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    """Two world-width tokens (64) written directly, with the metadata `dct library` gives them."""
    folder = tmp_path_factory.mktemp("lib")
    g = torch.Generator().manual_seed(0)
    for name, label, word in (("toy-kite", "toy kite", "kite"), ("red-throated-warbler", "red-throated warbler",
                                                                   "bird")):
        token = ClassToken({"clip_l": torch.randn(1, 64, generator=g) * 0.5}, name=name,
                           metadata={"class_label": label, "prompt_label": word, "templates": json.dumps(TEMPLATES)})
        save_class_token(token, folder / f"{name}.safetensors")
    (folder / "index.json").write_text("{}")  # what dct library writes beside the tokens: not a token
    return folder


def run_dataset(argv):
    return main(["dataset", *argv])


def _argv(lib, out, n=3, *extra):
    return ["--model", "world", "--library", str(lib), "--images-per-class", str(n), "--out", str(out), *extra]


def _manifest(out):
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def _stamps(out):
    return {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}


def _pngs(out):
    return sorted(str(p.relative_to(out)) for p in out.rglob("*.png"))


def _count_draws(monkeypatch) -> list:
    """The seeds dct dataset draws from now on (it still draws them)."""
    drawn: list = []
    real = dataset.generate_images_for

    def counting(backend, prompts, seeds, *a):
        drawn.extend(seeds)
        return real(backend, prompts, seeds, *a)

    monkeypatch.setattr(dataset, "generate_images_for", counting)
    return drawn


def test_tree_manifest_and_resume(library, tmp_path, monkeypatch):
    out = tmp_path / "ds"
    assert run_dataset(_argv(library, out)) == 0
    assert _pngs(out) == [f"{c}/{s}.png" for c in ("red-throated-warbler", "toy-kite")
                          for s in range(dataset.FIRST_SEED, dataset.FIRST_SEED + 3)]
    rows = _manifest(out)
    assert len(rows) == 6 and len({r["file"] for r in rows}) == 6
    kite = [r for r in rows if r["class"] == "toy kite"]
    assert [r["prompt"] for r in kite] == ["a photo of a {token} kite", "a {token} kite", "a photo of a {token} kite"]
    assert all(r["with_token"] and r["token_file"] == "toy-kite.safetensors" for r in kite)
    assert rows[0]["sampling"] == {"resolution": 32, "steps": 10, "guidance": 3.0, "scheduler": "ddim",
                                   "negative_prompt": ""}
    with Image.open(out / kite[0]["file"]) as im:
        assert im.size == (32, 32)
    assert not list(out.rglob(f"*{TEMP_SUFFIX}"))

    # a second run draws nothing and writes nothing
    stamps = _stamps(out)

    def no_drawing(*a, **k):
        raise AssertionError("a complete image was drawn again")

    monkeypatch.setattr(dataset, "generate_images_for", no_drawing)
    assert run_dataset(_argv(library, out)) == 0
    assert _stamps(out) == stamps

    # a lost image, a truncated one and a lost manifest: exactly those come back
    manifest = (out / "manifest.jsonl").read_bytes()
    lost, cut = out / kite[1]["file"], out / "red-throated-warbler" / f"{dataset.FIRST_SEED}.png"
    before = {p: p.read_bytes() for p in (lost, cut)}
    lost.unlink()
    cut.write_bytes(before[cut][: len(before[cut]) // 2])
    (out / "manifest.jsonl").unlink()
    monkeypatch.undo()
    drawn = _count_draws(monkeypatch)
    assert run_dataset(_argv(library, out)) == 0
    assert sorted(drawn) == [dataset.FIRST_SEED, dataset.FIRST_SEED + 1]
    assert (out / "manifest.jsonl").read_bytes() == manifest
    changed = {p for p, t in _stamps(out).items() if stamps.get(p) != t}
    assert changed == {lost, cut, out / "manifest.jsonl"}
    for p in (lost, cut):  # the same seed gives the same image
        assert _close(p.read_bytes(), before[p]), p

def _close(a: bytes, b: bytes) -> bool:
    import io

    x, y = (np.asarray(Image.open(io.BytesIO(d)), dtype=int) for d in (a, b))
    return int(np.abs(x - y).max()) <= 1


def test_without_tokens_uses_the_same_prompts_without_the_token(library, tmp_path, capsys):
    out = tmp_path / "plain"
    assert run_dataset(_argv(library, out, 2, "--without-tokens")) == 0
    rows = _manifest(out)
    assert len(rows) == 4
    assert {r["prompt"] for r in rows} == {"a photo of a kite", "a kite", "a photo of a bird", "a bird"}
    assert not any(r["with_token"] or "{token}" in r["prompt"] for r in rows)

    assert run_dataset(_argv(library, out, 2)) == 2  # drawn without tokens: not mixed with token images
    assert "other settings (prompt, with_token differ)" in capsys.readouterr().err

    custom = tmp_path / "custom"
    assert run_dataset(_argv(library, custom, 1, "--prompt-template", "an image of a {token} {label}")) == 0
    assert {r["prompt"] for r in _manifest(custom)} == {"an image of a {token} kite", "an image of a {token} bird"}


def test_bad_inputs_are_one_line_errors(library, tmp_path, capsys):
    assert run_dataset(_argv(tmp_path / "nowhere", tmp_path / "x")) == 2
    assert "does not exist" in capsys.readouterr().err
    assert run_dataset(_argv(library, tmp_path / "x", 1, "--prompt-template", "a {label}")) == 2
    assert "{token}" in capsys.readouterr().err


# Nothing lost, every bad input one line (issue 19).

def _one_line_error(capsys, *parts):
    """The run's stderr ends with one error line (after any progress lines of earlier runs), no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    err = err.rstrip("\n").rsplit("\n", 1)[-1]
    assert err.startswith("dct dataset: error: "), err
    for part in parts:
        assert str(part) in err, (part, err)
    return err


def _foreign_png(path, size=32):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), (10, 200, 30)).save(path)
    return path.read_bytes()


def _listing(folder):
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in folder.rglob("*")}


def test_out_folder_with_other_files_is_refused_unless_allowed(library, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    assert run_dataset(_argv(library, out, 1)) == 2
    _one_line_error(capsys, out, "'notes.txt'", "--allow-foreign-files")
    assert _listing(out) == {"notes.txt": b"my notes"}  # nothing written, not even the marker

    assert run_dataset(_argv(library, out, 1, "--allow-foreign-files")) == 0
    assert (out / "notes.txt").read_bytes() == b"my notes"
    assert (out / ".dct-dataset").is_file() and len(_manifest(out)) == 2

    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    assert run_dataset(_argv(library, a_file, 1)) == 2
    _one_line_error(capsys, a_file, "is a file")


def test_foreign_manifest_is_never_overwritten(library, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "manifest.jsonl").write_text('{"my": "own list"}\n')
    assert run_dataset(_argv(library, out, 1)) == 2  # not our manifest: the folder is not ours
    _one_line_error(capsys, "'manifest.jsonl'", "--allow-foreign-files")
    assert run_dataset(_argv(library, out, 1, "--allow-foreign-files")) == 2  # and it is never replaced
    _one_line_error(capsys, out / "manifest.jsonl", "not a manifest dct dataset wrote", "move it away")
    assert _listing(out) == {"manifest.jsonl": b'{"my": "own list"}\n'}  # refused before drawing anything


def test_foreign_file_where_an_image_goes_is_an_error_not_adopted(library, tmp_path, capsys, monkeypatch):
    out = tmp_path / "mine"
    first = out / "toy-kite" / f"{dataset.FIRST_SEED}.png"
    second = out / "toy-kite" / f"{dataset.FIRST_SEED + 1}.png"
    for path, data in ((first, None), (second, b"not an image")):
        if data is None:
            data = _foreign_png(path)  # a complete PNG of the right size: used to be adopted as generated
        else:
            path.write_bytes(data)
        before = _listing(out)
        assert run_dataset(_argv(library, out, 2, "--allow-foreign-files")) == 2
        _one_line_error(capsys, path, "is not an image dct dataset drew", "move it elsewhere")
        assert _listing(out) == before  # never overwritten; nothing drawn
        path.unlink()

    # in our own folder too: an unfinished unit (no record) with someone else's image where one goes
    assert run_dataset(_argv(library, out, 2)) == 0  # a folder holding only empty folders is a fresh one
    next(out.glob("toy-kite/.records-*.json")).unlink()
    mine = _foreign_png(first)
    assert run_dataset(_argv(library, out, 2)) == 2
    _one_line_error(capsys, first, "is not an image dct dataset drew")
    assert first.read_bytes() == mine


def test_images_carry_their_record_and_a_kill_mid_unit_resumes(library, tmp_path, monkeypatch):
    out = tmp_path / "ds"
    published = []
    real_write = dataset.atomic_write

    def dying_write(path, data, **k):  # a kill -9 after the second image reached the disk
        if len(published) == 2:
            raise KeyboardInterrupt
        real_write(path, data, **k)
        published.append(Path(path))

    monkeypatch.setattr(dataset, "atomic_write", dying_write)
    assert run_dataset(_argv(library, out, 3)) == 130
    assert (out / ".dct-dataset").is_file() and len(_pngs(out)) == 2 and not list(out.rglob(".records-*"))
    monkeypatch.undo()

    drawn = _count_draws(monkeypatch)
    stamps = {p: p.stat().st_mtime_ns for p in published}
    assert run_dataset(_argv(library, out, 3)) == 0
    assert len(drawn) == 4 and {p: p.stat().st_mtime_ns for p in published} == stamps  # the rest, only the rest
    rows = _manifest(out)
    assert len(rows) == 6
    for row in rows:
        assert set(row) == dataset_folder.RECORD_KEYS  # what tells our records and manifests from others'
        with Image.open(out / row["file"]) as im:
            assert json.loads(im.info["dct:record"]) == row
            assert im.info["dct:seed"] == str(row["seed"]) and im.info["dct:prompt"] == row["prompt"]


def test_dataset_from_before_the_marker_is_still_ours(library, tmp_path, monkeypatch):
    out = tmp_path / "old"
    assert run_dataset(_argv(library, out, 2)) == 0
    manifest = (out / "manifest.jsonl").read_bytes()
    (out / ".dct-dataset").unlink()
    for png in out.rglob("*.png"):  # images from before they carried their record
        with Image.open(png) as im:
            im.load()
            plain = im.copy()
        plain.save(png)

    def no_drawing(*a, **k):
        raise AssertionError("an image of our old dataset was drawn again")

    monkeypatch.setattr(dataset, "generate_images_for", no_drawing)
    assert run_dataset(_argv(library, out, 2)) == 0  # our manifest: ours; the records list the images
    assert (out / ".dct-dataset").is_file() and (out / "manifest.jsonl").read_bytes() == manifest

    (out / ".dct-dataset").unlink()
    (out / "manifest.jsonl").unlink()  # killed before the manifest: the unit records say it is ours
    assert run_dataset(_argv(library, out, 2)) == 0
    assert (out / "manifest.jsonl").read_bytes() == manifest


def test_damaged_record_files_are_rebuilt(library, tmp_path, monkeypatch):
    out = tmp_path / "ds"
    assert run_dataset(_argv(library, out, 2)) == 0
    record = next(out.glob("toy-kite/.records-*.json"))
    good, manifest = record.read_bytes(), (out / "manifest.jsonl").read_bytes()

    def no_drawing(*a, **k):
        raise AssertionError("an image was drawn again")

    monkeypatch.setattr(dataset, "generate_images_for", no_drawing)
    for damage in (b"not json", b"{}", b'"text"', b"[1, 2]", b"[]", b'[{"seed": 1}]', b"\xff\xfe\x00", b""):
        record.write_bytes(damage)
        assert run_dataset(_argv(library, out, 2)) == 0, damage
        assert record.read_bytes() == good and (out / "manifest.jsonl").read_bytes() == manifest, damage


def test_folders_in_place_of_state_files_are_one_line_errors(library, tmp_path, capsys):
    out = tmp_path / "ds"
    assert run_dataset(_argv(library, out, 1)) == 0
    record = next(out.glob("toy-kite/.records-*.json"))
    record.unlink()
    record.mkdir()
    assert run_dataset(_argv(library, out, 1)) == 2
    _one_line_error(capsys, record, "is a folder")
    record.rmdir()

    (out / "manifest.jsonl").unlink()
    (out / "manifest.jsonl").mkdir()
    assert run_dataset(_argv(library, out, 1)) == 2
    _one_line_error(capsys, out / "manifest.jsonl", "is a folder")
    (out / "manifest.jsonl").rmdir()

    image = out / "toy-kite" / f"{dataset.FIRST_SEED}.png"
    image.unlink()
    image.mkdir()
    assert run_dataset(_argv(library, out, 1)) == 2
    _one_line_error(capsys, image, "is not a file")
    image.rmdir()

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "toy-kite").write_text("a file where the class folder goes")
    assert run_dataset(_argv(library, fresh, 1, "--allow-foreign-files")) == 2
    _one_line_error(capsys, fresh / "toy-kite", "is a file")
    assert run_dataset(_argv(library, out, 1)) == 0  # all put right: it finishes


def test_library_that_is_a_file_says_so(library, tmp_path, capsys):
    token = library / "toy-kite.safetensors"
    assert run_dataset(_argv(token, tmp_path / "x", 1)) == 2
    _one_line_error(capsys, token, "is a file; give the library folder")


def _one_token_library(folder, **metadata):
    folder.mkdir(exist_ok=True)
    meta = {"class_label": "toy kite", "prompt_label": "kite", "templates": json.dumps(TEMPLATES), **metadata}
    path = folder / "toy-kite.safetensors"
    save_class_token(ClassToken({"clip_l": torch.ones(1, 64)}, name="toy-kite", metadata=meta), path, overwrite=True)
    return path


@pytest.mark.parametrize("metadata, words", [
    ({"templates": "[1, 2]"}, "not a list of prompt texts"),
    ({"templates": '"a {token} {label}"'}, "not a list of prompt texts"),
    ({"templates": "a {token} {label}"}, "not a list of prompt texts"),
    ({"templates": "[]"}, "not a list of prompt texts"),
    ({"templates": '["a {label}"]'}, "{token}"),
    ({"class_index": "\u0661"}, "not a class number"),  # ARABIC-INDIC DIGIT ONE: isdigit() says yes
    ({"class_index": "\u00b2"}, "not a class number"),  # SUPERSCRIPT TWO: isdigit() says yes, int() fails
    ({"class_index": "3.0"}, "not a class number"),
    ({"class_index": "-1"}, "not a class number"),
])
def test_bad_token_metadata_is_one_line_naming_the_file(tmp_path, metadata, words):
    path = _one_token_library(tmp_path / "lib", **metadata)
    with pytest.raises(dataset.DCTError) as caught:
        dataset.plan_classes(tmp_path / "lib")
    message = str(caught.value)
    assert str(path) in message and words in message and "\n" not in message


def test_token_metadata_that_is_not_text_is_one_line(library, tmp_path, monkeypatch, capsys):
    path = _one_token_library(tmp_path / "lib", class_index="7")
    assert [p.class_index for p in dataset.plan_classes(tmp_path / "lib")] == [7]
    real = dataset.load_class_token
    for key, value in (("prompt_label", 5), ("class_label", ["toy", "kite"]), ("class_index", True),
                       ("templates", ["a {token} {label}"])):
        def odd_metadata(p, key=key, value=value):
            token = real(p)
            token.metadata[key] = value
            return token

        monkeypatch.setattr(dataset, "load_class_token", odd_metadata)
        assert run_dataset(_argv(tmp_path / "lib", tmp_path / "x", 1)) == 2
        _one_line_error(capsys, path, key)
    # a prompt template of the user's replaces the token's templates, however they are written
    assert run_dataset(_argv(tmp_path / "lib", tmp_path / "x", 1, "--prompt-template", "a {token} {label}")) == 0


# --classifier C --min-prob P: only what a (second) classifier accepts, drawn on until N pass (issue 24, part 4).

FILTER = ("--classifier", "world:held-out", "--min-prob", "0.5", "--max-draws", "40")


@pytest.fixture(scope="module")
def filtered(library, tmp_path_factory):
    """One filtered dataset of 5 images per class (random tokens: about 1 in 7 images passes p >= 0.5)."""
    out = tmp_path_factory.mktemp("filtered") / "ds"
    assert run_dataset(_argv(library, out, 5, *FILTER)) == 0
    return out


def _records(out):
    return {r["seed"]: r for f in sorted(out.rglob(".records-*.json")) for r in json.loads(f.read_text())
            if r["folder"] == "toy-kite"}


def test_filter_keeps_n_images_the_classifier_accepts(filtered):
    rows = _manifest(filtered)
    assert [sum(r["folder"] == c for r in rows) for c in ("red-throated-warbler", "toy-kite")] == [5, 5]
    assert all(r["filter_prob"] >= 0.5 and r["filter"] == {"classifier": "world:held-out", "min_prob": 0.5}
               for r in rows)
    assert _pngs(filtered) == sorted(r["file"] for r in rows)  # the tree is the manifest: nothing dropped is there
    for row in rows:
        with Image.open(filtered / row["file"]) as im:
            assert json.loads(im.info["dct:record"]) == row
    # every seed drawn is recorded with its probability and whether it passed; the dataset is the first 5 passing
    records = _records(filtered)
    assert len(records) > 5 and sorted(records) == list(range(dataset.FIRST_SEED, dataset.FIRST_SEED + len(records)))
    assert all(r["kept"] == (r["filter_prob"] >= 0.5) for r in records.values())
    passed = sorted(s for s, r in records.items() if r["kept"])
    assert passed[:5] == sorted(r["seed"] for r in rows if r["folder"] == "toy-kite")


def test_filtered_rerun_draws_nothing_and_a_lost_image_comes_back(filtered, library, monkeypatch, capsys):
    manifest = (filtered / "manifest.jsonl").read_bytes()

    def no_drawing(*a, **k):
        raise AssertionError("drawn again")

    monkeypatch.setattr(dataset, "generate_images_for", no_drawing)
    assert run_dataset(_argv(library, filtered, 5, *FILTER)) == 0
    assert (filtered / "manifest.jsonl").read_bytes() == manifest
    assert "toy-kite: 5 kept of" in capsys.readouterr().out
    monkeypatch.undo()

    lost = filtered / _manifest(filtered)[-1]["file"]
    before = lost.read_bytes()
    lost.unlink()
    drawn = _count_draws(monkeypatch)
    assert run_dataset(_argv(library, filtered, 5, *FILTER)) == 0
    assert drawn == [int(lost.stem)] and _close(lost.read_bytes(), before)
    assert (filtered / "manifest.jsonl").read_bytes() == manifest

    # another filter is not mixed into the same folder
    assert run_dataset(_argv(library, filtered, 5, "--classifier", "world:held-out", "--min-prob", "0.6",
                             "--max-draws", "40")) == 2
    _one_line_error(capsys, "other settings (filter differ)")


def test_filter_a_larger_count_reuses_what_passed_and_damage_is_redrawn(library, filtered, tmp_path, monkeypatch):
    out = tmp_path / "ds"
    shutil.copytree(filtered, out)
    records = _records(out)
    kept = [s for s, r in records.items() if r["kept"]]
    in_manifest = {r["seed"] for r in _manifest(out) if r["folder"] == "toy-kite"}
    surplus = [s for s in kept if s not in in_manifest]  # passed, beyond the 5: removed, still recorded
    assert all(not (out / "toy-kite" / f"{s}.png").exists() for s in surplus)
    # a surplus image left behind (a kill while they were removed) goes on the next run
    if surplus:
        shutil.copy(out / "toy-kite" / f"{max(in_manifest)}.png", out / "toy-kite" / f"{surplus[0]}.png")
    assert run_dataset(_argv(library, out, 5, *FILTER)) == 0
    assert _pngs(out) == sorted(r["file"] for r in _manifest(out))
    # a hand-damaged record (an entry without its outcome) is drawn and scored again, not a crash
    record = next(out.glob("toy-kite/.records-*-16.json"))
    damaged = json.loads(record.read_text())
    del damaged[-1]["kept"]
    record.write_text(json.dumps(damaged))
    assert run_dataset(_argv(library, out, 5, *FILTER)) == 0
    assert json.loads(record.read_text())[-1]["kept"] in (True, False)

    drawn = _count_draws(monkeypatch)
    bigger = len(kept) + 1
    assert run_dataset(_argv(library, out, bigger, *FILTER)) == 0
    rows = [r for r in _manifest(out) if r["folder"] == "toy-kite"]
    assert len(rows) == bigger and set(kept) <= {r["seed"] for r in rows}
    assert not set(drawn) & {s for s, r in records.items() if not r["kept"]}  # dropped seeds are never redrawn


def test_filter_short_of_n_says_so(library, tmp_path, capsys):
    out = tmp_path / "ds"
    assert run_dataset(_argv(library, out, 3, "--classifier", "world:held-out", "--min-prob", "0.999",
                             "--max-draws", "4")) == 0
    printed = capsys.readouterr().out
    assert "kept of 4 drawn" in printed and "SHORT of 3" in printed
    assert len(_manifest(out)) == len(_pngs(out)) < 6


@pytest.mark.parametrize("extra, words", [
    (("--min-prob", "0.9"), "add --classifier"),
    (("--classifier", "world:held-out"), "add --min-prob"),
    (("--classifier", "world:held-out", "--min-prob", "1.5"), "between 0 and 1"),
    (("--classifier", "world:held-out", "--min-prob", "0.9", "--max-draws", "1"), "below --images-per-class"),
])
def test_filter_bad_inputs_are_one_line_errors(library, tmp_path, capsys, extra, words):
    assert run_dataset(_argv(library, tmp_path / "x", 2, *extra)) == 2
    _one_line_error(capsys, words)
    assert not (tmp_path / "x").exists()  # refused before anything is written


def test_filter_classifier_without_the_class_is_one_line(tmp_path, capsys):
    path = _one_token_library(tmp_path / "lib", class_label="zebra")
    assert run_dataset(_argv(tmp_path / "lib", tmp_path / "x", 2, "--classifier", "world:held-out",
                             "--min-prob", "0.5")) == 2
    _one_line_error(capsys, path.name, "has no class 'zebra'")


def test_torchrun_split_gives_the_same_tree(library, filtered, tmp_path):
    """Two ranks, filtered (the passes: every rank plans the next one from the same records) = one process."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    env.pop("RANK", None)
    split = tmp_path / "split"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "dct_core", "dataset", *_argv(library, split, 5, *FILTER)]
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    # rank r takes units r::2: in the first pass one class each
    assert "[rank 0] red-throated-warbler: drew 16" in done.stderr and "[rank 1] toy-kite: drew 16" in done.stderr
    assert done.stdout.count("10 images of 2 classes") == 1  # only rank 0 reports
    assert _pngs(split) == _pngs(filtered)
    split_rows, rows = _manifest(split), _manifest(filtered)  # probabilities agree to float noise across processes
    assert [{**r, "filter_prob": None} for r in split_rows] == [{**r, "filter_prob": None} for r in rows]
    assert all(abs(a["filter_prob"] - b["filter_prob"]) < 1e-4 for a, b in zip(split_rows, rows))
    for name in _pngs(filtered):
        assert _close((split / name).read_bytes(), (filtered / name).read_bytes()), name


def test_next_units_draws_at_the_pass_rate_seen():
    counts = [16, 16, 16, 16, 16]
    assert dataset_filter.next_units(counts, [], 16) == [0]
    assert dataset_filter.next_units(counts, [[True] * 4 + [False] * 12], 16) == [1, 2, 3]  # 25%: 48 more seeds
    assert dataset_filter.next_units(counts, [[False] * 16], 16) == [1, 2, 3, 4]  # nothing passed: all there is
    assert dataset_filter.next_units(counts, [[True] * 16], 16) == []
    assert dataset_filter.next_units(counts, [[False] * 16] * 5, 16) == []  # used up
    chosen, beyond = dataset_filter.trim([[{"kept": True}, {"kept": False}], [{"kept": True}, {"kept": True}]], 2)
    assert len(chosen) == 2 and beyond == [(1, 1)]
