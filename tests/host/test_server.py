"""The pack inside the running ComfyUI server: nodes registered, workflows posted over HTTP."""

from __future__ import annotations

import json
from pathlib import Path

from .server import error_message

TRAIN, OPTIONS, LEGACY_TRAIN = "DCTTrainToken", "DCTTrainingOptions", "DCTTrainClassToken"
# Every node the pack registers; LEGACY_TRAIN is deprecated (out of the node search) but loads old workflows.
NODE_IDS = ["DCTLoadClassifier", TRAIN, OPTIONS, "DCTApplyClassToken", "DCTClassTokenClip", "DCTLoadClassToken",
            "DCTSaveClassToken", "DCTAdaptiveClassGuidance", LEGACY_TRAIN]
# The legacy node's inputs as shipped (names, order, types, defaults): saved workflows restore widget values by
# position, so any change here would scramble them.
LEGACY_SCHEMA = Path(__file__).resolve().parent / "fixtures" / "legacy_train_node_schema_2025-11.json"
# The Options node's widgets as first shipped (under the settings table's names: learning_rate is lr, cfg guidance):
# saved workflows restore widget values by position, so these stay first, in this order.
FIRST_OPTIONS = ["init_word", "templates", "lr", "batch_size", "micro_batch", "guidance", "sampler_name", "scheduler",
                 "sampling_steps", "resolution", "seed", "accuracy_threshold", "patience", "backprop_depth", "decoder",
                 "preview_every", "fresh_seeds"]
# The settings added after them, each left unset (the recipe's): -1 where 0 is a value of its own.
UNSET_NEW_OPTIONS = {"gradient_point": "recipe", "x0_interval": "", "x0_points": 0, "preserve": -1, "keep": "recipe",
                     "validation_images": -1, "threshold_window": 0, "enough_prob": -1, "init_pull": -1,
                     "norm_cap": -1, "weight_decay": -1, "max_grad_norm": 0, "num_vectors": 0,
                     "checkpointing": "recipe", "negative_prompt": "", "spread": -1, "free_words": "",
                     "free_penalty": -1}


def _train_workflow(save_name: str, target: str = "tiger cat") -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd15_random.safetensors"}},
        "2": {"class_type": "DCTLoadClassifier", "inputs": {
            "classifier": "tiny-resnet.safetensors", "kind": "auto", "timm_architecture": "test_resnet",
            "labels": "tiny-labels.txt", "pooling": "cls", "multi_label": False}},
        "3": {"class_type": TRAIN, "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "classifier": ["2", 0], "target_class": target,
            "max_steps": 2, "save_name": save_name, "overwrite": True, "recipe": "balanced", "options": ["6", 0]}},
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 1]}},
        "5": {"class_type": "PreviewImage", "inputs": {"images": ["3", 2]}},
        "6": {"class_type": OPTIONS, "inputs": {
            "init_word": "a", "templates": "A photo of {token} {label}", "lr": 0.05, "batch_size": 1,
            "micro_batch": 0, "guidance": 7.0, "sampler_name": "euler", "scheduler": "normal", "sampling_steps": 2,
            "resolution": 64, "seed": 0, "accuracy_threshold": 1.0, "patience": 15, "backprop_depth": 1,
            "decoder": "checkpoint VAE", "preview_every": 1, "fresh_seeds": "recipe", **UNSET_NEW_OPTIONS}},
    }


def test_nodes_are_registered_with_tooltips(server):
    info = server.get("/object_info")
    for node_id in NODE_IDS:
        assert node_id in info, f"{node_id} missing; server log:\n{server.log.read_text()[-2000:]}"
        assert info[node_id]["category"] == "Discriminative Class Tokens"
        for name, spec in info[node_id]["input"]["required"].items():
            assert spec[1].get("tooltip") if len(spec) > 1 else False, f"{node_id}.{name} has no tooltip"
    assert "tiny-resnet.safetensors" in info["DCTLoadClassifier"]["input"]["required"]["classifier"][1]["options"] \
        or "tiny-resnet.safetensors" in info["DCTLoadClassifier"]["input"]["required"]["classifier"][0]


