"""The pack's frontend in a real browser (headless Chromium via Playwright, the system browser) against the
real ComfyUI server: extension loads cleanly, nodes listed under the pack's category, help pages served where
the frontends ask for them, the class picker lists and filters a tiny classifier's labels and closes on its
button, Escape and an outside click, a misspelled class is flagged before queueing with the close names to pick
from, and a short training run draws its live chart, shows its result text (and the classifier's), refreshes the
token lists with the saved token; a second run, cancelled, clears the stale images and says which step's token it
saved where; chart and texts survive a page reload. On the newer frontend the side panel shows neither the
pack's button nor its chart / text boxes as inputs, and its Info tab shows the help page.

Each check runs on three frontends (the `page` fixture's parameters):
- host-canvas:   the host's own bundled frontend (comfyui-frontend-package as its requirements.txt pins it);
- <v>-canvas:    comfyui-frontend-package FRONTEND_VERSION (what users run in 2026), classic LiteGraph canvas;
- <v>-vue:       the same frontend with the Vue node renderer ("Nodes 2.0", setting Comfy.VueNodes.Enabled).
The newer frontend is served by a second server (--front-end-root); it is found through $DCT_FRONTEND_ROOT
(its `static` folder), else .ci-frontend/<v>/ (.ci/run installs it there), and skipped when absent.
Screenshots are kept in test-artifacts/, one per frontend/renderer."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
FRONTEND_VERSION = "1.58.1"
# Noise this offline machine shows with or without the pack (fresh user folder, no internet, frontend bugs).
# The newer frontend also asks the 0.3.x host for its newer Jobs API (/api/jobs: 404, "JobsApiError").
BASELINE_NOISE = ("404", "api.comfy.org", "ERR_NAME_NOT_RESOLVED", "apple-mobile-web-app-capable",
                  "reading 'id'", "Failed to load resource", "favicon", "JobsApiError")
PACK_URL = "discriminative-class-tokens"  # the pack's folder in custom_nodes: its web files' URLs hold it
TRAIN_NODE = "DCTTrainToken"  # the simple Train node, with a DCT Training Options node for the small settings
NODE_IDS = ["DCTLoadClassifier", TRAIN_NODE, "DCTTrainingOptions", "DCTApplyClassToken", "DCTClassTokenClip",
            "DCTLoadClassToken", "DCTSaveClassToken", "DCTAdaptiveClassGuidance", "DCTTrainClassToken"]

BUILD_GRAPH = """() => {
  app.graph.clear();
  const add = (type, x, y) => { const n = LiteGraph.createNode(type); n.pos = [x, y]; app.graph.add(n); return n; };
  const set = (n, name, v) => { n.widgets.find(w => w.name === name).value = v; };
  const ckpt = add('CheckpointLoaderSimple', 0, 0);
  set(ckpt, 'ckpt_name', 'tiny_sd15_random.safetensors');
  const clf = add('DCTLoadClassifier', 0, 300);
  set(clf, 'classifier', 'tiny-resnet.safetensors'); set(clf, 'timm_architecture', 'test_resnet');
  set(clf, 'labels', 'tiny-labels.txt');
  const train = add('{TRAIN_NODE}', 400, 0);
  ckpt.connect(0, train, 0); ckpt.connect(1, train, 1); ckpt.connect(2, train, 2); clf.connect(0, train, 3);
  for (const [k, v] of Object.entries({max_steps: 2, save_name: 'browser-token', overwrite: true, recipe: 'paper'}))
    set(train, k, v);
  const opts = add('DCTTrainingOptions', 0, 600);
  const o = {batch_size: 1, sampling_steps: 1, resolution: 64, lr: 0.05, accuracy_threshold: 1.0,
             templates: 'A photo of {token} {label}'};
  for (const [k, v] of Object.entries(o)) set(opts, k, v);
  opts.connect(0, train, train.findInputSlot('options'));
  const preview = add('PreviewImage', 900, 0);
  train.connect(1, preview, 0);
  app.canvas.setDirty(true, true);
  return train.id;
}""".replace("{TRAIN_NODE}", TRAIN_NODE)
# How many orange (accuracy line) pixels the Train node's chart canvas holds: it is a real <canvas> element
# in every renderer (a DOM widget), so its pixels can be read in the Vue renderer too.
CHART_PIXELS = """id => {
    const c = app.graph.getNodeById(id).__dctCanvas;
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let coloured = 0;
    for (let i = 0; i < d.length; i += 4) if (d[i] > 200 && d[i + 1] > 100 && d[i + 2] < 120) coloured++;
    const r = c.getBoundingClientRect();
    return {coloured, width: c.width, attached: c.isConnected, shown: r.width > 0 && r.height > 0};
}"""
FIND_TRAIN = f"() => app.graph._nodes.find(n => n.comfyClass === '{TRAIN_NODE}')?.id ?? null"
READY = "() => window.app && window.graph && window.app.vueAppReady"


def frontend_root() -> Path | None:
    """The static folder of comfyui-frontend-package FRONTEND_VERSION, when installed where tests look."""
    env = os.environ.get("DCT_FRONTEND_ROOT")
    path = Path(env) if env else REPO / ".ci-frontend" / FRONTEND_VERSION / "comfyui_frontend_package" / "static"
    return path if (path / "index.html").is_file() else None


@pytest.fixture(scope="module")
def server_new_frontend(request, tmp_path_factory):
    """A second real ComfyUI server (same host, same pack, same tiny models) serving frontend FRONTEND_VERSION."""
    root = frontend_root()
    if root is None:
        pytest.skip(f"comfyui-frontend-package {FRONTEND_VERSION} not found (set DCT_FRONTEND_ROOT to its static "
                    f"folder, or pip install --no-deps --target .ci-frontend/{FRONTEND_VERSION} "
                    f"comfyui-frontend-package=={FRONTEND_VERSION}): its browser tests skipped")
    from .server import ComfyServer

    server = request.getfixturevalue("server")  # the session's server: its host and its tiny models
    srv = ComfyServer(server.root, tmp_path_factory.mktemp("comfy-base-frontend"), front_end_root=root)
    for f in (server.models / "checkpoints").iterdir():
        (srv.models / "checkpoints" / f.name).symlink_to(f.resolve())
    for f in (server.models / "classifiers").iterdir():  # copied: the pack refuses links out of its folder
        shutil.copy2(f, srv.models / "classifiers" / f.name)
    srv.start()
    yield srv
    srv.stop()


def _set_setting(srv, key: str, value) -> None:
    req = urllib.request.Request(f"{srv.url}/settings/{key}", data=json.dumps(value).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 200


@pytest.fixture(scope="module", params=["host-canvas", f"{FRONTEND_VERSION}-canvas", f"{FRONTEND_VERSION}-vue"])
def page(request):
    """A browser page on one frontend/renderer; .dct_server, .dct_renderer ('canvas' | 'vue'), .dct_errors."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed: browser tests skipped")
    if not Path(CHROMIUM).exists():
        pytest.skip("no system Chromium (apt-get install chromium): browser tests skipped")
    kind, renderer = request.param.rsplit("-", 1)
    srv = request.getfixturevalue("server" if kind == "host" else "server_new_frontend")
    # no first-run templates dialog: it is modal and, when it opens late on a busy machine, traps the focus
    _set_setting(srv, "Comfy.TutorialCompleted", True)
    if kind != "host":  # the renderer is a user setting, read when the page loads
        _set_setting(srv, "Comfy.VueNodes.Enabled", renderer == "vue")
    errors: list[str] = []

    responses: list[tuple[int, str]] = []

    def on_response(r):  # the pack's own files and routes must never fail
        if PACK_URL in r.url or "/dct/" in r.url:
            responses.append((r.status, r.url))
        if r.status >= 400 and (PACK_URL in r.url or "/dct/" in r.url):
            errors.append(f"HTTP {r.status} {r.url}")

    with sync_api.sync_playwright() as pw, tempfile.TemporaryDirectory(prefix="dct-browser-") as profile:
        ctx = pw.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True, args=ARGS,
                                                    viewport={"width": 1400, "height": 900})
        pg = ctx.pages[0] if ctx.pages else ctx.new_page()
        pg.on("console", lambda m: errors.append(f"{m.text} @ {m.location.get('url', '')}")
              if m.type == "error" else None)
        pg.on("pageerror", lambda e: errors.append(f"{e} {e.stack or ''}"))
        pg.on("response", on_response)
        pg.goto(srv.url + "/", wait_until="domcontentloaded")
        pg.wait_for_function(READY, timeout=90_000)
        pg.keyboard.press("Escape")
        pg.dct_errors, pg.dct_server, pg.dct_renderer, pg.dct_name = errors, srv, renderer, request.param
        pg.dct_responses = responses
        pg.dct_expected_version = None if kind == "host" else kind
        yield pg
        ctx.close()


