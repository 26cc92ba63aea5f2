"""The extension in a real Forge Classic, headless on CPU, with a random SD1.5-layout checkpoint built with the webui's
own modules: the DATE script registers with its labelled controls; POST /dct/v1/train trains a 2-step token on the
loaded checkpoint; /sdapi/v1/embeddings lists it and txt2img's infotext names it; DATE at strength 0 is bit-identical
to the script off and at 0.5 differs; Interrupt keeps the best token; the host's model draws the same image
before and after (weights bit-identical). Skipped, with the reason, where no Forge Classic is set up."""

from __future__ import annotations

import io
import threading
import time

import pytest
import torch
from forge_server import WEBUI_HINT, ForgeServer, build_checkpoint, decode_image, find_webui
from PIL import Image

FOUND = find_webui()
pytestmark = pytest.mark.skipif(FOUND is None, reason=WEBUI_HINT)

LABELS = ["kite", "finch", "warbler"]
CLASSIFIER = "tiny.safetensors"
TRAIN = {"classifier": CLASSIFIER, "timm_architecture": "resnet10t", "target_class": "kite", "steps": 2,
         "save_name": "dct-kite",
         "options": {"resolution": 64, "sampling_steps": 3, "batch_size": 1, "validation_images": 0,
                     "threshold_window": 100, "patience": 1000}}  # a random classifier: no early stop
TXT2IMG = {"prompt": "a photo of a kite", "negative_prompt": "", "width": 64, "height": 64, "steps": 3,
           "cfg_scale": 5.0, "sampler_name": "Euler", "seed": 7, "batch_size": 1,
           "n_iter": 1, "save_images": False, "send_images": True}
SCRIPT = "class guidance (date)"


def _classifier(folder):
    """A random timm resnet10t with three classes and its default labels file (<name>.labels.txt)."""
    import safetensors.torch
    import timm

    torch.manual_seed(0)
    model = timm.create_model("resnet10t", num_classes=len(LABELS), pretrained=False)
    folder.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / CLASSIFIER))
    (folder / "tiny.labels.txt").write_text("\n".join(LABELS) + "\n")


@pytest.fixture(scope="module")
def forge():
    webui, python = FOUND
    with ForgeServer(webui, python, build_checkpoint(python, webui)) as server:
        _classifier(server.models_dir / "classifiers")
        yield server


def _image(server, **over) -> tuple[bytes, str]:
    status, result = server.post("/sdapi/v1/txt2img", {**TXT2IMG, **over})
    assert status == 200, f"{result}\n{server.log_tail()}"
    image = Image.open(io.BytesIO(decode_image(result["images"][0]))).convert("RGB")
    return image.tobytes(), result["info"]


def _date(enable: bool, rho: float) -> dict:
    return {"alwayson_scripts": {SCRIPT: {"args": [enable, CLASSIFIER, "resnet10t", "", "kite", rho, 1, "0-1"]}}}


def test_the_date_script_registers_with_its_labelled_controls(forge):
    status, info = forge.get("/sdapi/v1/script-info")
    assert status == 200
    ours = [s for s in info if s["name"] == SCRIPT and not s["is_img2img"]]
    assert ours and ours[0]["is_alwayson"], f"{[s['name'] for s in info]}\n{forge.log_tail()}"
    labels = [a["label"] for a in ours[0]["args"]]
    assert labels == ["Enable", "Classifier", "Architecture", "Labels file", "Target class", "Strength (rho)",
                      "Every N steps", "Step window"]
    status, found = forge.get(f"/dct/v1/labels?classifier={CLASSIFIER}&timm_architecture=resnet10t&q=fin")
    assert status == 200 and found["default_labels"] == "tiny.labels.txt", found
    assert found["total"] == 3 and [x["name"] for x in found["labels"]] == ["finch"]


def test_train_a_token_use_it_and_leave_the_model_as_found(forge):
    plain_before, _ = _image(forge)
    started = time.monotonic()
    status, result = forge.post("/dct/v1/train", TRAIN)
    seconds = time.monotonic() - started
    assert status == 200, f"{result}\n{forge.log_tail()}"
    assert result["steps"] == 2 and result["class_label"] == "kite" and result["name"] == "dct-kite"
    assert (forge.models_dir / "embeddings" / "dct-kite.safetensors").is_file()
    assert Image.open(io.BytesIO(decode_image(result["before_after"]))).size[0] > 64
    print(f"\n2 training steps + before/after: {seconds:.1f} s")

    status, embeddings = forge.get("/sdapi/v1/embeddings")
    assert status == 200 and "dct-kite" in embeddings["loaded"], embeddings
    _, info = _image(forge, prompt="a photo of a dct-kite kite")
    assert "dct-kite" in info, info  # TI hashes name the token
    plain_after, _ = _image(forge)
    assert plain_after == plain_before  # the host's weights and patches are as they were

    status, again = forge.post("/dct/v1/train", TRAIN)  # the same name again, no overwrite: one line, nothing run
    assert status == 400 and "Overwrite" in again["error"]


def test_date_strength_zero_is_bit_identical_and_half_changes_the_image(forge):
    plain, _ = _image(forge)
    zero, info_zero = _image(forge, **_date(True, 0.0))
    half, info_half = _image(forge, **_date(True, 0.5))
    assert zero == plain
    assert half != plain, forge.log_tail()
    assert "DCT DATE class: kite" in info_half and "DCT DATE rho: 0.5" in info_half, info_half
    assert "stopped" not in info_half, info_half


def test_interrupt_keeps_the_best_token(forge):
    answer = {}
    body = {**TRAIN, "steps": 30, "save_name": "dct-kite-interrupted"}
    worker = threading.Thread(target=lambda: answer.update(r=forge.post("/dct/v1/train", body)))
    worker.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        _, status = forge.get("/dct/v1/status")
        if status["running"] and status["step"] >= 1:
            break
        time.sleep(0.5)
    busy, refused = forge.post("/dct/v1/train", {**TRAIN, "save_name": "other"})
    assert busy == 409 and "already runs" in refused["error"]
    assert forge.post("/dct/v1/interrupt")[1] == {"interrupted": True}
    worker.join(300)
    status, result = answer["r"]
    assert status == 200, result
    assert result["stopped"] == "cancelled" and 1 <= result["steps"] < 30 and result["best_step"] >= 1
    assert (forge.models_dir / "embeddings" / "dct-kite-interrupted.safetensors").is_file()
