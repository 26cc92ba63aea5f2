import errno
import os
import re
import subprocess
import sys
import threading
import time

import pytest

import dct_core.formats.files as files
from dct_core.errors import DCTError
from dct_core.formats.files import TEMP_SUFFIX, atomic_write, probe_writable, remove_stale_temps, temp_name

TEMP_RE = re.compile(r"^\.t\.bin\.\d+\.[0-9a-f]{8}\.dct-tmp$")


@pytest.fixture
def umask_022(monkeypatch):
    """umask 022 for the test; calling os.umask meanwhile fails it (it is process-wide: threads race on it)."""
    old = os.umask(0o022)

    def forbidden(*_args):
        raise AssertionError("os.umask must not be called")

    monkeypatch.setattr(os, "umask", forbidden)
    yield
    monkeypatch.undo()
    os.umask(old)


def test_bytes_and_callback_writes_get_the_mode_the_umask_gives(tmp_path, umask_022):
    a = atomic_write(tmp_path / "a.json", b"{}")
    b = atomic_write(tmp_path / "b.bin", lambda tmp: tmp.write_bytes(b"x" * 10))
    assert a.read_bytes() == b"{}" and b.read_bytes() == b"x" * 10
    assert oct(a.stat().st_mode & 0o777) == oct(b.stat().st_mode & 0o777) == "0o644"
    assert sorted(os.listdir(tmp_path)) == ["a.json", "b.bin"]


def test_temps_are_hidden_carry_the_pid_and_never_look_like_tokens(tmp_path):
    seen = []
    atomic_write(tmp_path / "t.bin", lambda tmp: seen.append(tmp.name) or tmp.write_bytes(b"1"))
    (name,) = seen
    assert TEMP_RE.match(name) and f".{os.getpid()}." in name and name.endswith(TEMP_SUFFIX)
    assert not name.endswith((".safetensors", ".pt", ".bin"))
    assert os.listdir(tmp_path) == ["t.bin"]


def test_a_failing_callback_leaves_nothing(tmp_path):
    def broken(tmp):
        tmp.write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        atomic_write(tmp_path / "t.bin", broken)
    assert os.listdir(tmp_path) == []


def test_without_overwrite_an_existing_file_is_kept_and_named_with_the_hint(tmp_path):
    atomic_write(tmp_path / "t.bin", b"old")
    with pytest.raises(DCTError, match=r"t\.bin already exists; pick another\.$"):
        atomic_write(tmp_path / "t.bin", b"new", overwrite=False, exists_hint="pick another")
    assert (tmp_path / "t.bin").read_bytes() == b"old"
    atomic_write(tmp_path / "t.bin", b"new")  # overwrite is the default for plain files
    assert (tmp_path / "t.bin").read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["t.bin"]


def _race(target, writers: int) -> tuple[list[bytes], list[BaseException]]:
    """Writers whose temps are all complete before any publishes (the window a check-then-replace loses)."""
    barrier = threading.Barrier(writers)
    won, lost = [], []

    def write(i):
        content = f"writer {i} ".encode() * 1000

        def fill(tmp):
            tmp.write_bytes(content)
            barrier.wait(timeout=10)

        try:
            atomic_write(target, fill, overwrite=False)
            won.append(content)
        except DCTError as exc:
            lost.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return won, lost


@pytest.mark.parametrize("links", [True, False])
def test_racing_writers_without_overwrite_have_exactly_one_winner(tmp_path, monkeypatch, links):
    if not links:  # a file system without hard links: the O_EXCL placeholder path
        def no_link(*_args):
            raise OSError(errno.EPERM, "Operation not permitted")

        monkeypatch.setattr(files.os, "link", no_link)
    target = tmp_path / "t.bin"
    won, lost = _race(target, 6)
    assert len(won) == 1 and len(lost) == 5
    assert all("already exists" in str(exc) for exc in lost)
    assert target.read_bytes() == won[0]
    assert os.listdir(tmp_path) == ["t.bin"]


def test_other_link_errors_are_not_mistaken_for_missing_hard_links(tmp_path, monkeypatch):
    def full(*_args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "link", full)
    with pytest.raises(OSError, match="No space"):
        atomic_write(tmp_path / "t.bin", b"x", overwrite=False)
    assert os.listdir(tmp_path) == []


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temps_of_dead_writers_are_removed_and_nothing_else(tmp_path):
    old = time.time() - 3600
    dead = tmp_path / temp_name("t.safetensors", pid=_dead_pid())
    live = tmp_path / temp_name("t.safetensors", pid=os.getppid())
    young = tmp_path / temp_name("u.safetensors", pid=_dead_pid())  # may be a live writer on another machine
    foreign = [tmp_path / ".t.safetensors.abc123.tmp", tmp_path / "notes.dct-tmp", tmp_path / "keep.safetensors"]
    for path in (dead, live, young, *foreign):
        path.write_bytes(b"partial")
        if path is not young:
            os.utime(path, (old, old))
    atomic_write(tmp_path / "new.bin", b"x")  # the next write into the folder cleans up
    assert not dead.exists()
    assert live.exists() and young.exists() and all(p.exists() for p in foreign)
    assert remove_stale_temps(tmp_path) == []


def test_probe_writable_leaves_nothing_and_fails_like_a_write(tmp_path):
    probe_writable(tmp_path)
    assert os.listdir(tmp_path) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError):
        probe_writable(tmp_path / "file")