# What the page shows, for a failure message.
PAGE_STATE = """() => ({
    picker: document.querySelectorAll('.dct-picker').length,
    search: document.querySelector('.dct-picker-search')?.value,
    status: document.querySelector('.dct-picker-status')?.textContent,
    items: document.querySelectorAll('.dct-picker-item').length, focus: document.activeElement?.className,
    dialogs: [...document.querySelectorAll('.p-dialog')].map(d => d.getAttribute('aria-labelledby') || d.className),
    dct: window.__dct,
})"""


def _wait(page, js: str, arg=None, *, timeout: float, what: str) -> None:
    """page.wait_for_function that, on a timeout, keeps a screenshot and says what the page showed."""
    try:
        page.wait_for_function(js, arg=arg, timeout=timeout)
    except Exception as err:  # playwright's TimeoutError
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / f"FAILED-{what}-{page.dct_name}.png"
        page.screenshot(path=str(shot))
        raise AssertionError(f"waiting for {what} timed out (see {shot.name}): {page.evaluate(PAGE_STATE)}") from err


def _pack_errors(page) -> list[str]:
    """Console errors, page errors and failed requests so far that are the pack's, or not known noise."""
    return [e for e in page.dct_errors if PACK_URL in e or not any(n in e for n in BASELINE_NOISE)]


