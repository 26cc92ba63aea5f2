"""`dct library`: one token per class into a folder; index derived from the files; resumable; split over ranks."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dct_core.cli import main
from dct_core.formats.files import TEMP_SUFFIX
from dct_core.formats.tokens import load_class_token
from dct_core.jobs import library

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--model", "world", "--classifier", "world:guide", "--batch-size", "2"]


def _env():
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    env.pop("RANK", None)
    return env


def _index(out):
    return json.loads((out / "index.json").read_text())


def _assert_index_matches_files(out, keys):
    index = _index(out)
    by_class = {e["class"]: e for e in index["classes"]}
    assert set(keys) <= set(by_class)
    for key in keys:
        assert by_class[key]["status"] == "done", by_class[key]
        meta = load_class_token(out / f"{key}.safetensors").metadata
        assert by_class[key]["steps"] == int(meta["trained_steps"])
        assert by_class[key]["accuracy"] == pytest.approx(float(meta["accuracy"]))
    assert not list(out.rglob(f"*{TEMP_SUFFIX}"))


def test_library_trains_each_class_once_and_indexes_it(tmp_path, capsys, monkeypatch):
    out = tmp_path / "lib"
    argv = ["library", *TINY, "--classes", "4,1", "--out", str(out), "--steps", "2",
            "--eval-classifier", "world:held-out", "--eval-images", "4"]
    assert main(argv) == 0
    keys = ["ball", "kite-bird-of-prey"]
    _assert_index_matches_files(out, keys)
    index = _index(out)
    assert [e["class"] for e in index["classes"]] == keys and index["counts"]["done"] == 2
    entry = index["classes"][1]
    assert entry["index"] == 1 and entry["prompt_label"] == "kite"  # the world's coarse caption word, as the demo
    assert entry["held_out_accuracy"] is not None and entry["seconds"] > 0
    assert "ball" in capsys.readouterr().out
    stamps = {k: (out / f"{k}.safetensors").stat().st_mtime_ns for k in keys}

    def no_training(*a, **k):
        raise AssertionError("a finished class was trained again")

    monkeypatch.setattr(library, "run_training", no_training)
    assert main(argv) == 0
    assert stamps == {k: (out / f"{k}.safetensors").stat().st_mtime_ns for k in keys}
    assert _index(out)["counts"] == {"done": 2, "failed": 0, "pending": 0}


def test_killed_run_resumes_with_the_rest_and_a_rebuilt_index(tmp_path):
    out = tmp_path / "lib"
    argv = ["library", *TINY, "--classes", "4-7", "--out", str(out), "--steps", "3"]
    proc = subprocess.Popen([sys.executable, "-m", "dct_core", *argv], env=_env(), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while not list(out.glob("*.safetensors")) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    first = {p: p.stat().st_mtime_ns for p in out.glob("*.safetensors")}
    assert 0 < len(first) < 4, "the run was not killed midway"
    assert _index(out)["counts"]["done"] < 4  # the index a killed run left is stale
    (out / "index.json").write_text("{ damaged")
    assert main(argv) == 0
    assert first == {p: p.stat().st_mtime_ns for p in first}  # finished classes were not trained again
    keys = ["ball", "box", "ring", "cross"]
    _assert_index_matches_files(out, keys)
    assert _index(out)["counts"] == {"done": 4, "failed": 0, "pending": 0}

    (out / "box.safetensors").unlink()  # a lost token: trained again, the index follows the files
    (out / "index.json").unlink()
    assert main(argv) == 0
    _assert_index_matches_files(out, keys)


def test_torchrun_splits_classes_over_ranks(tmp_path):
    out = tmp_path / "lib"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "dct_core",
           "library", *TINY, "--classes", "4-7", "--out", str(out), "--steps", "1"]
    done = subprocess.run(cmd, env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rank 0: class" in done.stderr and "rank 1: class" in done.stderr
    # rank r trains items[r::2]: ball, ring on rank 0; box, cross on rank 1
    for rank, labels in ((0, ("ball", "ring")), (1, ("box", "cross"))):
        for label in labels:
            assert f"rank {rank}: class" in done.stderr and f"{label}: done" in done.stderr
            line = next(x for x in done.stderr.splitlines() if f"{label}: done" in x)
            assert line.startswith(f"rank {rank}:"), line
    _assert_index_matches_files(out, ["ball", "box", "ring", "cross"])
    assert done.stdout.count("4 done, 0 failed, 0 pending") == 1  # only rank 0 prints the summary


def test_failed_class_is_recorded_and_retried(tmp_path, monkeypatch):
    out = tmp_path / "lib"
    listing = tmp_path / "classes.txt"
    listing.write_text("ball\nunicorn\n5\n")
    argv = ["library", *TINY, "--classes", str(listing), "--out", str(out), "--steps", "1"]
    real = library.run_training

    def box_fails(job, **kw):
        if job.target == 5:
            raise RuntimeError("simulated crash in training")
        return real(job, **kw)

    monkeypatch.setattr(library, "run_training", box_fails)
    assert main(argv) == 1
    by_class = {e["class"]: e for e in _index(out)["classes"]}
    assert by_class["ball"]["status"] == "done"
    assert by_class["unicorn"]["status"] == "failed" and "no class named 'unicorn'" in by_class["unicorn"]["message"]
    assert by_class["box"]["status"] == "failed" and "simulated crash" in by_class["box"]["message"]
    assert (out / ".failed" / "box.json").is_file() and not (out / "box.safetensors").exists()

    monkeypatch.setattr(library, "run_training", real)  # the next run retries the failed ones
    assert main(argv) == 1  # unicorn still names no class
    by_class = {e["class"]: e for e in _index(out)["classes"]}
    assert by_class["box"]["status"] == "done" and not (out / ".failed" / "box.json").exists()
    assert by_class["unicorn"]["status"] == "failed"
