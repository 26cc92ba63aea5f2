"""HTTP API for headless use: train a token, follow it, interrupt it, search a classifier's labels.

POST /dct/v1/train      {"classifier", "target_class", "timm_architecture", "labels", "steps", "save_name",
                         "overwrite", "recipe", "options": {setting: value}} -> when done: the token file, steps,
                         accuracy, before/after (PNG, base64)
GET  /dct/v1/status     progress, loss, accuracy, best so far
POST /dct/v1/interrupt  stop at the next step, keeping the best token
GET  /dct/v1/labels     ?classifier=&timm_architecture=&labels=&q=&limit= -> the class names (no classifier:
                        the classifiers and labels files on offer)

Mounted like the webui's own API (with ``--api`` or ``--nowebui``) and behind its ``--api-auth``. Errors are JSON
{"error": "<one line>"}: 400 bad input, 409 a training already runs, 501 a webui the extension cannot drive.
"""

from __future__ import annotations

from collections.abc import Callable
from secrets import compare_digest
from typing import Any

from dct_core.errors import DCTError

from . import classifiers, host
from .jobs import TRAINER, Busy, Trainer, TrainRequest

PREFIX = "/dct/v1"
MAX_LIMIT = 2000


def credentials(api_auth: str | None) -> dict[str, str]:
    """``--api-auth user:pass,user2:pass2`` as the webui reads it (a password may hold ':')."""
    out = {}
    for pair in (api_auth or "").split(","):
        if ":" in pair:
            user, password = pair.split(":", 1)
            out[user] = password
    return out


def _error(status: int, message: str):
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": message}, status_code=status)


def _guarded(call: Callable[[], Any]):
    try:
        return call()
    except Busy as exc:
        return _error(409, str(exc))
    except host.HostMismatch as exc:
        return _error(501, str(exc))
    except DCTError as exc:
        return _error(400, str(exc))


def mount(app: Any, api_auth: str | None = None, trainer: Trainer = TRAINER) -> None:
    """Add the routes to the webui's FastAPI ``app`` (behind basic auth when ``api_auth`` is set)."""
    from fastapi import Body, Depends, HTTPException
    from fastapi.security import HTTPBasic, HTTPBasicCredentials

    users = credentials(api_auth)

    def auth(given: HTTPBasicCredentials = Depends(HTTPBasic())) -> bool:
        if given.username in users and compare_digest(given.password, users[given.username]):
            return True
        raise HTTPException(status_code=401, detail="Incorrect username or password",
                            headers={"WWW-Authenticate": "Basic"})

    dependencies = [Depends(auth)] if users else []

    def train(body: Any = Body(...)):
        def run():
            result = trainer.run(TrainRequest.from_json(body))
            return {k: v for k, v in result.items() if not k.startswith("_")}
        return _guarded(run)

    def status():
        return {"running": trainer.busy(), **trainer.status.as_json()}

    def interrupt():
        return {"interrupted": trainer.interrupt()}

    def labels(classifier: str = "", timm_architecture: str = "", labels: str = "", q: str = "", limit: int = 200):
        def answer():
            if not classifier:
                return {"classifiers": classifiers.choices(), "label_files": classifiers.label_choices()}
            names = classifiers.labels_for(classifier, timm_architecture, labels)
            found = search(names, q)
            return {"total": len(names), "matched": len(found),
                    "default_labels": classifiers.default_labels(classifier),
                    "labels": [{"index": i, "name": names[i]} for i in found[:max(1, min(limit, MAX_LIMIT))]]}
        return _guarded(answer)

    app.add_api_route(f"{PREFIX}/train", train, methods=["POST"], dependencies=dependencies)
    app.add_api_route(f"{PREFIX}/status", status, methods=["GET"], dependencies=dependencies)
    app.add_api_route(f"{PREFIX}/interrupt", interrupt, methods=["POST"], dependencies=dependencies)
    app.add_api_route(f"{PREFIX}/labels", labels, methods=["GET"], dependencies=dependencies)


def search(names: list[str], query: str) -> list[int]:
    """Indices of the names holding every word of ``query`` (any case); names starting with it first."""
    words = query.lower().split()
    hits = [i for i, n in enumerate(names) if all(w in n.lower() for w in words)]
    q = query.lower().strip()
    return sorted(hits, key=lambda i: (not names[i].lower().startswith(q), i)) if q else hits


def on_app_started(demo: Any, app: Any) -> None:
    """The webui's app-started callback: mount where the webui mounts its own API (``--api``, ``--nowebui``)."""
    opts = getattr(host.require("shared"), "cmd_opts", None)
    if opts is None or not (getattr(opts, "api", False) or getattr(opts, "nowebui", False)):
        return
    mount(app, getattr(opts, "api_auth", None))