def _vue_node(page, node_id):
    """The Train node's element in the Vue renderer (nodes are DOM elements there, not canvas drawings)."""
    return page.locator(f'[data-node-id="{node_id}"]')


def test_extension_loads_without_errors_and_lists_the_nodes(page):
    state = page.evaluate("""ids => ({
        loaded: window.__dct?.loaded === true,
        registered: app.extensions.some(e => e.name === 'dct.discriminative-class-tokens'),
        categories: Object.fromEntries(ids.map(id => [id, LiteGraph.registered_node_types[id]?.category])),
        version: window.__COMFYUI_FRONTEND_VERSION__ ?? null,
        vue: app.extensionManager?.setting?.get?.('Comfy.VueNodes.Enabled') ?? null,
    })""", NODE_IDS)
    assert state["loaded"] and state["registered"]
    assert set(state["categories"].values()) == {"Discriminative Class Tokens"}, state["categories"]
    if page.dct_expected_version:  # the frontend served is the one this run claims to test
        assert state["version"] == page.dct_expected_version, state
        assert state["vue"] is (page.dct_renderer == "vue"), state
    assert not _pack_errors(page)


PICK = "pick class…"
FIND = "t => app.graph._nodes.find(n => n.comfyClass === t)?.id ?? null"
RESULT = "id => app.graph.getNodeById(id).__dctResult?.textContent ?? ''"
# A point on the bare graph canvas (no element over it, no node drawn near it), for a click outside the picker.
BARE_CANVAS_POINT = """() => {
    const canvas = app.canvas.canvas, r = canvas.getBoundingClientRect(), ds = app.canvas.ds;
    const bare = (x, y) => document.elementFromPoint(x, y) === canvas
        && !app.graph.getNodeOnPos(...ds.convertOffsetToCanvas([x - r.left, y - r.top]));
    for (let fy = 0.92; fy > 0.3; fy -= 0.04) for (let fx = 0.25; fx < 0.97; fx += 0.04) {
        const x = r.left + r.width * fx, y = r.top + r.height * fy;
        if ([-40, 0, 40].every(dx => [-40, 0, 40].every(dy => bare(x + dx, y + dy)))) return [x, y];
    }
    return null;
}"""


def test_help_pages_are_served_at_the_localized_path(page):
    served = page.evaluate("""async a => {
        const out = {};
        for (const id of a.ids) for (const path of [`docs/${id}/en.md`, `docs/${id}.md`]) {
            const r = await fetch(app.api.fileURL(`/extensions/${a.pack}/${path}`));
            out[path] = [r.status, r.headers.get('content-type') || '', (await r.text()).slice(0, 200)];
        }
        return out;
    }""", {"ids": NODE_IDS, "pack": PACK_URL})
    for node_id in NODE_IDS:
        status, kind, text = served[f"docs/{node_id}/en.md"]
        assert status == 200 and "html" not in kind and text.startswith("# "), (node_id, status, kind, text)
        assert served[f"docs/{node_id}.md"][2] == text
    assert not _pack_errors(page)


