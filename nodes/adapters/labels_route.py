"""HTTP routes under the pack's own prefix (/dct/...), for the frontend's class picker.

GET /dct/labels?classifier=<choice>&kind=auto&timm_architecture=&labels=<labels file>&q=<text>&limit=200
-> {"total": N, "matched": M, "labels": [{"index": i, "name": ..., "synonyms": [...]}, ...]}
Errors are JSON {"error": "<one line>"} with 400 (bad input, including any file that cannot be read: malformed
labels, a bad sidecar, corrupt weights), 404 (unknown classifier or labels file), 413 (too big).

Files are read in a worker thread, never in the server's event loop. The names are cached (a small LRU,
bounded in entries and in names held) on exactly what decides them: the labels file and its mtime when one is
given; else the classifier file/folder, its mtime, and the architecture only for a plain weights file whose
head width it decides.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path

from safetensors import SafetensorError

from dct_core.classifiers.label_lookup import quick_labels
from dct_core.classifiers.labels import synonyms
from dct_core.errors import DCTError
from dct_core.registry import node_kind_source, node_kinds

from . import model_folders as folders

log = logging.getLogger(__name__)

PREFIX = "/dct"
MAX_LIMIT = 2000
MAX_PARAM = 512
MAX_MESSAGE = 400
CACHE_ENTRIES = 8  # distinct answers kept
CACHE_NAMES = 2_000_000  # label names kept across all entries (the newest entry is always kept)

# Raised by reading a user's files (parsing, decoding, a short or odd-shaped file): a 400 without a log line.
# Anything else raised while reading is a 400 too, and is logged with its traceback.
_EXPECTED = (DCTError, ValueError, OSError, KeyError, IndexError, TypeError, AttributeError, RecursionError,
             SafetensorError)


class RouteError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class NamesCache:
    """A thread-safe LRU of label-name tuples; one computation per key at a time (concurrent requests for the
    same key wait for the first instead of each reading the file); failures are not cached."""

    def __init__(self, entries: int = CACHE_ENTRIES, names: int = CACHE_NAMES):
        self.max_entries, self.max_names = entries, names
        self._data: OrderedDict[Hashable, tuple[str, ...]] = OrderedDict()
        self._pending: dict[Hashable, threading.Lock] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable, compute: Callable[[], list[str]]) -> tuple[str, ...]:
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key]
            pending = self._pending.setdefault(key, threading.Lock())
        with pending:
            try:
                with self._lock:
                    if key in self._data:
                        self._data.move_to_end(key)
                        return self._data[key]
                names = tuple(compute())
                with self._lock:
                    self._data[key] = names
                    self._evict()
                return names
            finally:
                with self._lock:
                    if self._pending.get(key) is pending:
                        del self._pending[key]

    def _evict(self) -> None:
        held = sum(len(v) for v in self._data.values())
        while len(self._data) > 1 and (len(self._data) > self.max_entries or held > self.max_names):
            _, names = self._data.popitem(last=False)
            held -= len(names)

    def keys(self) -> list[Hashable]:
        with self._lock:
            return list(self._data)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


_cache = NamesCache()


def _safe_choice(value: str, choices: list[str], what: str) -> str:
    if len(value) > MAX_PARAM:
        raise RouteError(413, f"{what} name is too long.")
    if not value or value.startswith(("/", "\\")) or ".." in Path(value).parts or ":" in value:
        raise RouteError(400, f"{what} {value!r} is not a name from the models/classifiers list.")
    if value not in choices:
        raise RouteError(404, f"unknown {what} {value!r}; pick one listed in models/classifiers.")
    return value


def _stamp(path: str) -> tuple[str, int, int]:
    """What identifies a file's content for the cache: its real path, mtime and size."""
    st = os.stat(path)
    return os.path.realpath(path), st.st_mtime_ns, st.st_size


def _cache_key(path: str, kind: str, architecture: str, labels_path: str) -> tuple:
    """Exactly what decides quick_labels' answer (stat calls only; run in the worker thread)."""
    if labels_path:
        return ("labels", *_stamp(labels_path))
    source = node_kind_source(kind)
    if source is not None and source.quick_labels_fixed:
        return ("fixed", kind)  # e.g. zero-shot CLIP: ImageNet's names, whatever the file
    if os.path.isdir(path):
        return ("folder", *_stamp(os.path.join(path, "config.json")))
    stamps = tuple(_stamp(p) if os.path.isfile(p) else None for p in folders.sidecars(path))
    # The architecture names the head whose width a .safetensors header gives; for another file only whether
    # one is given matters (none: a TorchScript file's sidecar is read; one: a 1000-class ImageNet head).
    arch = architecture if Path(path).suffix == ".safetensors" else bool(architecture)
    return ("file", *_stamp(path), stamps, arch)


