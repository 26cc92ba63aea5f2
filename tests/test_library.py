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
    assert 0 <= entry["leak"] <= 1  # the share of images the token sends to other classes, as `dct eval` reports
    summary = capsys.readouterr().out
    assert "ball" in summary and "leak" in summary
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


def _box_fails(monkeypatch, message: str):
    """Training class 5 (box) raises ``message``; every other class trains. Returns the real run_training."""
    real = library.run_training

    def box_fails(job, **kw):
        if job.target == 5:
            raise RuntimeError(message)
        return real(job, **kw)

    monkeypatch.setattr(library, "run_training", box_fails)
    return real


def test_failed_class_is_recorded_and_retried(tmp_path, monkeypatch):
    out = tmp_path / "lib"
    listing = tmp_path / "classes.txt"
    listing.write_text("ball\nunicorn\n5\n")
    argv = ["library", *TINY, "--classes", str(listing), "--out", str(out), "--steps", "1"]
    real = _box_fails(monkeypatch, "simulated crash in training")
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


# --- nothing lost, every bad input one line (issue 19) ---------------------------------------------------------

ONE_STEP = [*TINY, "--max-steps", "1"]


def _labelled(monkeypatch, **relabel):
    """`dct library` with the world's guide classifier under other labels ({index: label}), as a --labels file
    would give a classifier that takes one (the world's ignore --labels)."""
    import copy

    from dct_core.cli import library as cli_library

    real = cli_library.load_classifier

    def load(args):
        classifier = copy.copy(real(args))
        classifier.labels = [relabel.get(f"c{i}", label) for i, label in enumerate(classifier.labels)]
        return classifier

    monkeypatch.setattr(cli_library, "load_classifier", load)


def _no_training(monkeypatch):
    def refuse(job, **kw):
        raise AssertionError(f"class {job.target} was trained")

    monkeypatch.setattr(library, "run_training", refuse)


def _by_class(out):
    return {e["class"]: e for e in _index(out)["classes"]}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A library of ball (4) and box (5), copied by each test that damages it."""
    out = tmp_path_factory.mktemp("trained") / "lib"
    assert main(["library", *ONE_STEP, "--classes", "4,5", "--out", str(out)]) == 0
    return out


@pytest.fixture
def lib(trained, tmp_path):
    import shutil

    return Path(shutil.copytree(trained, tmp_path / "lib"))


def _fake_classifier(labels):
    from dct_core.classifiers import Classifier

    classifier = Classifier()
    classifier.labels = list(labels)
    return classifier


def test_colliding_names_are_told_apart_and_others_keep_theirs():
    labels = ["ball", "a/b", "b", "x.safetensors", "x", "Bird", "bird", "..", "鳥", "q", "Q", "q-9", "ok ok", "y" * 240]
    entries = library.library_classes(_fake_classifier(labels))
    assert [c.key for c in entries] == ["ball", "b-1", "b-2", "x-3", "x-4", "Bird-5", "bird-6", "unnamed-7",
                                        "unnamed-8", "q-9-9", "Q-10", "q-9", "ok-ok", "y" * 240]
    assert len({c.key.casefold() for c in entries}) == len(entries)  # distinct on any file system
    assert [c.legacy for c in entries[:3]] == [None, "b", "b"]
    assert [c.error is not None for c in entries] == [False] * 7 + [True, True] + [False] * 4 + [True]
    assert "'..' gives no usable file name" in entries[7].error and "--labels" in entries[7].error
    assert "too long" in entries[-1].error
    picked = library.select_classes("all", _fake_classifier(labels))
    assert len(picked) == len(labels)  # nothing dropped as a duplicate
    listing = library.select_classes("1,2,2,5,6", _fake_classifier(labels))
    assert [c.key for c in listing] == ["b-1", "b-2", "Bird-5", "bird-6"]


def test_labels_with_one_file_name_are_all_trained(tmp_path, monkeypatch, capsys):
    _labelled(monkeypatch, c4="Bird 1", c5="bird-1")  # one name apart from case and separator
    out = tmp_path / "lib"
    argv = ["library", *ONE_STEP, "--classes", "4,5", "--out", str(out)]
    assert main(argv) == 0
    keys = ["Bird-1-4", "bird-1-5"]
    _assert_index_matches_files(out, keys)
    assert [load_class_token(out / f"{k}.safetensors").metadata["class_index"] for k in keys] == ["4", "5"]
    assert "2 done, 0 failed, 0 pending" in capsys.readouterr().out

    # A token trained under the old, shared name resumes as its own class's.
    (out / "Bird-1-4.safetensors").rename(out / "Bird-1.safetensors")
    _no_training(monkeypatch)
    assert main(argv) == 0
    by_class = _by_class(out)
    assert by_class["Bird-1-4"]["status"] == "done" and by_class["Bird-1-4"]["file"] == "Bird-1.safetensors"
    assert "Bird-1" not in by_class and _index(out)["counts"]["done"] == 2


def test_unusable_labels_fail_alone_and_unwritable_records_do_not_stop_the_run(tmp_path, monkeypatch, capsys):
    _labelled(monkeypatch, c6="..", c7="x" * 250, c8="鳥")
    out = tmp_path / "lib"
    out.mkdir()
    (out / ".failed").write_text("not a folder")  # no failure record can be written
    assert main(["library", *ONE_STEP, "--classes", "5-8", "--out", str(out)]) == 1
    captured = capsys.readouterr()
    by_class = _by_class(out)
    assert by_class["box"]["status"] == "done"
    failed = [e for e in _index(out)["classes"] if e["status"] == "failed"]
    assert [e["index"] for e in failed] == [6, 7, 8]
    assert "'..' gives no usable file name" in failed[0]["message"] and "too long" in failed[1]["message"]
    assert all("\n" not in e["message"] for e in failed)
    assert _index(out)["counts"] == {"done": 1, "failed": 3, "pending": 0}
    assert captured.err.count("warning: cannot write failure records") == 1
    assert "it is not a folder" in captured.err and "Traceback" not in captured.err
    assert (out / ".failed").read_text() == "not a folder"


def test_a_failure_record_that_is_a_folder_is_warned_about(lib, monkeypatch, capsys):
    (lib / "box.safetensors").unlink()
    (lib / ".failed" / "box.json").mkdir(parents=True)
    real = _box_fails(monkeypatch, "simulated crash")
    assert main(["library", *ONE_STEP, "--classes", "4,5", "--out", str(lib)]) == 1
    assert "simulated crash" in _by_class(lib)["box"]["message"]
    assert capsys.readouterr().err.count("warning:") == 1
    monkeypatch.setattr(library, "run_training", real)  # the next success cannot remove it either: a warning
    assert main(["library", *ONE_STEP, "--classes", "4,5", "--out", str(lib)]) == 0
    assert _by_class(lib)["box"]["status"] == "done"
    assert "cannot remove the failure record" in capsys.readouterr().err


def _retag(path, **changes):
    """Rewrite a token file with some of its dct.* metadata changed."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    meta.update({f"dct.{k}": v for k, v in changes.items()})
    save_file(load_file(str(path)), str(path), metadata=meta)