def _open_picker(page, node_id, name=PICK):
    """Open the class picker as a user would: the node's button (a DOM button in the Vue renderer; on the canvas a
    drawing, so its callback is run)."""
    if page.dct_renderer == "vue":
        button = _vue_node(page, node_id).get_by_role("button", name=name)
        button.wait_for(state="visible", timeout=15_000)
        button.click()
    else:
        page.evaluate("(a) => app.graph.getNodeById(a[0]).widgets.find(w => w.name === a[1]).callback()",
                      [node_id, PICK])
    _wait(page, "() => document.querySelectorAll('.dct-picker').length === 1", timeout=15_000, what="picker-open")


def test_picker_lists_filters_sets_the_class_and_closes(page):
    train_id = page.evaluate(BUILD_GRAPH)
    closed = "() => document.querySelectorAll('.dct-picker').length === 0"
    _open_picker(page, train_id)
    status = page.locator(".dct-picker-status")
    # the first lookup on a fresh server loads the classifier's libraries: give it time on a busy machine
    _wait(page, "() => document.querySelector('.dct-picker-status')?.textContent", timeout=60_000, what="labels")
    assert status.inner_text() == "10 of 10 labels"  # else it says why (e.g. the label lookup's error)
    assert page.locator(".dct-picker-item").count() == 10
    # it closes on a click outside it, on Escape wherever the focus is, and on its close button
    point = page.evaluate(BARE_CANVAS_POINT)
    assert point, "no bare canvas point to click"
    page.mouse.click(*point)
    _wait(page, closed, timeout=5_000, what="picker-outside-click")
    _open_picker(page, train_id)
    page.evaluate("() => document.activeElement?.blur()")
    page.keyboard.press("Escape")
    _wait(page, closed, timeout=5_000, what="picker-escape")
    _open_picker(page, train_id)
    page.locator(".dct-picker-close").click()
    _wait(page, closed, timeout=5_000, what="picker-close-button")

    _open_picker(page, train_id)
    page.fill(".dct-picker-search", "tiger")
    _wait(page, "() => document.querySelectorAll('.dct-picker-item').length === 2", timeout=15_000, what="filter")
    assert status.inner_text() == "2 of 10 labels"
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"picker-{page.dct_name}.png"))
    page.locator(".dct-picker-item", has_text="1: tiger cat").click()
    assert page.locator(".dct-picker").count() == 0
    assert page.evaluate("""id => app.graph.getNodeById(id).widgets.find(w => w.name === 'target_class').value""",
                         train_id) == "tiger cat"
    assert not _pack_errors(page)


def _show_node(page, node_id):
    """Close toasts and dialogs, zoom so the whole (tall) node shows and centre it."""
    page.evaluate("""id => {
        document.querySelectorAll('.p-dialog-close-button, .p-toast-close-button').forEach(b => b.click());
        app.extensionManager?.toast?.dismissAll?.();
        const node = app.graph.getNodeById(id);
        // in the Vue renderer the node is its DOM element
        const el = document.querySelector(`[data-node-id="${id}"]`), ds = app.canvas.ds;
        const tall = el ? el.getBoundingClientRect().height / ds.scale : node.size[1] + 40;
        ds.changeScale(Math.min(1, 760 / tall), [0, 0]);
        app.canvas.centerOnNode?.(node);
        app.canvas.setDirty(true, true);
    }""", node_id)
    page.keyboard.press("Escape")
    page.wait_for_timeout(500)


def _result_shown(page, node_id) -> bool:
    """The node's result box is on screen: inside the node's element (Vue renderer) or over the canvas."""
    if page.dct_renderer == "vue":
        return _vue_node(page, node_id).locator(".dct-result").is_visible()
    return page.evaluate("""id => {
        const el = app.graph.getNodeById(id).__dctResult, r = el.getBoundingClientRect();
        return el.isConnected && r.width > 0 && r.height > 0 && getComputedStyle(el).display !== 'none';
    }""", node_id)