def _widgets(info: dict, node_id: str) -> list[str]:
    spec = info[node_id]
    return [name for part in ("required", "optional") for name in spec["input_order"].get(part, [])
            if isinstance(spec["input"][part][name][0], list)
            or spec["input"][part][name][0] in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")]


def test_the_simple_train_node_the_options_node_and_the_deprecated_legacy_node(server):
    info = server.get("/object_info")
    train, options, legacy = info[TRAIN], info[OPTIONS], info[LEGACY_TRAIN]
    assert _widgets(info, TRAIN) == ["target_class", "max_steps", "save_name", "overwrite", "recipe"]
    assert train["input_order"]["optional"] == ["options"]
    assert train["input"]["optional"]["options"][0] == options["output"][0] == "DCT_TRAINING_OPTIONS"
    assert train["display_name"] == "Train Discriminative Token (DCT)" and not train.get("deprecated")
    assert options["display_name"] == "DCT Training Options" and not options.get("deprecated")
    assert _widgets(info, OPTIONS) == FIRST_OPTIONS + list(UNSET_NEW_OPTIONS)
    # unset on a fresh options node means the recipe's: 0, empty, "recipe", or -1 where 0 is a value of its own
    # (the seed is the recipes' own 0)
    defaults = {name: s[1]["default"] for part in ("required", "optional")
                for name, s in options["input"].get(part, {}).items()}
    # the settings added after 2026-11 are optional: API prompts saved then still validate
    assert list(options["input"].get("optional", {})) == list(UNSET_NEW_OPTIONS)
    assert {k: v for k, v in defaults.items() if v not in (0, 0.0, "", "recipe")} == {
        "sampler_name": "euler", "scheduler": "normal", "decoder": "checkpoint VAE", "preview_every": 1,
        **{k: v for k, v in UNSET_NEW_OPTIONS.items() if v == -1}}
    assert {k: defaults[k] for k in UNSET_NEW_OPTIONS} == UNSET_NEW_OPTIONS
    # the legacy node: deprecated (the frontend leaves it out of its search), named so, its inputs as shipped
    assert legacy["deprecated"] is True
    assert legacy["display_name"] == "Train Discriminative Token (DCT) (legacy, all settings)"
    shipped = json.loads(LEGACY_SCHEMA.read_text())
    # the one deliberate change: recipe defaults to the paper's, which the frontend gives the widget when a workflow
    # saved before the input existed is loaded (the backend already ran those as 'paper')
    assert shipped["inputs"]["recipe"][2]["default"] == "balanced"
    shipped["inputs"]["recipe"][2]["default"] = "paper"
    assert legacy["input_order"] == shipped["input_order"]
    for name, (part, kind, extra) in shipped["inputs"].items():
        spec = legacy["input"][part][name]
        assert ("COMBO" if isinstance(spec[0], list) else spec[0]) == kind, name
        now = {k: v for k, v in (spec[1] if len(spec) > 1 else {}).items() if k in extra}
        if name == "recipe":
            now["options"] = spec[1].get("options") or spec[0]
        assert now == extra, name
    assert [legacy["output"], legacy["output_name"]] == [shipped["outputs"]["output"],
                                                         shipped["outputs"]["output_name"]]
    assert legacy["output"] == train["output"] and legacy["output_name"] == train["output_name"]


def test_train_then_use_the_token_in_a_stock_workflow(server):
    entry = server.run(_train_workflow("served-token"))
    assert entry["status"]["status_str"] == "success", error_message(entry)
    assert (server.models / "embeddings" / "served-token.safetensors").is_file()
    use = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd15_random.safetensors"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1],
                                                         "text": "a photo of embedding:served-token tiger cat"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "seed": 1,
            "steps": 2, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "dct"}},
    }
    entry = server.run(use)
    assert entry["status"]["status_str"] == "success", error_message(entry)
    assert "warning, embedding:served-token does not exist" not in server.log.read_text()


