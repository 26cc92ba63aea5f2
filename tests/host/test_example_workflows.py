"""The example workflows (ComfyUI's UI format, as the templates browser loads them) converted to API format and
run in the real server, on the tiny checkpoint and classifier, in the order a user runs them: the training
workflow writes the token that the other two load. A workflow saved with the legacy Train node (the training
example as shipped before the simple node) still loads and runs."""

from __future__ import annotations

import copy
import json
import urllib.request
from pathlib import Path

from PIL import Image

from .server import error_message
from .test_server import NODE_IDS
from .workflow_convert import UI_ONLY_TYPES, link_problems, ui_to_api

EXAMPLES = Path(__file__).resolve().parents[2] / "example_workflows"
SAVED = Path(__file__).resolve().parent / "fixtures" / "saved_workflows"
# the training example as shipped with the legacy DCTTrainClassToken node (21 widget values, no recipe widget)
LEGACY_TRAIN_EXAMPLE = SAVED / "train_discriminative_token_2025-11.json"
TRAIN, OPTIONS, LEGACY_TRAIN = "DCTTrainToken", "DCTTrainingOptions", "DCTTrainClassToken"
ORDER = ["train_discriminative_token", "apply_class_token", "compare_with_without_token"]
PACK_FOLDER = "discriminative-class-tokens"  # the name ComfyServer links the pack under

# The test server's files instead of the real models the examples name.
TINY_FILES = {
    "CheckpointLoaderSimple": {"ckpt_name": "tiny_sd15_random.safetensors"},
    "DCTLoadClassifier": {"classifier": "tiny-resnet.safetensors", "timm_architecture": "test_resnet",
                          "labels": "tiny-labels.txt"},
}
# CPU-sized settings instead of the paper's.
SMALL = {
    TRAIN: {"max_steps": 2},
    LEGACY_TRAIN: {"resolution": 64, "steps": 2, "sampling_steps": 2, "batch_size": 1},
    "EmptyLatentImage": {"width": 64, "height": 64, "batch_size": 2},
    "KSampler": {"steps": 2},
}
# The simple Train node has no size settings: the tests plug a DCT Training Options node in with these.
SMALL_OPTIONS = {"resolution": 64, "sampling_steps": 2, "batch_size": 1}


def load(name: str) -> dict:
    return json.loads((EXAMPLES / f"{name}.json").read_text())


def nodes_of(api: dict, class_type: str) -> list[dict]:
    return [n for n in api.values() if n["class_type"] == class_type]


def with_overrides(api: dict, *tables: dict) -> dict:
    """A copy with the given widget values replaced; every override must hit a widget the workflow has."""
    api = copy.deepcopy(api)
    for table in tables:
        for class_type, values in table.items():
            for node in nodes_of(api, class_type):
                for name, value in values.items():
                    assert name in node["inputs"] and not isinstance(node["inputs"][name], list), \
                        f"override {class_type}.{name} matches no widget"
                    node["inputs"][name] = value
    return api


def with_training_options(api: dict, info: dict, **values) -> dict:
    """A copy with ``values`` set on the DCT Training Options node plugged into every simple Train node (one with
    its /object_info defaults is plugged in where a Train node has none)."""
    api = copy.deepcopy(api)
    spec = info[OPTIONS]["input"]
    inputs = {name: s[1]["default"] for part in ("required", "optional") for name, s in spec.get(part, {}).items()}
    assert set(values) <= set(inputs), f"not options: {set(values) - set(inputs)}"
    for node in nodes_of(api, TRAIN):
        if "options" in node["inputs"]:
            api[node["inputs"]["options"][0]]["inputs"].update(values)
            continue
        node_id = str(max(int(k) for k in api) + 1)
        api[node_id] = {"class_type": OPTIONS, "inputs": {**inputs, **values}, "_meta": {"title": "options"}}
        node["inputs"]["options"] = [node_id, 0]
    return api


def token_metadata(server, save_name: str) -> dict:
    from dct_core.formats.tokens import load_class_token

    return load_class_token(server.models / "embeddings" / f"{save_name}.safetensors").metadata