def test_a_run_shows_its_result_a_cancel_says_what_it_kept_and_a_reload_keeps_them(page):
    server = page.dct_server
    train_id = page.evaluate(BUILD_GRAPH)
    ids = {t: page.evaluate(FIND, t) for t in ("DCTLoadClassifier", "PreviewImage", "DCTTrainingOptions")}
    # a token list on the page before the run: the saved token must join it without a reload
    token_list = page.evaluate("""() => {
        const n = LiteGraph.createNode('DCTLoadClassToken'); n.pos = [900, 400]; app.graph.add(n); return n.id;
    }""")
    # a name of its own per frontend/renderer: the same inputs on the same server would be a cached no-op run
    save_name = f"browser-token-{page.dct_name}"
    set_widget = "(a) => { app.graph.getNodeById(a[0]).widgets.find(w => w.name === a[1]).value = a[2]; }"
    page.evaluate(set_widget, [train_id, "save_name", save_name])
    page.evaluate(set_widget, [train_id, "target_class", "tigre cat"])

    # a misspelled class: what the Run button does (the frontend's queue command) is blocked, with the close name
    page.evaluate("() => { window.__dct.lastBlocked = null; "
                  "app.extensionManager.command.execute('Comfy.QueuePrompt'); }")
    _wait(page, "() => (window.__dct.lastBlocked || []).some(m => m.includes('tigre cat'))", timeout=15_000,
          what="run-blocked")
    blocked = page.evaluate("() => window.__dct.lastBlocked")
    assert "did you mean 'tiger cat'?" in blocked[0], blocked
    assert page.evaluate("() => app.queuePrompt(0)") is False
    assert page.evaluate("id => app.graph.getNodeById(id).__dctInvalid", train_id) is True
    label = "target_class (not a label!)"
    offer = "did you mean 'tiger cat'? pick…"
    assert page.evaluate("""id => app.graph.getNodeById(id).widgets
        .filter(w => ['target_class', 'pick class…'].includes(w.name)).map(w => w.label)""", train_id) \
        == [label, offer]
    if page.dct_renderer == "vue":  # the flag is visible in the node's DOM (on the canvas it is a drawing)
        _vue_node(page, train_id).get_by_text(label).wait_for(state="visible", timeout=15_000)
    # the button offers the close names first in the picker: one click sets one
    _open_picker(page, train_id, name=offer)
    suggestion = page.locator(".dct-picker-suggestion")
    suggestion.first.wait_for(state="visible", timeout=15_000)
    assert suggestion.first.inner_text() == "1: tiger cat"
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"did-you-mean-{page.dct_name}.png"))
    suggestion.first.click()
    assert page.locator(".dct-picker").count() == 0
    assert page.evaluate("id => app.graph.getNodeById(id).widgets.find(w => w.name === 'target_class').value",
                         train_id) == "tiger cat"
    assert page.evaluate("id => app.graph.getNodeById(id).__dctInvalid", train_id) is False

    # a run: chart, result text (the Train node's and the classifier's), the token in the page's token lists
    page.evaluate("() => app.queuePrompt(0)")
    _wait(page, "id => (app.graph.getNodeById(id).properties.dct_history || []).length === 2", train_id,
          timeout=240_000, what="training")
    _wait(page, f"id => ({RESULT})(id).includes('stopped by')", train_id, timeout=120_000, what="result-text")
    summary = page.evaluate(RESULT, train_id)
    assert summary.startswith("tiger cat (1): stopped by max_steps after 2 steps") and \
        f"{save_name}.safetensors" in summary and "recipe paper; settings:" in summary, summary
    _wait(page, f"id => ({RESULT})(id).startsWith('10 classes, input')", ids["DCTLoadClassifier"],
          timeout=30_000, what="classifier-text")
    token_file = f"{save_name}.safetensors"
    _wait(page, "(a) => app.graph.getNodeById(a[0]).widgets.find(w => w.name === 'token')"
                ".options.values.includes(a[1])", [token_list, token_file], timeout=30_000, what="token-list")
    assert (server.models / "embeddings" / token_file).is_file()
    _wait(page, "id => (app.nodeOutputs[String(id)]?.images || []).length > 0", ids["PreviewImage"],
          timeout=30_000, what="preview-images")
    drawn = page.evaluate(CHART_PIXELS, train_id)
    assert drawn["coloured"] > 10 and drawn["attached"], drawn  # the orange accuracy line is on the chart
    _show_node(page, train_id)
    if page.dct_renderer == "vue":  # the chart canvas is shown inside the Train node's element
        assert _vue_node(page, train_id).locator("canvas.dct-chart").is_visible()
    else:
        assert page.evaluate(CHART_PIXELS, train_id)["shown"]
    assert _result_shown(page, train_id)
    page.screenshot(path=str(ARTIFACTS / f"train-node-chart-{page.dct_name}.png"))

    # a longer run, cancelled once it has a step: the stale images go at its start, and the node says what it kept
    cancelled_name = f"{save_name}-cancelled"
    page.evaluate(set_widget, [train_id, "save_name", cancelled_name])
    page.evaluate(set_widget, [train_id, "max_steps", 200])
    page.evaluate(set_widget, [ids["DCTTrainingOptions"], "patience", 200])
    page.evaluate("() => { window.__dct.lastStopped = null; app.queuePrompt(0); }")
    _wait(page, """id => { const p = app.graph.getNodeById(id).properties;
                           return p.dct_state === 'running' && (p.dct_history || []).length >= 1; }""", train_id,
          timeout=240_000, what="second-run")
    page.evaluate("() => app.api.interrupt(null)")  # what the Cancel button does
    _wait(page, "() => window.__dct.lastStopped", timeout=60_000, what="cancel")
    _wait(page, f"id => ({RESULT})(id).includes('cancelled at step')", train_id, timeout=30_000,
          what="cancel-text")
    text = page.evaluate(RESULT, train_id)
    stopped = page.evaluate("() => window.__dct.lastStopped")
    assert f"best step {stopped['best_step']}'s token" in text and f"{cancelled_name}.safetensors" in text, text
    assert (server.models / "embeddings" / f"{cancelled_name}.safetensors").is_file()
    steps = len(page.evaluate("id => app.graph.getNodeById(id).properties.dct_history", train_id))
    assert steps == stopped["steps"] and 1 <= steps < 200, (steps, stopped)  # the chart is this run's
    preview = page.evaluate("""id => { const n = app.graph.getNodeById(id);
        return {outputs: app.nodeOutputs[String(id)] ?? null, imgs: n.imgs?.length ?? 0}; }""", ids["PreviewImage"])
    assert preview == {"outputs": None, "imgs": 0}, preview  # the last run's plot is not shown as this one's
    if page.dct_renderer == "vue":
        assert _vue_node(page, ids["PreviewImage"]).locator("img").count() == 0
    _show_node(page, train_id)
    assert _result_shown(page, train_id)
    page.screenshot(path=str(ARTIFACTS / f"train-node-cancelled-{page.dct_name}.png"))

    # chart and texts survive a page reload (they live in the workflow's node properties)
    page.wait_for_timeout(1500)  # let the frontend persist the workflow
    page.reload(wait_until="domcontentloaded")
    page.wait_for_function(READY, timeout=90_000)
    restored_id = page.evaluate(FIND_TRAIN)
    assert restored_id is not None
    assert page.evaluate("id => (app.graph.getNodeById(id).properties.dct_history || []).length",
                         restored_id) == steps
    page.wait_for_function(f"id => ({CHART_PIXELS})(id).coloured > 10", arg=restored_id, timeout=15_000)
    assert page.evaluate(RESULT, restored_id) == text
    assert page.evaluate(RESULT, page.evaluate(FIND, "DCTLoadClassifier")).startswith("10 classes, input")
    assert not _pack_errors(page)


