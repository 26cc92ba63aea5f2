"""HTTP routes under the pack's own prefix (/dct/...), for the frontend's class picker.

GET /dct/labels?classifier=<choice>&kind=auto&timm_architecture=&labels=<labels file>&q=<text>&limit=200
-> {"total": N, "matched": M, "labels": [{"index": i, "name": ..., "synonyms": [...]}, ...]}
Errors are JSON {"error": "..."} with 400 (bad input), 404 (unknown classifier or labels file), 413 (too big).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from dct_core.classifiers.label_lookup import quick_labels
from dct_core.classifiers.labels import synonyms
from dct_core.errors import DCTError

from . import folders

PREFIX = "/dct"
MAX_LIMIT = 2000
MAX_PARAM = 512


class RouteError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _safe_choice(value: str, choices: list[str], what: str) -> str:
    if len(value) > MAX_PARAM:
        raise RouteError(413, f"{what} name is too long.")
    if not value or value.startswith(("/", "\\")) or ".." in Path(value).parts or ":" in value:
        raise RouteError(400, f"{what} {value!r} is not a name from the models/classifiers list.")
    if value not in choices:
        raise RouteError(404, f"unknown {what} {value!r}; pick one listed in models/classifiers.")
    return value


@lru_cache(maxsize=32)
def _labels_cached(path: str, mtime: float, kind: str, architecture: str, labels_path: str) -> tuple[str, ...]:
    return tuple(quick_labels(path, kind=kind, architecture=architecture, labels=labels_path or None))


def labels_payload(params: dict) -> dict:
    """The route's logic, separate from aiohttp so it can be tested directly."""
    import folder_paths

    choice = _safe_choice(params.get("classifier", ""), folders.classifier_choices(), "classifier")
    kind = params.get("kind", "auto")
    if kind not in ("auto", "zero-shot CLIP"):
        raise RouteError(400, f"unknown kind {kind!r}.")
    architecture = params.get("timm_architecture", "")[:MAX_PARAM]
    labels_path = ""
    if params.get("labels"):
        name = _safe_choice(params["labels"], folders.label_files(), "labels file")
        labels_path = folder_paths.get_full_path("classifiers", name) or ""
    try:
        limit = int(params.get("limit", 200))
    except ValueError as exc:
        raise RouteError(400, "limit must be a number.") from exc
    if not 1 <= limit <= MAX_LIMIT:
        raise RouteError(413 if limit > MAX_LIMIT else 400, f"limit must be between 1 and {MAX_LIMIT}.")
    query = params.get("q", "")[:MAX_PARAM].strip().lower()
    path = folders.classifier_path(choice)
    try:
        names = _labels_cached(path, os.path.getmtime(path), kind, architecture, labels_path)
    except (DCTError, ValueError, OSError) as exc:
        raise RouteError(400, str(exc)) from exc
    matched = [(i, n) for i, n in enumerate(names)
               if not query or query in n.lower() or query == str(i)]
    return {"total": len(names), "matched": len(matched),
            "labels": [{"index": i, "name": n, "synonyms": synonyms(n)} for i, n in matched[:limit]]}


def register_routes() -> None:
    """Add the routes to the running server (no-op without one, e.g. in scripts and tests)."""
    try:
        from aiohttp import web
        from server import PromptServer
    except ImportError:
        return
    server = getattr(PromptServer, "instance", None)
    if server is None or getattr(server, "_dct_routes", False):
        return

    @server.routes.get(f"{PREFIX}/labels")
    async def labels(request):
        try:
            return web.json_response(labels_payload(dict(request.rel_url.query)))
        except RouteError as exc:
            return web.json_response({"error": str(exc)}, status=exc.status)

    server._dct_routes = True