def fetch(server, path: str) -> bytes:
    with urllib.request.urlopen(server.url + path, timeout=30) as r:
        return r.read()


def test_examples_are_ui_workflows_with_a_note_and_a_thumbnail():
    assert sorted(p.stem for p in EXAMPLES.glob("*.json")) == sorted(ORDER)
    for name in ORDER:
        wf = load(name)
        assert {"nodes", "links", "version", "last_node_id", "last_link_id"} <= set(wf), name
        assert any(n["type"] == "Note" and n["widgets_values"][0].strip() for n in wf["nodes"]), name
        assert link_problems(wf) == [], name
        ids = [n["id"] for n in wf["nodes"]]
        assert len(set(ids)) == len(ids) and max(ids) <= wf["last_node_id"], name
        assert max(link[0] for link in wf["links"]) <= wf["last_link_id"], name
        thumb = EXAMPLES / f"{name}.jpg"
        assert thumb.stat().st_size < 100_000, name
        with Image.open(thumb) as im:
            assert im.format == "JPEG"


def test_examples_use_only_registered_nodes_and_convert(server):
    info = server.get("/object_info")
    for name in ORDER:
        wf = load(name)
        unknown = {n["type"] for n in wf["nodes"]} - set(info) - UI_ONLY_TYPES
        assert not unknown, f"{name} uses node types the server does not have: {unknown}"
        ui_to_api(wf, info)  # widget counts and value types match the node definitions

    train, apply, compare = (ui_to_api(load(n), info) for n in ORDER)
    (trainer,) = nodes_of(train, TRAIN)  # the simple face, on the default recipe, with an Options node to hand
    assert not nodes_of(train, LEGACY_TRAIN)
    assert set(trainer["inputs"]) == {"model", "clip", "vae", "classifier", "target_class", "max_steps",
                                      "save_name", "overwrite", "recipe", "options"}
    from dct_core.config import DEFAULT_PRESET

    assert trainer["inputs"]["recipe"] == DEFAULT_PRESET == "balanced" and trainer["inputs"]["max_steps"] == 0
    (options,) = nodes_of(train, OPTIONS)
    assert train[trainer["inputs"]["options"][0]] is options
    spec = info[OPTIONS]["input"]
    defaults = {name: s[1]["default"] for part in ("required", "optional") for name, s in spec.get(part, {}).items()}
    assert options["inputs"] == defaults  # every setting at "the recipe's value": the example trains as the recipe
    token_file = trainer["inputs"]["save_name"] + ".safetensors"
    for api in (apply, compare):
        assert [n["inputs"]["token"] for n in nodes_of(api, "DCTLoadClassToken")] == [token_file]
    # the comparison differs in the positive conditioning only
    a, b = nodes_of(compare, "KSampler")
    assert {k for k in a["inputs"] if a["inputs"][k] != b["inputs"][k]} == {"positive"}
    assert isinstance(a["inputs"]["seed"], list)  # one shared seed node
    plain = compare[a["inputs"]["positive"][0]]
    tokened = compare[b["inputs"]["positive"][0]]
    assert (plain["class_type"], tokened["class_type"]) == ("CLIPTextEncode", "DCTApplyClassToken")
    trigger = trainer["inputs"]["save_name"]
    assert tokened["inputs"]["text"].replace(f"{trigger} ", "") == plain["inputs"]["text"]


