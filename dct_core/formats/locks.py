"""Lock files: at most one live holder per lock, across processes (and machines sharing a folder).

A lock is a small file created atomically with ``O_CREAT | O_EXCL`` that says who holds it (pid, host, a random
nonce, when). A lock whose holder is gone is stale and is taken over: its pid is not alive on this host, or it
is older than ``STALE_AFTER_S`` (the holder refreshes it with ``touch`` while it works, so age means silence),
or it never got its contents and is over a minute old. Taking over is safe against a race: one process at a time
breaks a stale lock (under a ``.break`` file of its own, taken with O_EXCL), and only if the file there is still the
very one judged stale (same inode and bytes); then every contender tries O_EXCL again and one wins.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from .files import pid_alive

STALE_AFTER_S = 2 * 3600.0  # no heartbeat for this long: the holder is gone (or on another host and silent)
UNWRITTEN_AFTER_S = 60.0  # a lock still empty after this long lost its writer between create and write
TOUCH_EVERY_S = 30.0
BREAKER_STALE_S = 30.0  # a breaker holds its file for two system calls: one this old was left by a killed process
_HELD: set[str] = set()  # nonces of the locks this process holds (its pid is alive, but an old lock may share it)


@dataclass(frozen=True)
class Holder:
    """Who holds a lock, as its file says; ``stale`` when that holder is gone."""

    path: Path
    pid: int | None
    host: str
    since: float  # the file's modification time: when it was taken or last touched
    stale: bool
    ours: bool = False  # held by this process

    def describe(self) -> str:
        who = f"pid {self.pid}" if self.pid is not None else "another process"
        where = f" on {self.host}" if self.host and self.host != _host() else ""
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(self.since))
        return f"{who}{where}, lock {self.path.name} touched {when}"


class Lock:
    """A lock this process holds; ``touch`` while working (rate-limited), ``release`` when done."""

    def __init__(self, path: Path, nonce: str) -> None:
        self.path, self.nonce = path, nonce
        self._touched = time.monotonic()
        _HELD.add(nonce)

    def touch(self) -> None:
        if time.monotonic() - self._touched < TOUCH_EVERY_S:
            return
        self._touched = time.monotonic()
        try:
            os.utime(self.path)
        except OSError:
            pass

    def release(self) -> None:
        """Remove the file if it is still this lock (never another holder's)."""
        _HELD.discard(self.nonce)
        try:
            if self.nonce.encode() in self.path.read_bytes():
                self.path.unlink()
        except OSError:
            pass

    def __enter__(self) -> Lock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _host() -> str:
    try:
        return socket.gethostname()
    except OSError:
        return ""


@dataclass(frozen=True)
class _Seen:
    data: bytes
    ident: tuple[int, int]  # (device, inode)
    mtime: float


def _read(path: Path) -> _Seen | None:
    """The lock file's bytes and identity, or None when it is gone."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        st = os.fstat(fd)
        data = os.read(fd, 4096)
    finally:
        os.close(fd)
    return _Seen(data, (st.st_dev, st.st_ino), st.st_mtime)


def _holder(path: Path, seen: _Seen, stale_after_s: float) -> Holder:
    try:
        info = json.loads(seen.data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        info = None
    if not isinstance(info, dict):
        info = None
    pid = info.get("pid") if info else None
    pid = pid if isinstance(pid, int) and not isinstance(pid, bool) and pid > 0 else None
    host = info.get("host") if info and isinstance(info.get("host"), str) else ""
    nonce = info.get("nonce") if info else None
    age = time.time() - seen.mtime
    if age > stale_after_s:
        stale = True
    elif pid is None:
        stale = age > UNWRITTEN_AFTER_S  # no (readable) owner: a writer killed between create and write
    elif host != _host():
        stale = False  # a pid on another machine means nothing here: only age tells
    elif pid == os.getpid():
        stale = nonce not in _HELD  # this process's pid, from an earlier process that had the same one
    else:
        stale = not pid_alive(pid)
    ours = pid == os.getpid() and host == _host() and nonce in _HELD
    return Holder(path, pid, host, seen.mtime, stale, ours)


def holder(path: str | os.PathLike, stale_after_s: float = STALE_AFTER_S) -> Holder | None:
    """The live holder of a lock other than this process, or None (no lock, a stale one, one this process
    holds, or one that cannot be read)."""
    try:
        seen = _read(Path(path))
    except OSError:
        return None
    if seen is None:
        return None
    found = _holder(Path(path), seen, stale_after_s)
    return None if found.stale or found.ours else found


def acquire(path: str | os.PathLike, stale_after_s: float = STALE_AFTER_S, attempts: int = 50) -> Lock | Holder:
    """Take the lock (a Lock), or say who holds it (a Holder). OSError when the folder cannot hold locks."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    found: Holder | None = None
    for _ in range(attempts):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileNotFoundError:  # the folder was removed meanwhile (emptied by a run that ended)
            path.parent.mkdir(parents=True, exist_ok=True)
            continue
        except FileExistsError:
            seen = _read(path)
            if seen is None:
                continue  # released meanwhile
            found = _holder(path, seen, stale_after_s)
            if not found.stale:
                return found
            _break(path, seen)
            continue
        nonce = secrets.token_hex(8)
        record = {"pid": os.getpid(), "host": _host(), "nonce": nonce, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
        try:
            os.write(fd, json.dumps(record).encode())
        finally:
            os.close(fd)
        return Lock(path, nonce)
    # Several others broke and took it in turn while we tried: one of them holds it now.
    return found if found is not None and not found.stale else Holder(path, None, "", time.time(), False)


def _break(path: Path, seen: _Seen) -> None:
    """Remove a lock judged stale, if the file there is still the one judged. One breaker at a time (its own
    O_EXCL file), so that a fresh lock taken meanwhile is never removed; a breaker left by a killed process is
    removed once old."""
    breaker = path.with_name(f"{path.name}.break")
    try:
        os.close(os.open(breaker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        try:
            if time.time() - os.stat(breaker).st_mtime > BREAKER_STALE_S:
                os.unlink(breaker)
        except OSError:
            pass
        time.sleep(0.02)  # another process is breaking it: let it finish
        return
    try:
        now = _read(path)
        if now is not None and now.ident == seen.ident and now.data == seen.data:
            os.unlink(path)
    finally:
        try:
            os.unlink(breaker)
        except FileNotFoundError:
            pass
