import json
import pickle

import pytest
import timm
import torch
from safetensors.torch import save_file

from conftest import EvilPickle
from dct_core.classifiers import Preprocess, load_classifier, load_classifiers, resolve_class
from dct_core.classifiers.label_lookup import quick_labels
from dct_core.classifiers.labels import imagenet_labels, read_labels
from dct_core.errors import DCTError


def _timm_weights(tmp_path, num_classes=3, name="test_resnet"):
    model = timm.create_model(name, pretrained=False, num_classes=num_classes)
    path = tmp_path / "clf.safetensors"
    save_file(model.state_dict(), str(path))
    return model, path


def test_timm_classifier_from_a_weights_file_with_labels(tmp_path):
    model, path = _timm_weights(tmp_path)
    labels = tmp_path / "labels.txt"
    labels.write_text("tabby, tabby cat\ntiger cat\nkite\n")
    clf = load_classifier("timm:test_resnet", path, labels)
    assert clf.num_classes == 3 and clf.class_index("TABBY CAT") == 0 and clf.class_name(0) == "tabby"
    images = torch.rand(2, 3, 64, 64, requires_grad=True)
    logits = clf(images)
    assert logits.shape == (2, 3)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(logits, model(clf.preprocess(images)))
    logits.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0  # the gradient reaches the image


def test_preprocess_follows_the_timm_data_config():
    model = timm.create_model("test_vit", pretrained=False)
    pre = Preprocess.from_timm(model)
    cfg = model.pretrained_cfg
    assert pre.input_size == tuple(cfg["input_size"][1:]) and pre.mean == tuple(cfg["mean"])
    out = pre(torch.rand(1, 3, 300, 400))
    assert out.shape[-2:] == pre.input_size


def test_labels_mismatch_and_unknown_names_are_clear_errors(tmp_path):
    _, path = _timm_weights(tmp_path)
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\n")
    with pytest.raises(DCTError, match="2 names but .* outputs 3 classes"):
        load_classifier("timm:test_resnet", path, labels)
    with pytest.raises(DCTError, match="close matches: 'tiger cat' \\(282\\)"):
        resolve_class(imagenet_labels(), "tiger kat")
    assert resolve_class(imagenet_labels(), "Tiger Cat") == 282
    with pytest.raises(DCTError, match="out of range"):
        resolve_class(["a", "b"], "7")
    with pytest.raises(DCTError, match="no architecture"):
        load_classifier("timm:not_a_model_xyz")
    with pytest.raises(DCTError, match="neither an existing file or folder nor a known form"):
        load_classifier("nonsense")


def test_weights_that_do_not_fit_the_architecture(tmp_path):
    _, path = _timm_weights(tmp_path, name="test_efficientnet")
    with pytest.raises(DCTError, match="do not fit"):
        load_classifier("timm:test_resnet", path)


def test_pickled_weights_load_as_plain_tensors_and_code_is_refused(tmp_path):
    model = timm.create_model("test_resnet", pretrained=False, num_classes=3)
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "ok.pth")
    assert load_classifier("timm:test_resnet", tmp_path / "ok.pth").num_classes == 3
    marker = tmp_path / "pwned"
    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"fc.weight": EvilPickle(str(marker))}, f)
    with pytest.raises(DCTError, match="safetensors.torch.save_file"):
        load_classifier("timm:test_resnet", tmp_path / "evil.pth")
    assert not marker.exists()


class _CodeThatWritesFiles(torch.nn.Module):
    """A TorchScript classifier whose code writes a file when it is loaded (``__setstate__``) and run."""

    def __init__(self, marker: str, classes: int = 2):
        super().__init__()
        self.marker = marker
        self.weight = torch.nn.Parameter(torch.ones(classes, 3))

    def forward(self, x):
        torch.save(x, self.marker + ".forward")
        return x.mean((2, 3)) @ self.weight.T

    @torch.jit.export
    def __getstate__(self) -> tuple[str, torch.Tensor, bool]:
        return (self.marker, self.weight, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, torch.Tensor, bool]) -> None:
        self.marker, self.weight, self.training = state
        torch.save(self.weight, self.marker)


