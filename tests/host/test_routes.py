"""GET /dct/labels in-process: the pack's own handler, registered by its register_routes on an aiohttp app the
way the host's PromptServer adds it, over the host's real folder_paths (a temp classifiers folder per test).

Bad files answer JSON 400 with a one-line message; reading runs off the event loop; the names cache is keyed
on what decides them and bounded; links out of the classifiers folders are neither listed nor served.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import os
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from .conftest import PACK_NAME

TINY = [f"tiny {i}, wee {i}" for i in range(10)]


@pytest.fixture
def dct(host, tmp_path, monkeypatch):
    import folder_paths
    from aiohttp import web
    from safetensors.torch import save_file

    root = tmp_path / "classifiers"
    root.mkdir()
    extensions = folder_paths.folder_names_and_paths["classifiers"][1]
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "classifiers", ([str(root)], extensions))
    routes = importlib.import_module(f"{PACK_NAME}.nodes.adapters.labels_route")
    folders = importlib.import_module(f"{PACK_NAME}.nodes.adapters.model_folders")
    if hasattr(routes, "_cache"):
        routes._cache.clear()
    stub = SimpleNamespace(routes=web.RouteTableDef())  # what register_routes needs of PromptServer.instance
    monkeypatch.setitem(sys.modules, "server", SimpleNamespace(PromptServer=SimpleNamespace(instance=stub)))
    routes.register_routes()
    save_file({"fc.weight": torch.zeros(10, 4)}, str(root / "tiny.safetensors"))  # test_resnet's head: 10 rows
    (root / "tiny-labels.txt").write_text("\n".join(TINY) + "\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    return SimpleNamespace(root=root, outside=outside, routes=routes, folders=folders, table=stub.routes)


def _serve(dct, fn):
    """Run ``await fn(client)`` against an app holding the registered routes."""
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    async def main():
        app = web.Application()
        app.add_routes(dct.table)
        async with TestClient(TestServer(app)) as client:
            return await fn(client)

    return asyncio.run(main())


async def _get(client, **params):
    response = await client.get("/dct/labels", params=params)
    text = await response.text()
    try:
        body = json.loads(text)
    except ValueError:
        body = {"not json": text}
    return response.status, body


def get(dct, **params):
    return _serve(dct, lambda client: _get(client, **params))


def _assert_400(status, body, *names, root=None):
    assert status == 400 and set(body) == {"error"}, (status, body)
    message = body["error"]
    assert message and "\n" not in message and "Traceback" not in message and len(message) <= 400, message
    for name in names:
        assert name in message, message
    if root is not None:
        assert str(root) not in message, message  # the server's folders are not shown


@pytest.mark.parametrize("name, content", [
    ("number.json", "5"), ("null.json", "null"), ("broken.json", "{not json"), ("keys.json", '{"a": "x"}'),
    ("latin1.txt", b"caf\xe9\n"), ("deep.json", "[" * 100_000 + "]" * 100_000),
])
def test_malformed_labels_file_is_a_400_with_a_one_line_message(dct, name, content):
    path = dct.root / name
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    status, body = get(dct, classifier="tiny.safetensors", labels=name)
    _assert_400(status, body, name, root=dct.root)


def _torchscript_like(path: Path) -> None:
    """A zip laid out as TorchScript saves (only its file list is ever read: the module is never loaded)."""
    import zipfile

    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{path.stem}/code/__torch__.py", "")
        z.writestr(f"{path.stem}/data.pkl", b"")


@pytest.mark.parametrize("sidecar", ["5", '{"labels": 5}', '{"labels": null}', "{oops",
                                     "[" * 100_000, b"\xff\xfe"])
def test_bad_torchscript_sidecar_is_a_400(dct, sidecar):
    _torchscript_like(dct.root / "scripted.pt")
    path = dct.root / "scripted.pt.json"
    path.write_bytes(sidecar) if isinstance(sidecar, bytes) else path.write_text(sidecar)
    _assert_400(*get(dct, classifier="scripted.pt"), "scripted.pt", root=dct.root)
    path.write_text('{"labels": ["a", "b"]}')
    status, body = get(dct, classifier="scripted.pt")
    assert status == 200 and body["total"] == 2  # a fixed sidecar is read again (the cache keys on it)


def test_corrupt_weights_and_model_configs_are_400s(dct):
    import struct

    good = (dct.root / "tiny.safetensors").read_bytes()
    (dct.root / "garbage.safetensors").write_bytes(b"garbage!garbage!garbage!")
    (dct.root / "truncated.safetensors").write_bytes(good[:40])
    (dct.root / "header.safetensors").write_bytes(struct.pack("<Q", 12) + b'{"a": 1}    ')
    for name in ("garbage.safetensors", "truncated.safetensors", "header.safetensors"):
        _assert_400(*get(dct, classifier=name, timm_architecture="test_resnet"), name, root=dct.root)
    for i, config in enumerate(['{"architecture": "test_resnet", "num_classes": "x"}', '{"id2label": 5}',
                                "[1, 2", '{"id2label": {"zero": "a"}}']):
        (dct.root / f"model{i}").mkdir()
        (dct.root / f"model{i}" / "config.json").write_text(config)
        _assert_400(*get(dct, classifier=f"model{i}/"), f"model{i}/", root=dct.root)


def test_any_error_while_reading_is_a_logged_400_and_a_bug_is_a_json_500(dct, monkeypatch, caplog):
    def boom(*args, **kwargs):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(dct.routes, "quick_labels", boom)
    with caplog.at_level(logging.ERROR):
        status, body = get(dct, classifier="tiny.safetensors")
    _assert_400(status, body, "tiny.safetensors", "boom")
    assert "second line" not in body["error"]
    assert any(r.exc_info and "boom" in str(r.exc_info[1]) for r in caplog.records)

    monkeypatch.setattr(dct.routes, "quick_labels", lambda *a, **k: ["a", "b"])
    monkeypatch.setattr(dct.routes, "synonyms", lambda name: 1 / 0)  # a bug of the route itself
    status, body = get(dct, classifier="tiny.safetensors")
    assert status == 500 and set(body) == {"error"} and "Traceback" not in body["error"]


def test_links_pointing_outside_are_neither_listed_nor_served(dct):
    root, outside, folders = dct.root, dct.outside, dct.folders
    (outside / "secret.txt").write_text("secret one\nsecret two\n")
    (outside / "w.safetensors").write_bytes((root / "tiny.safetensors").read_bytes())
    (outside / "side.json").write_text('{"labels": ["secret a"]}')
    (outside / "config.json").write_text('{"id2label": {"0": "secret b"}}')
    (root / "evil.txt").symlink_to(outside / "secret.txt")
    (root / "evil.safetensors").symlink_to(outside / "w.safetensors")
    (root / "linked").symlink_to(outside, target_is_directory=True)  # a whole folder linked out
    _torchscript_like(root / "scripted.pt")
    (root / "scripted.pt.json").symlink_to(outside / "side.json")  # a sidecar linked out
    _torchscript_like(root / "other.pt")
    (root / "other.json").symlink_to(outside / "side.json")  # the other sidecar name
    (root / "vit").mkdir()
    (root / "vit" / "config.json").symlink_to(outside / "config.json")  # a model folder's config linked out
    (root / "alias.txt").symlink_to(root / "tiny-labels.txt")  # a link inside: fine
    (root / "sub").mkdir()
    (root / "sub" / "same.safetensors").symlink_to(Path("..") / "tiny.safetensors")

    assert sorted(folders.label_files()) == ["alias.txt", "tiny-labels.txt"]
    assert sorted(folders.classifier_choices()) == ["sub/same.safetensors", "tiny.safetensors"]
    for name in ("evil.safetensors", "linked/w.safetensors", "scripted.pt", "other.pt", "vit/"):
        with pytest.raises(ValueError, match="outside"):
            folders.classifier_path(name)
    assert folders.classifier_path("sub/same.safetensors") == str(root / "sub" / "same.safetensors")

    for params in ({"classifier": "tiny.safetensors", "labels": "evil.txt"},
                   {"classifier": "tiny.safetensors", "labels": "linked/secret.txt"},
                   {"classifier": "evil.safetensors"}, {"classifier": "linked/w.safetensors"},
                   {"classifier": "scripted.pt"}, {"classifier": "other.pt"}, {"classifier": "vit/"}):
        status, body = get(dct, **params)
        assert status in (400, 404) and set(body) == {"error"} and not any(
            leaked in json.dumps(body) for leaked in ("secret one", "secret a", "secret b")), (params, body)
    status, body = get(dct, classifier="sub/same.safetensors", timm_architecture="test_resnet", labels="alias.txt")
    assert status == 200 and [x["name"] for x in body["labels"]] == TINY


def test_files_are_read_off_the_event_loop(dct, monkeypatch):
    threads = []
    real_read, real_list = dct.routes.quick_labels, dct.folders.classifier_choices

    def read(*args, **kwargs):
        threads.append(("read", threading.get_ident()))
        return real_read(*args, **kwargs)

    def listing():
        threads.append(("list", threading.get_ident()))
        return real_list()

    monkeypatch.setattr(dct.routes, "quick_labels", read)
    monkeypatch.setattr(dct.folders, "classifier_choices", listing)

    async def fn(client):
        return threading.get_ident(), await _get(client, classifier="tiny.safetensors", labels="tiny-labels.txt")

    loop_thread, (status, body) = _serve(dct, fn)
    assert status == 200 and body["total"] == 10
    assert {what for what, _ in threads} == {"read", "list"}
    assert loop_thread not in {ident for _, ident in threads}


def test_a_slow_read_does_not_hold_up_other_requests(dct, monkeypatch):
    started, release = threading.Event(), threading.Event()
    real = dct.routes.quick_labels

    def slow(*args, **kwargs):
        started.set()
        release.wait(3)  # without a worker thread this holds the loop: the cheap request below waits for it
        return real(*args, **kwargs)

    monkeypatch.setattr(dct.routes, "quick_labels", slow)

    async def fn(client):
        slow_request = asyncio.ensure_future(_get(client, classifier="tiny.safetensors", labels="tiny-labels.txt"))
        for _ in range(500):
            if started.is_set():
                break
            await asyncio.sleep(0.01)
        cheap = await asyncio.wait_for(_get(client, classifier="nope.safetensors"), 10)
        answered_while_reading = not release.is_set() and not slow_request.done()
        release.set()
        return cheap, answered_while_reading, await slow_request

    cheap, answered_while_reading, (status, body) = _serve(dct, fn)
    assert cheap[0] == 404 and answered_while_reading
    assert status == 200 and body["total"] == 10


def test_cache_is_keyed_on_what_decides_the_answer_and_bounded(dct, monkeypatch):
    calls = []
    real = dct.routes.quick_labels
    monkeypatch.setattr(dct.routes, "quick_labels", lambda *a, **k: calls.append(k) or real(*a, **k))
    architectures = ["test_resnet", "resnet50", "vit_base_patch16_224"] + [f"no_such_arch_{i}" for i in range(37)]

    async def many(client, **params):
        return [await _get(client, timm_architecture=arch, **params) for arch in architectures]

    # A labels file decides: 40 architectures are one read and one entry.
    answers = _serve(dct, lambda c: many(c, classifier="tiny.safetensors", labels="tiny-labels.txt", q="wee 3"))
    assert all(status == 200 and body["total"] == 10 and body["matched"] == 1 for status, body in answers)
    assert len(calls) == 1
    assert len(dct.routes._cache.keys()) == 1

    # A changed labels file is read again.
    (dct.root / "tiny-labels.txt").write_text("one\ntwo\n")
    stat = (dct.root / "tiny-labels.txt").stat()
    os.utime(dct.root / "tiny-labels.txt", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert get(dct, classifier="tiny.safetensors", labels="tiny-labels.txt", timm_architecture="x")[1]["total"] == 2

    # A plain .safetensors without labels: the architecture names the head; the cache stays bounded.
    answers = _serve(dct, lambda c: many(c, classifier="tiny.safetensors"))
    assert answers[0][1]["total"] == 10 and all(status == 200 for status, _ in answers)
    assert len(dct.routes._cache.keys()) <= dct.routes.CACHE_ENTRIES

    # Other files: the architecture does not matter.
    dct.routes._cache.clear()
    calls.clear()
    (dct.root / "plain.pt").write_bytes(b"x")
    answers = _serve(dct, lambda c: many(c, classifier="plain.pt"))
    assert all(status == 200 and body["total"] == 1000 for status, body in answers)
    assert len(calls) == 1 and len(dct.routes._cache.keys()) == 1


def test_names_cache_bounds_entries_and_names(dct):
    cache = dct.routes.NamesCache(entries=3, names=10)
    for i in range(5):
        cache.get(i, lambda: ["x"])
    assert cache.keys() == [2, 3, 4]
    cache.get("big", lambda: ["y"] * 9)
    assert cache.keys() == [4, "big"]  # 10 names at most
    cache.get("huge", lambda: ["z"] * 50)
    assert cache.keys() == ["huge"]  # the newest is kept whatever its size


def test_query_matches_names_or_an_index_in_order(dct):
    (dct.root / "many.txt").write_text("\n".join(["cat", "dog"] + [f"bird {i}" for i in range(2, 14)]) + "\n")
    status, body = get(dct, classifier="tiny.safetensors", labels="many.txt", q="cat 1")
    assert status == 200 and body["matched"] == 0
    status, body = get(dct, classifier="tiny.safetensors", labels="many.txt", q="01")
    assert status == 200 and body["matched"] == 0  # not index 1
    status, body = get(dct, classifier="tiny.safetensors", labels="many.txt", q="3")
    assert [x["index"] for x in body["labels"]] == [3, 13]  # index 3 ("bird 3") and "bird 13"
    status, body = get(dct, classifier="tiny.safetensors", labels="many.txt", q="1", limit=2)
    assert body["matched"] == 5 and [x["index"] for x in body["labels"]] == [1, 10]  # index 1 first
    status, body = get(dct, classifier="tiny.safetensors", labels="many.txt", limit=3)
    assert body["total"] == body["matched"] == 14 and [x["name"] for x in body["labels"]] == ["cat", "dog", "bird 2"]
