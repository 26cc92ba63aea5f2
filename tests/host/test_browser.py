"""The pack's frontend in a real browser (headless Chromium via Playwright, the system browser) against the
real ComfyUI server: extension loads cleanly, nodes listed under the pack's category, the class picker lists
and filters a tiny classifier's labels, an invalid class is flagged before queueing, and a short training run
draws its live chart, which survives a page reload.

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
  const o = {batch_size: 2, sampling_steps: 2, resolution: 64, lr: 0.05, accuracy_threshold: 1.0,
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

    def on_response(r):  # the pack's own files and routes must never fail
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


def test_picker_lists_filters_and_sets_the_class(page):
    train_id = page.evaluate(BUILD_GRAPH)
    if page.dct_renderer == "vue":
        # the button widget is a real DOM button inside the node's element: click it as a user would
        button = _vue_node(page, train_id).get_by_role("button", name="pick class…")
        button.wait_for(state="visible", timeout=15_000)
        button.click()
    else:  # drawn on the LiteGraph canvas: no element to click, so run the widget's own callback
        page.evaluate("""id => app.graph.getNodeById(id).widgets.find(w => w.name === 'pick class…').callback()""",
                      train_id)
    status = page.locator(".dct-picker-status")
    # the first lookup on a fresh server loads the classifier's libraries: give it time on a busy machine
    _wait(page, "() => document.querySelector('.dct-picker-status')?.textContent", timeout=60_000, what="labels")
    assert status.inner_text() == "10 of 10 labels"  # else it says why (e.g. the label lookup's error)
    assert page.locator(".dct-picker-item").count() == 10
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


def test_invalid_class_is_flagged_before_queueing_and_a_run_draws_the_chart(page):
    server = page.dct_server
    train_id = page.evaluate(BUILD_GRAPH)
    # a name of its own per frontend/renderer: the same inputs on the same server would be a cached no-op run
    save_name = f"browser-token-{page.dct_name}"
    page.evaluate("(a) => { app.graph.getNodeById(a[0]).widgets.find(w => w.name === 'save_name').value = a[1]; }",
                  [train_id, save_name])
    set_target = "(a) => { app.graph.getNodeById(a[0]).widgets.find(w => w.name === 'target_class').value = a[1]; }"
    page.evaluate(set_target, [train_id, "tigre cat"])
    # what the Run button does (the frontend's queue command) reaches the pack's check
    page.evaluate("() => { window.__dct.lastBlocked = null; "
                  "app.extensionManager.command.execute('Comfy.QueuePrompt'); }")
    _wait(page, "() => (window.__dct.lastBlocked || []).some(m => m.includes('tigre cat'))", timeout=15_000,
          what="run-blocked")
    assert page.evaluate("() => app.queuePrompt(0)") is False
    blocked = page.evaluate("() => window.__dct.lastBlocked")
    assert blocked and "tigre cat" in blocked[0]
    assert page.evaluate("id => app.graph.getNodeById(id).__dctInvalid", train_id) is True
    label = "target_class (not a label!)"
    assert page.evaluate("id => app.graph.getNodeById(id).widgets.find(w => w.name === 'target_class').label",
                         train_id) == label
    if page.dct_renderer == "vue":  # the flag is visible in the node's DOM (on the canvas it is a drawing)
        _vue_node(page, train_id).get_by_text(label).wait_for(state="visible", timeout=15_000)

    page.evaluate(set_target, [train_id, "tiger cat"])
    page.evaluate("() => app.queuePrompt(0)")
    _wait(page, "id => (app.graph.getNodeById(id).properties.dct_history || []).length === 2", train_id,
          timeout=240_000, what="training")
    drawn = page.evaluate(CHART_PIXELS, train_id)
    assert drawn["coloured"] > 10 and drawn["attached"], drawn  # the orange accuracy line is on the chart
    page.evaluate("""id => {
        document.querySelectorAll('.p-dialog-close-button, .p-toast-close-button').forEach(b => b.click());
        const node = app.graph.getNodeById(id);
        // zoom to show the whole (tall) node, chart included; in the Vue renderer the node is its DOM element
        const el = document.querySelector(`[data-node-id="${id}"]`), ds = app.canvas.ds;
        const tall = el ? el.getBoundingClientRect().height / ds.scale : node.size[1] + 40;
        ds.changeScale(Math.min(1, 760 / tall), [0, 0]);
        app.canvas.centerOnNode?.(node);
        app.canvas.setDirty(true, true);
    }""", train_id)
    page.keyboard.press("Escape")
    page.wait_for_timeout(500)
    if page.dct_renderer == "vue":  # the chart canvas is shown inside the Train node's element
        assert _vue_node(page, train_id).locator("canvas.dct-chart").is_visible()
    else:
        assert page.evaluate(CHART_PIXELS, train_id)["shown"]
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"train-node-chart-{page.dct_name}.png"))
    assert (server.models / "embeddings" / f"{save_name}.safetensors").is_file()

    # the finished run's chart survives a page reload (its points live in the workflow's node properties)
    page.wait_for_timeout(1500)  # let the frontend persist the workflow
    page.reload(wait_until="domcontentloaded")
    page.wait_for_function(READY, timeout=90_000)
    restored_id = page.evaluate(FIND_TRAIN)
    assert restored_id is not None
    assert page.evaluate("id => (app.graph.getNodeById(id).properties.dct_history || []).length", restored_id) == 2
    page.wait_for_function(f"id => ({CHART_PIXELS})(id).coloured > 10", arg=restored_id, timeout=15_000)
    assert not _pack_errors(page)
