"""The Class Tokens tab and the DATE accordion in a real Forge Classic page (gradio 3.41) in Chromium: both show with
their controls; Train with no classifier answers with one line on the page, not a stack trace; the tab trains a
token (classifier picked, its labels file found by name, the class typed, small settings under "More settings")
with the current batch, the chart and before/after shown. Screenshots go to test-artifacts/. Skipped where no
Forge Classic, playwright or Chromium is present."""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

import pytest
from forge_server import WEBUI_HINT, ForgeServer, build_checkpoint, find_webui
from test_forge_extension import _classifier as classifier_files

FOUND = find_webui()
pytestmark = pytest.mark.skipif(FOUND is None, reason=WEBUI_HINT)
REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CLASSIFIER = "tiny.safetensors"
SMALL = {"resolution": "64", "sampling_steps": "3", "batch_size": "1", "validation_images": "0",
         "threshold_window": "100", "patience": "1000"}
ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-dev-shm-usage"]


@pytest.fixture(scope="module")
def page():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed: browser tests skipped")
    if not Path(CHROMIUM).exists():
        pytest.skip("no system Chromium (apt-get install chromium): browser tests skipped")
    webui, python = FOUND
    ARTIFACTS.mkdir(exist_ok=True)
    with ForgeServer(webui, python, build_checkpoint(python, webui), ui=True) as server, \
            sync_api.sync_playwright() as pw, tempfile.TemporaryDirectory(prefix="dct-webui-browser-") as profile:
        classifier_files(server.models_dir / "classifiers")
        ctx = pw.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True, args=ARGS,
                                                    viewport={"width": 1400, "height": 1000})
        pg = ctx.pages[0] if ctx.pages else ctx.new_page()
        pg.dct_errors = []
        pg.dct_server = server
        pg.on("pageerror", lambda e: pg.dct_errors.append(str(e)))
        pg.goto(server.url + "/", wait_until="domcontentloaded", timeout=120_000)
        try:
            pg.locator(".tab-nav button", has_text="txt2img").first.wait_for(timeout=120_000)
        except Exception:
            pg.screenshot(path=str(ARTIFACTS / "webui-not-ready.png"), full_page=True)
            raise
        yield pg
        ctx.close()


def test_the_date_accordion_shows_its_controls(page):
    txt2img = page.locator("#tab_txt2img")
    txt2img.get_by_text("Class guidance (DATE)", exact=True).first.click()
    for label in ("Target class", "Strength (rho)", "Every N steps", "Step window"):
        txt2img.get_by_label(label).first.wait_for(timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / "webui-date-accordion.png"), full_page=True)


def test_a_bad_train_says_why_in_one_line(page):
    page.locator(".tab-nav button", has_text="Class Tokens").first.click()
    tab = page.locator("#tab_dct_class_tokens")
    for label in ("Classifier", "Labels file", "Target class", "Recipe", "Save name"):
        assert tab.get_by_label(label).first.is_visible(), label
    tab.get_by_role("button", name="Train").click()
    status = tab.get_by_label("Status").first
    page.wait_for_function("el => el.value.startsWith('failed')", arg=status.element_handle(), timeout=60_000)
    text = status.input_value()
    assert "no classifier chosen" in text and "models/classifiers" in text and "Traceback" not in text, text


def _pick(tab, label: str, value: str) -> None:
    box = tab.get_by_label(label).first
    box.click()
    box.fill(value)
    box.press("Enter")


def test_the_tab_trains_a_token_with_progress_and_before_after(page):
    page.locator(".tab-nav button", has_text="Class Tokens").first.click()
    tab = page.locator("#tab_dct_class_tokens")
    tab.get_by_label("Architecture").first.fill("resnet10t")
    _pick(tab, "Classifier", CLASSIFIER)
    labels = tab.get_by_label("Labels file").first
    page.wait_for_function("el => el.value === 'tiny.labels.txt'", arg=labels.element_handle(), timeout=30_000)
    _pick(tab, "Target class", "kite")
    tab.get_by_label("Steps").first.fill("2")
    tab.get_by_label("Save name").first.fill("tab-kite")
    tab.get_by_text("More settings").first.click()
    for name, value in SMALL.items():
        tab.get_by_label(re.compile(rf"^{name}(\s|$)")).first.fill(value)  # the label, then its help
    status = tab.get_by_label("Status").first
    before = status.input_value()  # the previous test's answer: wait for this run's own
    tab.get_by_role("button", name="Train").click()
    page.wait_for_function("([el, old]) => el.value !== old", arg=[status.element_handle(), before], timeout=60_000)
    done = "el => el.value.includes('Use it in a prompt as: tab-kite') || el.value.startsWith('failed')"
    page.wait_for_function(done, arg=status.element_handle(), timeout=180_000)
    text = status.input_value()
    page.screenshot(path=str(ARTIFACTS / "webui-class-tokens-trained.png"), full_page=True)
    assert "Use it in a prompt as: tab-kite" in text, text
    assert (page.dct_server.models_dir / "embeddings" / "tab-kite.safetensors").is_file()
    assert tab.locator("img").count() >= 3  # current batch, chart, before/after
    assert not [e for e in page.dct_errors if "dct" in e.lower()], page.dct_errors
