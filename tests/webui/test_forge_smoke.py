"""Forge Classic starts on CPU with this repository as an extension and the random SD1.5-layout checkpoint,
lists the checkpoint and renders a 64x64 image, the same twice for a fixed seed.

Needs Forge Classic (see forge_server.find_webui); skipped without it. The extension's own scripts do not
have to load for this test: Forge reports a script that fails to import in its log and goes on.
"""

from __future__ import annotations

import io
import time

import pytest
from forge_server import WEBUI_HINT, ForgeServer, build_checkpoint, decode_image, find_webui
from PIL import Image

FOUND = find_webui()
pytestmark = pytest.mark.skipif(FOUND is None, reason=WEBUI_HINT)

TXT2IMG = {
    "prompt": "a photo of a tiger cat",
    "negative_prompt": "",
    "width": 64,
    "height": 64,
    "steps": 2,
    "cfg_scale": 5.0,
    "sampler_name": "Euler",
    "seed": 1234,
    "subseed": -1,
    "batch_size": 1,
    "n_iter": 1,
    "save_images": False,
    "send_images": True,
}


def test_forge_lists_checkpoint_and_renders_deterministically():
    webui, python = FOUND
    ckpt = build_checkpoint(python, webui)
    with ForgeServer(webui, python, ckpt) as server:
        status, models = server.get("/sdapi/v1/sd-models")
        assert status == 200, models
        names = [m["model_name"] for m in models]
        assert ckpt.stem in names, f"{ckpt.stem} not in {names}"

        pixels, infos, seconds = [], [], []
        for _ in range(2):
            started = time.monotonic()
            status, result = server.post("/sdapi/v1/txt2img", TXT2IMG)
            seconds.append(time.monotonic() - started)
            assert status == 200, f"{result}\n{server.log_tail()}"
            assert len(result["images"]) == 1
            image = Image.open(io.BytesIO(decode_image(result["images"][0])))
            assert image.size == (64, 64)
            pixels.append(image.convert("RGB").tobytes())
            infos.append(result["info"])
        print(f"\nForge start {server.start_seconds:.1f} s, txt2img {seconds[0]:.1f} s then {seconds[1]:.1f} s")

    assert pixels[0] == pixels[1], "same seed, different pixels"
    assert len(set(pixels[0])) > 1, "a uniform image"
    assert '"seed": 1234' in infos[0] and ckpt.stem in infos[0]
