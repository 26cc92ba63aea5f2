"""Every classifier form loads through one interface, offline, from tiny random models written to disk."""

import json
import pickle
import re

import pytest
import timm
import torch
from safetensors.torch import save_file

from conftest import TINY_SAMPLING, EvilPickle, tiny_clip_model
from dct_core.backends.diffusers_backend import DiffusersBackend
from dct_core.classifiers import EnsembleClassifier, ImageClassifier, Preprocess, load_classifier, load_classifiers
from dct_core.cli import main
from dct_core.config import TrainConfig
from dct_core.errors import DCTError
from dct_core.method.training import train_class_token
from dct_core.testing.tiny import TINY_LABELS, tiny_pipeline

LABELS = ["tabby, tabby cat", "tiger cat", "kite", "iron", "warbler"]


def _assert_image_gradient(classifier, size=48):
    images = torch.rand(2, 3, size, size, requires_grad=True)
    logits = classifier(images)
    assert logits.shape == (2, classifier.num_classes) and torch.isfinite(logits).all()
    logits[:, 1].sum().backward()
    assert images.grad.abs().sum() > 0
    return logits


def test_timm_hub_folder_with_label_names(tmp_path):
    from timm.models._hub import save_for_hf

    model = timm.create_model("test_vit", pretrained=False, num_classes=len(LABELS))
    save_for_hf(model, str(tmp_path / "vit"), model_config={"label_names": LABELS})
    clf = load_classifier(str(tmp_path / "vit"))
    assert clf.labels == LABELS and clf.class_index("tabby") == 0
    assert clf.preprocess.input_size == tuple(model.pretrained_cfg["input_size"][1:])
    _assert_image_gradient(clf)
    images = torch.rand(2, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(clf(images), model.eval()(clf.preprocess(images)))



def _tiny_vit_folder(path, problem_type=None):
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    config = ViTConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                       patch_size=8, num_labels=len(LABELS), id2label=dict(enumerate(LABELS)),
                       label2id={n: i for i, n in enumerate(LABELS)}, problem_type=problem_type)
    model = ViTForImageClassification(config).eval()
    model.save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(path)
    return model


def test_transformers_folder_cls_and_mae_mean_pooling(tmp_path):
    model = _tiny_vit_folder(tmp_path / "vit")
    clf = load_classifier(str(tmp_path / "vit"))
    assert clf.labels == LABELS and clf.preprocess.input_size == (32, 32) and clf.preprocess.mean == (0.5,) * 3
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(clf(images), model(pixel_values=(images - 0.5) / 0.5).logits)
    _assert_image_gradient(clf, 32)
    mean = load_classifier(str(tmp_path / "vit") + "#pooling=mean")
    with torch.no_grad():
        x = (images - 0.5) / 0.5
        hidden = model.vit(pixel_values=x, output_hidden_states=True).hidden_states[-1]
        expected = model.classifier(model.vit.layernorm(hidden[:, 1:].mean(1)))
        torch.testing.assert_close(mean(images), expected)
        assert not torch.allclose(mean(images), clf(images))


def test_transformers_multi_label_config_is_detected(tmp_path):
    _tiny_vit_folder(tmp_path / "attr", problem_type="multi_label_classification")
    assert load_classifier(str(tmp_path / "attr")).multi_label


class _TinyCNN(torch.nn.Module):
    def __init__(self, classes):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2)
        self.fc = torch.nn.Linear(8, classes)

    def forward(self, x):
        return self.fc(self.conv(x).relu().mean((2, 3)))