def _one_line(exc: BaseException, source: str) -> str:
    """A readable one-line message naming ``source`` (e.g. "labels file 'x.json'"): the error's first line,
    without the server's folder paths."""
    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    try:
        import folder_paths

        roots = sorted({r for p in folder_paths.get_folder_paths("classifiers")
                        for r in (os.path.abspath(p), os.path.realpath(p))}, key=len, reverse=True)
    except Exception:  # noqa: BLE001 - no host: nothing to hide
        roots = []
    for root in roots:
        text = text.replace(root.rstrip(os.sep) + os.sep, "")
    if not isinstance(exc, DCTError):
        detail = text if isinstance(exc, (ValueError, OSError)) and text else f"{type(exc).__name__}: {text}"
        text = f"could not read the class names of {source}: {detail}".rstrip(": ")
    elif source.split(" ", 2)[-1].strip("'") not in text:
        text = f"{source}: {text}"
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def _read_names(path: str, kind: str, architecture: str, labels_path: str, source: str) -> tuple[str, ...]:
    def compute() -> list[str]:
        return quick_labels(path, kind=kind, architecture=architecture, labels=labels_path or None)

    try:
        return _cache.get(_cache_key(path, kind, architecture, labels_path), compute)
    except _EXPECTED as exc:
        raise RouteError(400, _one_line(exc, source)) from exc
    except Exception as exc:  # noqa: BLE001 - a user's file made the reader fail in a way we did not foresee
        log.exception("DCT /dct/labels: unexpected error reading %s", source)
        raise RouteError(400, _one_line(exc, source)) from exc


def labels_payload(params: dict) -> dict:
    """The route's logic, separate from aiohttp so it can be tested directly. Blocking (lists folders, reads
    files): the handler runs it in a worker thread."""
    choice = _safe_choice(params.get("classifier", ""), folders.classifier_choices(), "classifier")
    kind = params.get("kind", "auto")
    if kind not in node_kinds():
        raise RouteError(400, f"unknown kind {kind!r}.")
    architecture = params.get("timm_architecture", "")[:MAX_PARAM].strip()
    labels_name = labels_path = ""
    if params.get("labels"):
        labels_name = _safe_choice(params["labels"], folders.label_files(), "labels file")
    try:
        limit = int(params.get("limit", 200))
    except ValueError as exc:
        raise RouteError(400, "limit must be a number.") from exc
    if not 1 <= limit <= MAX_LIMIT:
        raise RouteError(413 if limit > MAX_LIMIT else 400, f"limit must be between 1 and {MAX_LIMIT}.")
    query = params.get("q", "")[:MAX_PARAM].strip().lower()
    try:
        path = folders.classifier_path(choice)
        if labels_name:
            labels_path = folders.label_path(labels_name)
    except ValueError as exc:  # gone (or relinked) since the listing
        raise RouteError(404, str(exc)) from exc
    source = f"labels file {labels_name!r}" if labels_name else f"classifier {choice!r}"
    names = _read_names(path, kind, architecture, labels_path, source)
    matched = _matches(names, query)
    return {"total": len(names), "matched": len(matched),
            "labels": [{"index": i, "name": names[i], "synonyms": synonyms(names[i])} for i in matched[:limit]]}


def _matches(names: tuple[str, ...], query: str) -> Sequence[int]:
    """Indices of the names containing ``query`` (lowercase), or whose index it is; all of them for no query."""
    if not query:
        return range(len(names))
    found = [i for i, n in enumerate(names) if query in n.lower()]
    if query.isascii() and query.isdigit() and str(int(query)) == query and int(query) < len(names):
        index = int(query)
        at = bisect.bisect_left(found, index)
        if at == len(found) or found[at] != index:
            found.insert(at, index)
    return found


async def labels_handler(request):
    from aiohttp import web

    try:
        payload = await asyncio.to_thread(labels_payload, dict(request.rel_url.query))
    except RouteError as exc:
        return web.json_response({"error": str(exc)}, status=exc.status)
    except Exception:  # noqa: BLE001 - a bug of ours: logged, and still a JSON answer without a traceback
        log.exception("DCT /dct/labels failed")
        return web.json_response({"error": "internal error listing labels; see the server log."}, status=500)
    return web.json_response(payload)


def register_routes() -> None:
    """Add the routes to the running server (no-op without one, e.g. in scripts and tests)."""
    try:
        from server import PromptServer
    except ImportError:
        return
    server = getattr(PromptServer, "instance", None)
    if server is None or getattr(server, "_dct_routes", False):
        return
    server.routes.get(f"{PREFIX}/labels")(labels_handler)
    server._dct_routes = True
