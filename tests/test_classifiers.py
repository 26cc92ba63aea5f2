import pickle

import pytest
import timm
import torch
from safetensors.torch import save_file

from conftest import EvilPickle
from dct_core.classifiers import Preprocess, load_classifier, resolve_class
from dct_core.classifiers.labels import imagenet_labels
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
