"""The one file writer: a temp file in the target folder, fsync, then publish it under the final name.

- The file mode comes from the umask as for any new file (the temp is created with 0o666 and the kernel applies
  the umask); the process-wide umask is never read or changed (other threads of the host may be creating files).
- Without overwrite the temp is published with ``os.link``, which fails if the target exists, so of two writers
  racing on one name exactly one wins. File systems without hard links get an O_EXCL placeholder that is then
  replaced: still one winner, but readers may briefly see an empty file under the final name.
- Temps are named ``.<name>.<pid>.<random>.dct-tmp`` (hidden, never a token suffix); a writer killed mid-save
  leaves one behind, and the next write into that folder removes those whose process is gone.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import DCTError

TEMP_SUFFIX = ".dct-tmp"
_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}" + re.escape(TEMP_SUFFIX) + "$")
# errno values meaning "this file system has no hard links" (FAT/exFAT, some FUSE and SMB mounts).
_NO_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL}
# A temp on a network folder may belong to a live writer on another machine, whose pid means nothing here.
STALE_AFTER_S = 60.0

Writer = Callable[[Path], object]


def temp_name(name: str, pid: int | None = None) -> str:
    """The temp file name a writer of ``name`` uses (the random part is 8 hex digits)."""
    return f".{name}.{os.getpid() if pid is None else pid}.{secrets.token_hex(4)}{TEMP_SUFFIX}"


def atomic_write(
    path: str | os.PathLike, data: bytes | Writer, *, overwrite: bool = True, exists_hint: str = "choose another name"
) -> Path:
    """Write ``data`` (bytes, or a callback that writes the file at the temp path it is given) to ``path``.

    Without ``overwrite`` an existing target raises DCTError ending with ``exists_hint``; OSError passes through.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent)
    tmp = _create_temp(path)
    try:
        _fill(tmp, data)
        _publish(tmp, path, overwrite, exists_hint)
    finally:
        _unlink_quietly(tmp)
    _sync_folder(path.parent)
    return path


def probe_writable(folder: str | os.PathLike) -> None:
    """Create and remove a temp file of our pattern in ``folder``; OSError if that cannot be done."""
    tmp = _create_temp(Path(folder) / "probe")
    _unlink_quietly(tmp)


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Remove temps of our pattern left by writers that no longer run; everything else is left alone."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(os.fspath(folder)))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP_RE.match(entry.name)
        if match and _is_stale(entry, int(match["pid"])):
            _unlink_quietly(Path(entry.path))
            removed.append(Path(entry.path))
    return removed


def _is_stale(entry: os.DirEntry, pid: int) -> bool:
    try:
        old = time.time() - entry.stat(follow_symlinks=False).st_mtime > STALE_AFTER_S
    except OSError:
        return False
    return old and entry.is_file(follow_symlinks=False) and not pid_alive(pid)


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if os.name == "nt":  # os.kill(pid, 0) would send CTRL_C_EVENT there; keep every temp
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, under another user
        return True
    return True


def _create_temp(path: Path) -> Path:
    while True:
        tmp = path.with_name(temp_name(path.name))
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # the kernel applies the umask
            return tmp
        except FileExistsError:
            continue


def _fill(tmp: Path, data: bytes | Writer) -> None:
    if callable(data):
        mode = os.stat(tmp).st_mode & 0o7777
        data(tmp)
        if os.stat(tmp).st_mode & 0o7777 != mode:  # the writer replaced the file (safetensors makes it 0600)
            os.chmod(tmp, mode)
    else:
        with open(tmp, "wb") as f:
            f.write(data)
    fd = os.open(tmp, os.O_RDWR)  # Windows cannot fsync a read-only handle
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(tmp: Path, path: Path, overwrite: bool, exists_hint: str) -> None:
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise DCTError(f"{path} already exists; {exists_hint}.") from None
    except OSError as exc:
        if exc.errno not in _NO_LINKS:
            raise
        _publish_without_links(tmp, path, exists_hint)


def _publish_without_links(tmp: Path, path: Path, exists_hint: str) -> None:
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # claims the name
    except FileExistsError:
        raise DCTError(f"{path} already exists; {exists_hint}.") from None
    try:
        os.replace(tmp, path)
    except OSError:
        _unlink_quietly(path)
        raise


def _sync_folder(folder: Path) -> None:
    """Make the new name itself durable; not possible (nor needed) everywhere, so best effort."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