def test_examples_run_in_order_train_apply_compare(server):
    info = server.get("/object_info")
    train, apply, compare = (with_overrides(ui_to_api(load(n), info), TINY_FILES, SMALL) for n in ORDER)
    train = with_training_options(train, info, **SMALL_OPTIONS)

    entry = server.run(train)
    assert entry["status"]["status_str"] == "success", error_message(entry)
    (trainer_id,) = [k for k, n in train.items() if n["class_type"] == TRAIN]
    save_name = train[trainer_id]["inputs"]["save_name"]
    meta = token_metadata(server, save_name)
    # the example's recipe, with the options node's settings over it and the recipe's everywhere it says 0
    assert (meta["recipe"], meta["lr"], meta["init_word"], meta["fresh_seeds"]) == ("balanced", "0.05", "a", "true")
    assert (meta["resolution"], meta["sampling_steps"], meta["batch_size"]) == ("64", "2", "1")
    assert meta["sampler"] == "euler/normal" and meta["guidance"] == "7.0" and meta["max_steps"] == "2"
    previews = [k for k, n in train.items() if n["class_type"] == "PreviewImage"]
    assert len(previews) == 2 and all(entry["outputs"][k]["images"] for k in previews)

    entry = server.run(apply)
    assert entry["status"]["status_str"] == "success", error_message(entry)
    (save_id,) = [k for k, n in apply.items() if n["class_type"] == "SaveImage"]
    assert len(entry["outputs"][save_id]["images"]) == 2

    entry = server.run(compare)
    assert entry["status"]["status_str"] == "success", error_message(entry)
    (save_id,) = [k for k, n in compare.items() if n["class_type"] == "SaveImage"]
    (stitch,) = nodes_of(compare, "ImageStitch")
    images = entry["outputs"][save_id]["images"]
    assert len(images) == 2
    for image in images:
        with Image.open(server.base / "output" / image["subfolder"] / image["filename"]) as im:
            assert im.size == (64 + stitch["inputs"]["spacing_width"] + 64, 64)  # without | with, side by side


def test_examples_and_help_pages_are_served(server):
    listed = server.get("/workflow_templates")
    assert sorted(listed.get(PACK_FOLDER, [])) == sorted(ORDER), listed
    for name in ORDER:
        served = fetch(server, f"/api/workflow_templates/{PACK_FOLDER}/{name}.json")
        assert json.loads(served) == load(name)
    for node_id in NODE_IDS:
        page = fetch(server, f"/extensions/{PACK_FOLDER}/docs/{node_id}.md").decode()
        assert page.startswith("# "), node_id


def test_a_workflow_saved_with_the_legacy_train_node_loads_and_runs(server):
    """The training example exactly as saved before the simple node existed: DCTTrainClassToken with its 21 widget
    values, saved before the node had a recipe widget. It converts (as the frontend restores it: by position) with
    its values in place and trains with the paper's recipe, as it did then."""
    info = server.get("/object_info")
    saved = json.loads(LEGACY_TRAIN_EXAMPLE.read_text())
    assert link_problems(saved) == []
    api = ui_to_api(saved, info)
    (legacy,) = nodes_of(api, LEGACY_TRAIN)
    (saved_node,) = [n for n in saved["nodes"] if n["type"] == LEGACY_TRAIN]
    # no recipe value saved: the frontend gives the widget its default, which on the legacy node is the paper's
    assert len(saved_node["widgets_values"]) == 21 and legacy["inputs"]["recipe"] == "paper"
    assert {k: legacy["inputs"][k] for k in ("target_class", "init_word", "steps", "learning_rate", "batch_size",
                                             "cfg", "sampling_steps", "resolution", "save_name", "fresh_seeds")} == {
        "target_class": "tiger cat", "init_word": "a", "steps": 50, "learning_rate": 0.00125, "batch_size": 5,
        "cfg": 7.0, "sampling_steps": 30, "resolution": 512, "save_name": "dct-tiger-cat", "fresh_seeds": False}

    small = with_overrides(api, TINY_FILES, SMALL, {LEGACY_TRAIN: {"save_name": "dct-tiger-cat-legacy"}})
    entry = server.run(small)
    assert entry["status"]["status_str"] == "success", error_message(entry)
    previews = [k for k, n in small.items() if n["class_type"] == "PreviewImage"]
    assert len(previews) == 2 and all(entry["outputs"][k]["images"] for k in previews)
    meta = token_metadata(server, "dct-tiger-cat-legacy")
    assert (meta["recipe"], meta["lr"], meta["init_word"], meta["fresh_seeds"]) == ("paper", "0.00125", "a", "false")
    assert (meta["resolution"], meta["sampling_steps"], meta["batch_size"], meta["max_steps"]) == ("64", "2", "1", "2")
    assert json.loads(meta["templates"]) == ["A high-resolution realistic image of a {token} {label}",
                                             "A photo of {token} {label}"]
