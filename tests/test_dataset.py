"""`dct dataset`: an ImageFolder tree + manifest from a token library; resumable; split over ranks."""

import json
import os
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
from dct_core.jobs import dataset

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
    drawn = []
    monkeypatch.undo()
    real = dataset.generate_images_for

    def counting(backend, prompts, seeds, *a):
        drawn.extend(seeds)
        return real(backend, prompts, seeds, *a)

    monkeypatch.setattr(dataset, "generate_images_for", counting)
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


def test_torchrun_split_gives_the_same_tree(library, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    env.pop("RANK", None)
    split, single = tmp_path / "split", tmp_path / "single"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "dct_core", "dataset", *_argv(library, split, 2)]
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    # rank r takes units r::2: one class each
    assert "[rank 0] red-throated-warbler: wrote 2" in done.stderr and "[rank 1] toy-kite: wrote 2" in done.stderr
    assert done.stdout.count("4 images of 2 classes") == 1  # only rank 0 reports
    assert run_dataset(_argv(library, single, 2)) == 0
    assert _pngs(split) == _pngs(single)
    assert (split / "manifest.jsonl").read_bytes() == (single / "manifest.jsonl").read_bytes()
    for name in _pngs(single):
        assert _close((split / name).read_bytes(), (single / name).read_bytes()), name
