"""The `dct` command line end to end on a tiny diffusers folder and a timm classifier file."""

import json

import pytest
import torch
from safetensors.torch import save_file

from conftest import calibrated_classifier
from dct_core.backends.diffusers_backend import DiffusersBackend
from dct_core.cli import main
from dct_core.formats.tokens import load_class_token
from dct_core.testing.tiny import TINY_LABELS, tiny_pipeline

GEN = ["--resolution", "32", "--sampling-steps", "4", "--device", "cpu"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    pipe = tiny_pipeline("sd1")
    pipe.save_pretrained(root / "model")
    classifier = calibrated_classifier(DiffusersBackend(pipe))
    save_file(classifier.module.state_dict(), str(root / "clf.safetensors"))
    (root / "labels.txt").write_text("\n".join(TINY_LABELS) + "\n")
    clf = ["--classifier", "timm:test_resnet", "--classifier-weights", str(root / "clf.safetensors"),
           "--labels", str(root / "labels.txt")]
    return root, clf


def test_train_writes_a_token_that_generate_and_eval_use(files, capsys):
    root, clf = files
    out = root / "tiger-cat.safetensors"
    args = ["train", "--model", str(root / "model"), *clf, "--class", "tiger cat", "--out", str(out), "--steps", "3",
            "--batch-size", "2", "--lr", "0.1", "--backprop-depth", "2", "--preview-every", "1", *GEN]
    assert main(args) == 0
    token = load_class_token(out)
    assert token.vectors["clip_l"].shape == (1, 32)
    assert token.metadata["class_label"] == "tiger cat" and token.metadata["class_index"] == "1"
    assert token.metadata["trained_steps"] == "3" and json.loads(token.metadata["templates"])
    assert (root / "tiger-cat-previews" / "step-0001.png").is_file()
    assert main(args) == 2  # no silent overwrite
    assert "already exists" in capsys.readouterr().err

    gen = root / "gen"
    assert main(["generate", "--model", str(root / "model"), "--token", str(out), "--prompt",
                 "a photo of {token} tiger cat", "--seeds", "0-2", "--out", str(gen), *GEN]) == 0
    assert (gen / "grid.png").is_file() and len(list(gen.glob("with-token-seed*.png"))) == 3
    assert len(list(gen.glob("without-token-seed*.png"))) == 3

    adaptive = root / "adaptive"
    assert main(["generate", "--model", str(root / "model"), "--token", str(out), "--prompt",
                 "a photo of {token} tiger cat", "--seeds", "0-1", "--out", str(adaptive), "--adaptive", *clf,
                 "--class", "tiger cat", "--adaptive-steps", "1,3", "--adaptive-target", "token", *GEN]) == 0
    assert len(list(adaptive.glob("adaptive-seed*.png"))) == 2
    assert main(["generate", "--model", str(root / "model"), "--prompt", "a cat", "--seeds", "0", "--out",
                 str(adaptive), "--adaptive", *GEN]) == 2
    assert "--adaptive needs a classifier" in capsys.readouterr().err

    capsys.readouterr()
    assert main(["eval", "--model", str(root / "model"), *clf, "--class", "1", "--token", str(out),
                 "--num-images", "4", "--json", *GEN]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["results"]) == {"without token", "with token"}
    assert all(0 <= r["top1"] <= r["top5"] <= 1 for r in report["results"].values())


def test_user_mistakes_are_one_line_errors_without_traceback(files, capsys):
    root, clf = files
    base = ["train", "--model", str(root / "model"), *clf, "--out", str(root / "x.safetensors"), *GEN]
    assert main([*base, "--class", "tigr cat"]) == 2
    err = capsys.readouterr().err
    assert "no class named 'tigr cat'" in err and "'tiger cat' (1)" in err and "Traceback" not in err
    assert main([*base, "--class", "1", "--template", "a photo of {label}"]) == 2
    assert "must contain {token}" in capsys.readouterr().err
    assert main(["train", "--model", str(root / "nope"), *clf, "--class", "1", "--out", str(root / "y"), *GEN]) == 2
    assert "error" in capsys.readouterr().err
    wide = root / "wide.safetensors"
    save_file({"emb_params": torch.full((1, 768), 0.01)}, str(wide))
    assert main(["generate", "--model", str(root / "model"), "--token", str(wide), "--prompt", "a {token} cat",
                 "--seeds", "0", "--out", str(root / "g2"), *GEN]) == 2
    assert "need (clip_l: 32)" in capsys.readouterr().err


def test_demo_runs_and_reports(tmp_path, capsys):
    table = tmp_path / "table.json"
    argv = ["demo", "--out", str(tmp_path), "--steps", "2", "--num-images", "4", "--class", "toy kite",
            "--json", str(table)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "world:guide (guide)" in out and "world:held-out" in out and "top-1 without" in out
    data = json.loads(table.read_text())
    assert data["classifiers"] == {"guiding": "world:guide", "held_out": "world:held-out"}
    (row,) = data["classes"]
    assert row["label"] == "toy kite" and row["prompt_word"] == "kite" and 1 <= row["train_steps"] <= 2
    for name in ("world:guide", "world:held-out"):
        assert set(row["accuracy"][name]) == {"without token", "with token"}
    assert (tmp_path / "toy-kite.safetensors").is_file() and (tmp_path / "before-after.png").is_file()
    assert main(["demo", "--out", str(tmp_path), "--class", "tiger cat"]) == 2
    assert "no class 'tiger cat'" in capsys.readouterr().err


def test_eval_on_the_demo_world(capsys):
    argv = ["eval", "--model", "world", "--classifier", "world:held-out", "--class", "kite, bird of prey",
            "--prompt-label", "kite", "--template", "a photo of a {token} {label}", "--num-images", "4", "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["prompt_label"] == "kite" and report["num_images"] == 4
    assert 0 <= report["results"]["without token"]["top1"] <= report["results"]["without token"]["top5"] <= 1


def test_eval_reports_fooling_gap_and_frechet_distance(files, capsys, tmp_path):
    from PIL import Image

    root, clf = files
    out = root / "q.safetensors"
    assert main(["train", "--model", str(root / "model"), *clf, "--class", "tiger cat", "--out", str(out),
                 "--steps", "2", "--batch-size", "2", *GEN]) == 0
    reference = tmp_path / "real"
    reference.mkdir()
    for i in range(4):
        Image.fromarray((torch.rand(32, 32, 3) * 255).byte().numpy()).save(reference / f"{i}.png")
    capsys.readouterr()
    spec = f"timm:test_resnet@{root / 'clf.safetensors'}"
    args = ["eval", "--model", str(root / "model"), *clf, "--class", "tiger cat", "--token", str(out),
            "--num-images", "4", "--held-out", spec, "--reference", str(reference), *GEN]
    assert main([*args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["fooling_gap"] is not None and set(report["judges"]) == {clf[1], f"held-out {spec}"}
    assert report["frechet"]["with"] is not None and report["frechet"]["reference_images"] == 4
    diversity = report["diversity"]  # by default, on any model: the judging classifier's first layer
    assert diversity["ratio"] == diversity["with"] / diversity["without"] and diversity["features"] == clf[1]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "fooling gap" in text and "Frechet distance to 4 real images" in text
    assert "diversity (Vendi of first-layer channel statistics" in text
    assert main([*args[:-len(GEN)], "--reference", "model", *GEN]) == 2
    assert "--reference model needs a built-in model" in capsys.readouterr().err