def test_side_panel_lists_only_inputs_and_shows_the_help_page(page):
    if page.dct_expected_version is None:
        pytest.skip("the host's frontend has no side panel with the node's parameters")
    train_id = page.evaluate(BUILD_GRAPH)
    page.evaluate("""async id => {
        app.canvas.deselectAll?.();
        app.canvas.selectNode(app.graph.getNodeById(id));
        await app.extensionManager.setting.set('Comfy.RightSidePanel.IsOpen', true);
    }""", train_id)
    panel = page.locator('[data-testid="properties-panel"]')
    panel.wait_for(state="visible", timeout=15_000)
    page.locator('[data-testid="panel-tab-parameters"]').click()
    panel.get_by_text("save_name").first.wait_for(state="visible", timeout=15_000)
    listed = panel.inner_text()
    assert "pick class" not in listed, listed
    assert panel.locator(".dct-chart, .dct-result").count() == 0
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"side-panel-parameters-{page.dct_name}.png"))
    page.dct_responses.clear()
    page.locator('[data-testid="panel-tab-info"]').click()
    panel.get_by_text("Learns one new word embedding").first.wait_for(state="visible", timeout=15_000)
    panel.get_by_role("heading", name="Inputs").scroll_into_view_if_needed()  # the list that was a table
    page.screenshot(path=str(ARTIFACTS / f"side-panel-help-{page.dct_name}.png"))
    asked = [(status, url) for status, url in page.dct_responses if "/docs/DCTTrainToken" in url]
    assert asked and asked[0][0] == 200 and asked[0][1].endswith("/docs/DCTTrainToken/en.md"), asked
    page.evaluate("() => app.extensionManager.setting.set('Comfy.RightSidePanel.IsOpen', false)")
    assert not _pack_errors(page)