def _scripted(path, marker, labels=("a", "b")):
    torch.jit.script(_CodeThatWritesFiles(str(marker), len(labels))).save(str(path))
    path.with_name(path.name + ".json").write_text(json.dumps({"labels": list(labels), "input_size": 8}))
    return path


def test_torchscript_is_refused_before_any_of_its_code_runs(tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    path = _scripted(tmp_path / "clf.pt", marker)
    jit_loads = []
    real_load = torch.jit.load
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: jit_loads.append(a) or real_load(*a, **k))
    for load in (lambda **k: load_classifier(str(path), **k), lambda **k: load_classifiers([str(path)], **k)):
        with pytest.raises(DCTError) as refused:
            load()
        message = str(refused.value)
        assert "TorchScript" in message and "refused" in message and "\n" not in message
        assert "--trust-code" in message and "'allow TorchScript code'" in message
    assert jit_loads == [] and not list(tmp_path.glob("ran*"))
    clf = load_classifier(str(path), trust_code=True)
    assert clf.labels == ["a", "b"] and jit_loads and marker.exists()  # trusted: its code did run
    assert load_classifiers([str(path)], trust_code=True).num_classes == 2


def test_the_label_picker_reads_a_torchscript_sidecar_without_running_the_file(tmp_path, monkeypatch):
    path = _scripted(tmp_path / "clf.pt", tmp_path / "ran", labels=("Bald", "Smiling"))
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: pytest.fail("the label lookup loaded TorchScript"))
    assert quick_labels(path) == ["Bald", "Smiling"]
    assert quick_labels(path, labels=["x", "y"]) == ["x", "y"]
    path.with_name("clf.pt.json").unlink()
    with pytest.raises(DCTError, match="needs class names"):  # not ImageNet's 1000 names
        quick_labels(path)
    assert not list(tmp_path.glob("ran*"))


BAD_LABELS = [
    ("labels.txt", b"\xff\xfe\x00a", "is not UTF-8 text"),
    ("labels.json", b"\x89PNG\r\n\x1a\n", "is not UTF-8 text"),
    ("labels.json", b"3", "holds a number; expected a list of names"),
    ("labels.json", b"null", "holds null; expected"),
    ("labels.json", b'"tiger cat"', "holds a string; expected"),
    ("labels.json", b'["a",\n "b"', "is not valid JSON: .* at line 2, column 5"),
    ("labels.json", b'{"cat": "tiger cat"}', "key 'cat' of .* is not a class index"),
    ("labels.json", b'{"-1": "tiger cat"}', "key '-1' of .* is not a class index"),
    ("labels.json", b'{"0": "a", "00": "b"}', "names class index 0 twice"),
    ("labels.json", b'["a", {"b": 1}]', "entry 1 of .* is an object, not a class name"),
    ("labels.json", b'["a", null]', "entry 1 of .* is null, not a class name"),
    ("labels.json", b'{"0": "a", "1": ["b"]}', "the name for '1' of .* is a list"),
    ("labels.json", b'{"0": "a", "1": "b", "4": "c"}', "no name for class index 2, 3 \\(its keys go up to 4\\)"),
]


@pytest.mark.parametrize("name,content,message", BAD_LABELS)
def test_bad_labels_files_give_one_line_errors(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DCTError, match=message) as error:
        read_labels(tmp_path / name)
    assert "\n" not in str(error.value)


def test_good_labels_files_keep_their_indices(tmp_path):
    (tmp_path / "l.json").write_text('{"1": "b", "0": "a", "2": 7}')
    assert read_labels(tmp_path / "l.json") == ["a", "b", "7"]
    (tmp_path / "l.json").write_text('["a", 2, 3.5]')
    assert read_labels(tmp_path / "l.json") == ["a", "2", "3.5"]
    (tmp_path / "l.txt").write_text("tabby, tabby cat\n\n kite \n")
    assert read_labels(tmp_path / "l.txt") == ["tabby, tabby cat", "kite"]