def test_a_token_that_is_not_this_classes_is_never_counted_done_nor_overwritten(lib, monkeypatch, capsys):
    ball = lib / "ball.safetensors"
    ball.write_bytes((lib / "box.safetensors").read_bytes())  # another class's token under ball's name
    before = ball.read_bytes()
    _no_training(monkeypatch)
    argv = ["library", *ONE_STEP, "--classes", "4,5", "--out", str(lib)]
    assert main(argv) == 1
    entry = _by_class(lib)["ball"]
    assert entry["status"] == "failed" and str(ball) in entry["message"]
    assert "class index '5', not 4" in entry["message"] and "class label 'box', not 'ball'" in entry["message"]
    assert "move it away" in entry["message"] and "\n" not in entry["message"]
    assert _by_class(lib)["box"]["status"] == "done" and ball.read_bytes() == before
    assert "ball: failed" in capsys.readouterr().err

    c = library.select_classes("4", _fake_classifier(["t0", "t1", "t2", "t3", "ball"]))[0]
    settings = library.LibrarySettings(config=None, base_model="world", classifier_name="world:guide")  # type: ignore
    (lib / "box.safetensors").replace(ball)
    _retag(ball, class_index="4", class_label="ball", base_model="sd15")  # another model's
    state = library.token_state(lib, c, settings)
    assert state.status == "foreign" and "base model 'sd15', not 'world'" in state.message
    _retag(ball, base_model="world", classifier="/models/other.pt")
    assert "classifier '/models/other.pt', not 'world:guide'" in library.token_state(lib, c, settings).message
    _retag(ball, classifier="world:guide", class_index="١")  # a non-ASCII digit is not an index
    assert "class index '١', not 4" in library.token_state(lib, c, settings).message
    _retag(ball, class_index="4")
    assert library.token_state(lib, c, settings).status == "done"
    ball.write_bytes(b"\x00" * 40)  # damaged
    assert "not a usable token" in library.token_state(lib, c, settings).message
    ball.unlink()
    ball.mkdir()
    assert "is a folder" in library.token_state(lib, c, settings).message

    # A run with another classifier finds none of the tokens its own.
    (lib / "box.safetensors").write_bytes(before)
    assert main(["library", "--model", "world", "--classifier", "world:held-out", "--batch-size", "2",
                 "--max-steps", "1", "--classes", "5", "--out", str(lib)]) == 1
    assert "classifier 'world:guide', not 'world:held-out'" in _by_class(lib)["box"]["message"]