def test_an_unknown_class_is_a_clear_node_error(server):
    entry = server.run(_train_workflow("never", target="tigre cat"))
    assert entry["status"]["status_str"] == "error"
    message = error_message(entry)
    assert "no class named 'tigre cat'" in message and "'tiger cat' (1)" in message


def _labels(server, **params) -> tuple[int, dict]:
    import json
    import urllib.error
    import urllib.parse
    import urllib.request

    url = f"{server.url}/dct/labels?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            return exc.code, json.loads(body)
        except ValueError:
            return exc.code, {"not json": body.decode(errors="replace")}


def test_labels_route_lists_filters_and_refuses_bad_input(server):
    def get(**params):
        return _labels(server, **params)

    status, body = get(classifier="tiny-resnet.safetensors", timm_architecture="test_resnet",
                       labels="tiny-labels.txt", q="tiger")
    assert status == 200 and body["total"] == 10
    assert [(x["index"], x["name"]) for x in body["labels"]] == [(1, "tiger cat"), (2, "tiger")]
    status, body = get(classifier="tiny-resnet.safetensors", timm_architecture="test_resnet", q="kite")
    assert status == 200 and body["total"] == 10 and body["matched"] == 0  # 10-way head, no labels file
    assert get(classifier="nope.safetensors")[0] == 404
    assert get(classifier="../../etc/passwd")[0] == 400
    assert get(classifier="tiny-resnet.safetensors", labels="../secrets.txt")[0] == 400
    assert get(classifier="tiny-resnet.safetensors", limit="100000")[0] == 413
    status, body = get(classifier="x" * 5000)
    assert status == 413 and "error" in body


def test_labels_route_answers_400_for_bad_files_and_serves_nothing_linked_outside(server, tmp_path):
    """Over the real server: unreadable files are JSON 400s with one line (no traceback, no server paths);
    a link out of models/classifiers is offered neither by the route nor by Load Classifier."""
    folder = server.models / "classifiers"
    (tmp_path / "secret.txt").write_text("secret one\nsecret two\n")
    made = {
        "deep.json": lambda p: p.write_text("[" * 100_000 + "]" * 100_000),
        "corrupt.safetensors": lambda p: p.write_bytes(b"garbage!garbage!garbage!"),
        "linked-out.txt": lambda p: p.symlink_to(tmp_path / "secret.txt"),
        "linked-out.safetensors": lambda p: p.symlink_to(folder / "tiny-resnet.safetensors"),  # inside: fine
    }
    for name, make in made.items():
        make(folder / name)
    try:
        for params, name in (({"labels": "deep.json"}, "deep.json"),
                             ({"classifier": "corrupt.safetensors", "timm_architecture": "test_resnet"},
                              "corrupt.safetensors")):
            status, body = _labels(server, **{"classifier": "tiny-resnet.safetensors", **params})
            assert status == 400 and set(body) == {"error"}, body
            message = body["error"]
            assert name in message and "\n" not in message and "Traceback" not in message, message
            assert str(folder) not in message, message
        status, body = _labels(server, classifier="tiny-resnet.safetensors", labels="linked-out.txt")
        assert status == 404 and "secret one" not in str(body), body
        status, body = _labels(server, classifier="linked-out.safetensors", labels="tiny-labels.txt")
        assert status == 200 and body["total"] == 10
        options = server.get("/object_info/DCTLoadClassifier")["DCTLoadClassifier"]["input"]["required"]["classifier"]
        listed = options[1].get("options") or options[0]
        assert "linked-out.safetensors" in listed and "corrupt.safetensors" in listed
        (folder / "linked-out.safetensors").unlink()
        (folder / "linked-out.safetensors").symlink_to(tmp_path / "w.safetensors")
        (tmp_path / "w.safetensors").write_bytes((folder / "tiny-resnet.safetensors").read_bytes())
        options = server.get("/object_info/DCTLoadClassifier")["DCTLoadClassifier"]["input"]["required"]["classifier"]
        assert "linked-out.safetensors" not in (options[1].get("options") or options[0])
        assert _labels(server, classifier="linked-out.safetensors")[0] == 404
    finally:
        for name in made:
            (folder / name).unlink(missing_ok=True)
