"""The Class Tokens tab and the DATE accordion in a real Forge Classic page (gradio 3.41) in Chromium: both show with
their controls; Train with no classifier answers with one line on the page, not a stack trace. Screenshots go to
test-artifacts/. Skipped where no Forge Classic, playwright or Chromium is present."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from forge_server import WEBUI_HINT, ForgeServer, build_checkpoint, find_webui

FOUND = find_webui()
pytestmark = pytest.mark.skipif(FOUND is None, reason=WEBUI_HINT)
REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-dev-shm-usage"]


def test_the_tab_and_the_date_accordion_show_and_a_bad_train_says_why():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed: browser tests skipped")
    if not Path(CHROMIUM).exists():
        pytest.skip("no system Chromium (apt-get install chromium): browser tests skipped")
    webui, python = FOUND
    ARTIFACTS.mkdir(exist_ok=True)
    with ForgeServer(webui, python, build_checkpoint(python, webui), ui=True) as server, \
            sync_api.sync_playwright() as pw, tempfile.TemporaryDirectory(prefix="dct-webui-browser-") as profile:
        ctx = pw.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True, args=ARGS,
                                                    viewport={"width": 1400, "height": 1000})
        page = ctx.pages[0] if ctx.pages else ctx.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server.url + "/", wait_until="domcontentloaded", timeout=120_000)
        try:
            page.locator(".tab-nav button", has_text="txt2img").first.wait_for(timeout=120_000)
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "webui-not-ready.png"), full_page=True)
            raise
        accordion = page.get_by_text("Class guidance (DATE)", exact=True).first
        accordion.wait_for(timeout=60_000)
        accordion.click()
        page.get_by_label("Strength (rho)").first.wait_for(timeout=30_000)
        page.screenshot(path=str(ARTIFACTS / "webui-date-accordion.png"), full_page=True)
        page.locator(".tab-nav button", has_text="Class Tokens").first.click()
        tab = page.locator("#tab_dct_class_tokens")
        for label in ("Classifier", "Labels file", "Target class", "Recipe", "Save name"):
            assert tab.get_by_label(label).first.is_visible(), label
        tab.get_by_role("button", name="Train").click()
        status = tab.get_by_label("Status").first
        page.wait_for_function("el => el.value.startsWith('failed')", arg=status.element_handle(), timeout=60_000)
        text = status.input_value()
        page.screenshot(path=str(ARTIFACTS / "webui-class-tokens-tab.png"), full_page=True)
        ctx.close()
    assert "classifier" in text and "models/classifiers" in text and "Traceback" not in text, text
    assert not [e for e in errors if "dct" in e.lower()], errors