def test_damaged_state_is_rebuilt_or_one_line(lib, monkeypatch, capsys):
    _no_training(monkeypatch)
    failed = lib / ".failed"
    failed.mkdir()
    (failed / "notjson.json").write_text("{ nope")
    (failed / "alist.json").write_text("[1, 2]")
    (failed / "folder.json").mkdir()
    (failed / "binary.json").write_bytes(b"\xff\xfe\x00")
    (failed / "strings.json").write_text(json.dumps({"class": "moon", "index": "١", "label": 7, "message": ["x"],
                                                     "seconds": "3.5"}))
    (failed / "nested.json").write_text("[" * 100_000)
    (lib / "index.json").write_text("[]")
    argv = ["library", *ONE_STEP, "--classes", "4,5", "--out", str(lib)]
    assert main(argv) == 1  # the hand-written record for moon says failed
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    index = _index(lib)
    assert index["counts"] == {"done": 2, "failed": 1, "pending": 0}
    moon = _by_class(lib)["moon"]
    assert moon["index"] is None and moon["label"] == "moon" and moon["message"] == "" and moon["seconds"] == 3.5
    assert "moon" in captured.out

    (lib / "index.json").unlink()
    (lib / "index.json").mkdir()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "index.json is a folder" in err and len(err.splitlines()) == 1


def test_a_class_locked_by_a_live_run_is_left_to_it(lib, monkeypatch, capsys):
    (lib / "box.safetensors").unlink()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        lock = lib / ".locks" / "box.lock"
        lock.parent.mkdir()
        lock.write_text(json.dumps({"pid": other.pid, "host": __import__("socket").gethostname(), "nonce": "n"}))
        _no_training(monkeypatch)
        argv = ["library", *ONE_STEP, "--classes", "4,5", "--out", str(lib)]
        assert main(argv) == 0
        captured = capsys.readouterr()
        assert f"running elsewhere: pid {other.pid}" in captured.out and "(1 running elsewhere)" in captured.out
        assert "box: running elsewhere" in captured.err
        entry = _by_class(lib)["box"]
        assert entry["status"] == "pending" and f"pid {other.pid}" in entry["running_elsewhere"]
        assert lock.exists()  # never taken from a live holder

        old = time.time() - library.locks.STALE_AFTER_S - 60  # a holder silent for hours is gone
        os.utime(lock, (old, old))
        monkeypatch.undo()
        assert main(argv) == 0
        assert _by_class(lib)["box"]["status"] == "done" and not lock.exists()
    finally:
        other.kill()
        other.wait()


def _race(path, barrier, results):
    from dct_core.formats import locks

    barrier.wait()
    got = locks.acquire(path)
    results.put(isinstance(got, locks.Lock))
    barrier.wait()  # hold it until every process has tried


def test_one_lock_holder_at_a_time_and_stale_locks_are_taken_over(tmp_path):
    import multiprocessing

    from dct_core.formats import locks

    path = tmp_path / "locks" / "c.lock"
    first = locks.acquire(path)
    assert isinstance(first, locks.Lock)
    again = locks.acquire(path)  # this process holds it: not free, but not someone else's either
    assert isinstance(again, locks.Holder) and again.ours and locks.holder(path) is None
    first.release()
    assert not path.exists()

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    ctx = multiprocessing.get_context("fork")
    for stale in (None, {"pid": dead.pid, "host": __import__("socket").gethostname(), "nonce": "x"}):
        if stale is not None:
            path.write_text(json.dumps(stale))  # a holder that died: taken over by exactly one
            assert locks.holder(path) is None
        barrier, results = ctx.Barrier(6), ctx.Queue()
        procs = [ctx.Process(target=_race, args=(path, barrier, results)) for _ in range(6)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        assert sorted(results.get(timeout=5) for _ in procs) == [False] * 5 + [True], stale
        path.unlink(missing_ok=True)  # the winner exited without releasing: as after a kill
    assert not [p for p in path.parent.iterdir() if p.name != "c.lock"]  # nothing left aside


def test_two_runs_on_one_folder_train_each_class_once(tmp_path):
    out = tmp_path / "lib"
    argv = [sys.executable, "-m", "dct_core", "library", *ONE_STEP, "--classes", "4-7", "--out", str(out)]
    runs = [subprocess.Popen(argv, env=_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    logs = [r.communicate(timeout=300) for r in runs]
    assert [r.returncode for r in runs] == [0, 0], [err[-2000:] for _, err in logs]
    keys = ["ball", "box", "ring", "cross"]
    trained = [line for _, err in logs for line in err.splitlines() if ": done (" in line]
    assert sorted(line.split(": done")[0].split()[-1] for line in trained) == sorted(keys), logs
    _assert_index_matches_files(out, keys)