def test_torchscript_with_sidecar_and_attribute_objective(tmp_path):
    torch.manual_seed(0)
    scripted = torch.jit.script(_TinyCNN(3))
    scripted.save(str(tmp_path / "celeba.pt"))
    (tmp_path / "celeba.pt.json").write_text(json.dumps(
        {"labels": ["Bald", "Smiling", "Eyeglasses"], "input_size": [24, 24], "multi_label": True}))
    clf = load_classifier(str(tmp_path / "celeba.pt"), trust_code=True)
    assert clf.multi_label and clf.class_index("bald") == 0 and clf.preprocess.input_size == (24, 24)
    logits = _assert_image_gradient(clf)
    on, off = clf.loss(logits, 0, True), clf.loss(logits, 0, False)
    p = logits[:, 0].sigmoid()
    torch.testing.assert_close(on, -p.log())
    torch.testing.assert_close(off, -(1 - p).log())
    assert torch.equal(clf.hits(logits, 0, True), logits[:, 0] > 0)
    with pytest.raises(DCTError, match="needs class names"):
        (tmp_path / "celeba.pt.json").unlink()
        load_classifier(str(tmp_path / "celeba.pt"), trust_code=True)
    with pytest.raises(DCTError, match="outputs 3 classes"):
        load_classifier(str(tmp_path / "celeba.pt"), labels=["a", "b"], trust_code=True)


def _tiny_clip_folder(path):
    tiny_clip_model(layers=2).save_pretrained(path)


def test_zero_shot_clip_classifies_free_text_labels_and_trains_a_token(tmp_path):
    _tiny_clip_folder(tmp_path / "clip")
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(TINY_LABELS))
    clf = load_classifier(f"clip:{tmp_path / 'clip'}", labels=labels)
    assert clf.num_classes == len(TINY_LABELS) and clf.preprocess.input_size == (32, 32)
    _assert_image_gradient(clf, 32)
    other = load_classifier(f"clip:{tmp_path / 'clip'}#template=a drawing of {{label}}", labels=labels)
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(clf(images), other(images))  # the prompt template matters
    assert load_classifier(f"clip:{tmp_path / 'clip'}").num_classes == 1000  # ImageNet names by default
    backend = DiffusersBackend(tiny_pipeline("sd1"))
    result = train_class_token(backend, clf, 1, "tiger cat", TrainConfig(
        batch_size=2, lr=0.1, max_steps=6, backprop_depth=TINY_SAMPLING.sampling_steps, sampling=TINY_SAMPLING,
        accuracy_threshold=1.0, patience=6))
    losses = [r.loss for r in result.history]
    assert min(losses[1:]) < losses[0]  # the token moves the zero-shot verdict toward the target text


def test_ensemble_averages_log_probabilities(tmp_path):
    paths = []
    for i, name in enumerate(["test_resnet", "test_efficientnet"]):
        torch.manual_seed(i)
        model = timm.create_model(name, pretrained=False, num_classes=len(LABELS))
        paths.append(tmp_path / f"{name}.safetensors")
        save_file(model.state_dict(), str(paths[-1]))
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(LABELS))
    specs = [f"timm:test_resnet@{paths[0]}", f"timm:test_efficientnet@{paths[1]}"]
    ens = load_classifiers(specs, labels=labels)
    assert isinstance(ens, EnsembleClassifier) and ens.labels == LABELS
    images = torch.rand(2, 3, 48, 48)
    with torch.no_grad():
        parts = [m(images).log_softmax(-1) for m in ens.members]
        torch.testing.assert_close(ens(images), (parts[0] + parts[1]) / 2)
    _assert_image_gradient(ens)
    with pytest.raises(DCTError, match="in an ensemble write timm:<name>@FILE"):
        load_classifiers(specs, weights=paths[0])
    small = ImageClassifier(torch.nn.Linear(1, 2), ["a", "b"], Preprocess())
    with pytest.raises(DCTError, match="disagree on the classes"):
        EnsembleClassifier([ens.members[0], small])


def test_off_target_needs_a_multi_label_classifier():
    clf = ImageClassifier(torch.nn.Linear(1, 2), ["a", "b"], Preprocess())
    with pytest.raises(DCTError, match="multi-label"):
        clf.loss(torch.zeros(1, 2), 0, on=False)