def test_a_folder_given_as_a_labels_file_is_called_a_folder(tmp_path):
    (tmp_path / "labels.txt").mkdir()
    with pytest.raises(DCTError, match="labels file .* is a folder, not a file"):
        read_labels(tmp_path / "labels.txt")
    _, weights = _timm_weights(tmp_path)
    with pytest.raises(DCTError, match="is a folder, not a file"):
        load_classifier("timm:test_resnet", weights, tmp_path / "labels.txt")
    with pytest.raises(DCTError, match="does not exist"):
        read_labels(tmp_path / "missing.txt")


BAD_SIDECARS = [
    ('"labels"', "holds a string; it must be a JSON object"),
    ('["a", "b"]', "holds a list; it must be a JSON object"),
    ('{"labels": ["a", "b"],}', "is not valid JSON: .* line 1, column"),
    ('{"labels": "a b"}', "'labels' must be a list of names .*, not 'a b'"),
    ('{"labels": {"0": "a", "2": "b"}}', "no name for class index 1"),
    ('{"labels": ["a", "b"], "input_size": "224"}', "'input_size' must be a positive integer or \\[height, width\\]"),
    ('{"labels": ["a", "b"], "input_size": [0, 8]}', "'input_size' must be"),
    ('{"labels": ["a", "b"], "mean": [0.5, 0.5]}', "'mean' must be three numbers"),
    ('{"labels": ["a", "b"], "std": [0, 1, 1]}', "'std' must be three positive numbers"),
    ('{"labels": ["a", "b"], "crop_pct": "0.9"}', "'crop_pct' must be a number"),
    ('{"labels": ["a", "b"], "interpolation": "lanczos"}', "'interpolation' must be bilinear or bicubic or nearest"),
    ('{"labels": ["a", "b"], "multi_label": "yes"}', "'multi_label' must be true or false"),
    ('{"lables": ["a", "b"]}', "unknown field\\(s\\) lables; known: labels"),
]


@pytest.mark.parametrize("content,message", BAD_SIDECARS)
def test_bad_torchscript_sidecars_give_one_line_errors(tmp_path, content, message):
    path = _scripted(tmp_path / "clf.pt", tmp_path / "ran")
    (tmp_path / "clf.pt.json").write_text(content)
    for load in (lambda: load_classifier(str(path), trust_code=True), lambda: quick_labels(path)):
        with pytest.raises(DCTError, match=message) as error:
            load()
        assert "\n" not in str(error.value)
    assert not list(tmp_path.glob("ran*"))  # checked before the module is loaded


def test_weights_file_messages_tell_damage_from_code_and_folders_from_missing_files(tmp_path):
    from dct_core.classifiers.weights import read_state_dict

    torch.save({"fc.weight": torch.ones(3, 4)}, tmp_path / "full.pth", _use_new_zipfile_serialization=False)
    data = (tmp_path / "full.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 3])
    with pytest.raises(DCTError, match="cut.pth is not a readable weights file: damaged or truncated") as caught:
        read_state_dict(tmp_path / "cut.pth")
    assert "code" not in str(caught.value)
    (tmp_path / "dir.pth").mkdir()
    with pytest.raises(DCTError, match="dir.pth is a folder, not a file"):
        read_state_dict(tmp_path / "dir.pth")
    with pytest.raises(DCTError, match="weights file .*nope.pth does not exist"):
        read_state_dict(tmp_path / "nope.pth")
    marker = tmp_path / "pwned"
    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"fc.weight": EvilPickle(str(marker))}, f)
    with pytest.raises(DCTError, match="evil.pth: it would run arbitrary Python code when loaded"):
        read_state_dict(tmp_path / "evil.pth")
    assert not marker.exists()