def test_a_timm_folder_with_a_malicious_pickle_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "evil"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architecture": "test_resnet", "num_classes": 3}))
    with open(folder / "pytorch_model.bin", "wb") as f:
        pickle.dump({"fc.weight": EvilPickle(tmp_path / "PWNED_MARKER")}, f)
    with pytest.raises(DCTError, match="refus(ed|ing)"):
        load_classifier(str(folder))
    assert not (tmp_path / "PWNED_MARKER").exists()


def test_unknown_forms_say_what_is_accepted(tmp_path):
    (tmp_path / "weights.safetensors").write_bytes(b"x")
    with pytest.raises(DCTError, match="timm:<architecture> --classifier-weights"):
        load_classifier(str(tmp_path / "weights.safetensors"))
    with pytest.raises(DCTError, match="unknown classifier option"):
        load_classifier("timm:test_resnet#colour=red")
    _tiny_clip_folder(tmp_path / "clip")
    with pytest.raises(DCTError, match="clip:"):
        load_classifier(str(tmp_path / "clip"))


def test_labels_and_classifier_info_commands(capsys):
    assert main(["labels", "timm:test_resnet", "--search", "tiger"]) == 0
    out = capsys.readouterr().out
    assert "   282  tiger cat" in out and "   292  tiger, Panthera tigris" in out and "tabby" not in out
    assert main(["labels", "timm:test_resnet", "--search", "zzzz"]) == 2
    assert "no label contains" in capsys.readouterr().err
    assert main(["classifier-info", "timm:test_resnet"]) == 0
    out = capsys.readouterr().out
    assert "1000 classes" in out and "input 160x160" in out and "crop_pct 0.95, bilinear, mean (0.5, 0.5, 0.5)" in out


def test_classifier_gradient_checkpointing_keeps_the_gradient(tmp_path):
    from timm.models._hub import save_for_hf

    torch.manual_seed(0)
    model = timm.create_model("test_vit", pretrained=False, num_classes=len(LABELS))
    save_for_hf(model, str(tmp_path / "vit"), model_config={"label_names": LABELS})
    images = torch.rand(2, 3, 48, 48, requires_grad=True)
    grads = []
    for flag in (False, True):
        clf = load_classifier(str(tmp_path / "vit"), grad_checkpointing=flag)
        assert clf.module.grad_checkpointing is flag
        images.grad = None
        clf(images)[:, 1].sum().backward()
        grads.append(images.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_zero_shot_from_open_clip_weights(tmp_path):
    open_clip = pytest.importorskip("open_clip")
    from open_clip import factory

    factory._MODEL_CONFIGS["dct-tiny-test"] = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 2},
    }
    torch.manual_seed(0)
    model = open_clip.create_model("dct-tiny-test", pretrained=None).eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "open_clip_model.safetensors"))
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(LABELS))
    clf = load_classifier(f"clip:{tmp_path / 'open_clip_model.safetensors'}#arch=dct-tiny-test", labels=labels)
    assert clf.num_classes == len(LABELS) and clf.preprocess.input_size == (32, 32)
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        tok = open_clip.get_tokenizer("dct-tiny-test")
        text = model.encode_text(tok([f"a photo of a {n.split(',')[0]}" for n in LABELS]))
        image = model.encode_image(clf.preprocess(images))
        expected = model.logit_scale.exp() * (image / image.norm(dim=-1, keepdim=True)) @ (
            text / text.norm(dim=-1, keepdim=True)).T
        torch.testing.assert_close(clf(images), expected)
    _assert_image_gradient(clf, 32)
    with pytest.raises(DCTError, match="#arch="):
        load_classifier(f"clip:{tmp_path / 'open_clip_model.safetensors'}", labels=labels)


def test_every_loader_reports_a_label_count_mismatch_alike(tmp_path):
    from timm.models._hub import save_for_hf

    model = timm.create_model("test_resnet", pretrained=False, num_classes=3)
    save_file(model.state_dict(), str(tmp_path / "rn.safetensors"))
    save_for_hf(model, str(tmp_path / "hub"))
    _tiny_vit_folder(tmp_path / "vit")
    torch.jit.script(_TinyCNN(3)).save(str(tmp_path / "ts.pt"))
    specs = [f"timm:test_resnet@{tmp_path / 'rn.safetensors'}", str(tmp_path / "hub"), str(tmp_path / "vit"),
             str(tmp_path / "ts.pt")]
    for spec in specs:
        with pytest.raises(DCTError) as error:
            load_classifier(spec, labels=["a", "b"], trust_code=True)
        assert re.fullmatch(r"the labels list has 2 names but the classifier '[^']+' outputs [35] classes; "
                            r"give one name per class, in class-index order\.", str(error.value)), spec


def test_paths_with_a_hash_are_not_split_into_options(tmp_path):
    from timm.models._hub import save_for_hf

    scripted = tmp_path / "my#model.pt"
    torch.jit.script(_TinyCNN(3)).save(str(scripted))
    (tmp_path / "my#model.pt.json").write_text(json.dumps({"labels": LABELS[:3], "input_size": 24}))
    assert load_classifier(str(scripted), trust_code=True).labels == LABELS[:3]
    assert load_classifier(f"{scripted}#multi_label=true", trust_code=True).multi_label
    model = timm.create_model("test_resnet", pretrained=False, num_classes=3)
    save_for_hf(model, str(tmp_path / "run#3"), model_config={"label_names": LABELS[:3]})
    assert load_classifier(str(tmp_path / "run#3")).labels == LABELS[:3]
    assert load_classifier(str(tmp_path / "run#3") + "#multi_label=true").multi_label
    save_file(model.state_dict(), str(tmp_path / "w#1.safetensors"))
    assert load_classifier(f"timm:test_resnet@{tmp_path / 'w#1.safetensors'}").num_classes == 3
    with pytest.raises(DCTError, match="'.*x#3' is neither an existing file or folder"):
        load_classifier(str(tmp_path / "x#3"))
    with pytest.raises(DCTError, match="options after '#' look like #pooling=mean"):
        load_classifier(str(tmp_path / "run#3") + "#pooling")


def _folder_with_config(path, config_text):
    path.mkdir()
    (path / "config.json").write_text(config_text)
    return path


def test_model_folder_configs_are_checked_by_the_loader_and_the_label_lookup_alike(tmp_path):
    from dct_core.classifiers.label_lookup import quick_labels

    cases = [
        (_folder_with_config(tmp_path / "broken", '{"architecture": "test_resnet",\n'), "not valid JSON: .* line 2"),
        (_folder_with_config(tmp_path / "list", "[1, 2]"), "config.json holds a list; it must be a JSON object"),
        (_folder_with_config(tmp_path / "clip", '{"model_type": "clip"}'), "CLIP model"),
        (_folder_with_config(tmp_path / "bad-names", '{"architecture": "test_resnet", "label_names": [1, [2]]}'),
         "entry 1 of label_names in config.json is a list"),
        (_folder_with_config(tmp_path / "arch", '{"architecture": 5}'), "'architecture' in .* must be a timm"),
        (_folder_with_config(tmp_path / "count", '{"architecture": "test_resnet", "num_classes": "3"}'),
         "'num_classes' in config.json must be a positive whole number, not '3'"),
    ]
    (tmp_path / "empty").mkdir()
    cases.append((tmp_path / "empty", "has no config.json"))
    for folder, message in cases:
        for load in (load_classifier, quick_labels):
            with pytest.raises(DCTError, match=message):
                load(str(folder))
    sparse = {"model_type": "vit", "id2label": {"0": "a", "2": "b"}}
    folder = _folder_with_config(tmp_path / "sparse", json.dumps(sparse))
    with pytest.raises(DCTError, match="no name for class index 1"):
        quick_labels(folder)


def test_a_broken_image_processor_config_is_a_clear_error(tmp_path):
    _tiny_vit_folder(tmp_path / "vit")
    (tmp_path / "vit" / "preprocessor_config.json").write_text('{"size": 32,}')
    with pytest.raises(DCTError, match="image processor config .*preprocessor_config.json is not valid JSON"):
        load_classifier(str(tmp_path / "vit"))
