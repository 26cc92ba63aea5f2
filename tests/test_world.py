"""The demo world: procedural scenes, the space-to-depth autoencoder, the committed weights, the recorded
numbers they must reproduce, and a reduced demo as a guard of the method's efficacy."""

import json

import pytest
import torch

from dct_core.jobs.demo import run_demo
from dct_core.method.evaluation import WITH, WITHOUT
from dct_core.world import WEIGHTS_DIR, load_world_backend, load_world_classifier
from dct_core.world.classifier_training import accuracy
from dct_core.world.facts import DEMO_CLASSES
from dct_core.world.model import SpaceToDepthAutoencoder
from dct_core.world.scenes import AMBIGUOUS, CLASSES, FINE_DETAIL, LABELS, sample_scenes
from dct_core.world.train import record_baseline


def _record() -> dict:
    """What the training script recorded next to the committed weights."""
    return json.loads((WEIGHTS_DIR / "training.json").read_text())


def test_scenes_are_reproducible_and_captions_coarse():
    a, b = (sample_scenes(64, torch.Generator().manual_seed(3)) for _ in range(2))
    assert torch.equal(a.images, b.images) and a.captions == b.captions
    assert a.images.shape == (64, 3, 32, 32) and 0 <= a.images.min() and a.images.max() <= 1
    coarse = sample_scenes(200, torch.Generator().manual_seed(4), fine_rate=0.0)
    for label, text in zip(coarse.labels.tolist(), coarse.captions):
        assert text.split()[-1] == CLASSES[label].noun  # the coarse word only
        assert "throat" not in text and "toy" not in text
    nouns = {c.label: c.noun for c in CLASSES}
    assert nouns[AMBIGUOUS[0]] == nouns[AMBIGUOUS[1]] and nouns[FINE_DETAIL[0]] == nouns[FINE_DETAIL[1]]


def test_fine_detail_classes_differ_only_in_the_throat():
    g1, g2 = (torch.Generator().manual_seed(7) for _ in range(2))
    from dct_core.world.scenes import render

    red, _ = render(torch.full((8,), LABELS.index(FINE_DETAIL[0])), g1)
    yellow, _ = render(torch.full((8,), LABELS.index(FINE_DETAIL[1])), g2)
    differs = (red - yellow).abs().amax(1) > 0.05  # [8, 32, 32]
    assert differs.any()
    assert differs.float().mean() < 0.05  # a small patch: about 3% of the pixels


def test_space_to_depth_autoencoder_is_lossless_and_differentiable():
    vae = SpaceToDepthAutoencoder()
    images = torch.rand(2, 3, 32, 32, requires_grad=True)
    latents = vae.encode_latents(images)
    assert latents.shape == (2, 12, 16, 16)
    out = vae.decode(latents).sample
    assert torch.equal(out, images)
    out.sum().backward()
    assert torch.equal(images.grad, torch.ones_like(images))


def test_committed_weights_are_small_and_load():
    total = sum(p.stat().st_size for p in WEIGHTS_DIR.rglob("*") if p.is_file())
    assert total <= 20 * 2**20, f"demo world weights are {total / 2**20:.1f} MB"
    backend = load_world_backend()
    assert backend.latent_scale == 2 and backend.encoders == {"clip_l": 64}
    assert backend.pipe.scheduler.config.clip_sample  # pixels as latents: x0 stays in range
    for role in ("guide", "held-out"):
        classifier = load_world_classifier(role)
        assert classifier.labels == LABELS and classifier.name == f"world:{role}"


def test_classifiers_reproduce_recorded_accuracy():
    record = _record()
    test = sample_scenes(2000, torch.Generator().manual_seed(10_000 + record["seed"] + 1))
    for role, recorded in record["classifiers"].items():
        model = load_world_classifier(role).module
        assert accuracy(model, test.images, test.labels) == pytest.approx(recorded["accuracy_clean"], abs=0.003)
        assert recorded["accuracy_clean"] > 0.97


def test_committed_world_reproduces_recorded_baseline():
    """The no-token accuracy of the demo classes on the demo's first fresh seeds, as recorded at training time
    (one image of slack per class for float differences between machines)."""
    recorded = _record()["baseline"]
    now = record_baseline(WEIGHTS_DIR, recorded["num_images"])
    slack = 1 / recorded["num_images"] + 1e-6
    for label, per_classifier in recorded["classes"].items():
        for name, acc in per_classifier.items():
            assert now["classes"][label][name]["top1"] == pytest.approx(acc["top1"], abs=slack), (label, name)


# Reduced `dct demo` (default recipe) measured: toy kite (12 steps, 32 fresh seeds) +43.8 held-out points; the
# warbler learns later with the colour words kept free (12 steps: +6.2 on 64 seeds), so it runs the demo's full
# 25 steps on its 64 seeds: +17.2 (the full demo's numbers are in the README).
GUARD = {"toy kite": (0.25, 12, 32), "red-throated warbler": (0.10, 25, 64)}  # least gain, steps, images


@pytest.mark.parametrize("target", DEMO_CLASSES, ids=lambda c: c.kind)
def test_the_default_recipe_teaches_the_class_and_keeps_the_variety(tmp_path, target):
    """Guards the method's efficacy AND what it must leave alone: the token must raise the held-out classifier's
    top-1, keep the colour and the other free attributes about as varied as the prompt alone, and bring the images
    closer to real renders of the class. Below these bounds the method, the world or a default has broken."""
    least, steps, images = GUARD[target.label]
    report = run_demo(tmp_path, classes=[target.label], steps=steps, num_images=images, json_path=tmp_path / "t.json")
    row = report.rows[0]
    held_out = row.accuracy["world:held-out"]
    gain = held_out[WITH]["top1"] - held_out[WITHOUT]["top1"]
    assert gain >= least, f"held-out {held_out[WITHOUT]['top1']:.2f} -> {held_out[WITH]['top1']:.2f}"
    ratio = row.quality["variety"]["ratio"]
    assert ratio["color"] >= 0.85 and ratio["total"] >= 0.9, ratio
    assert row.quality["frechet"]["with"] < row.quality["frechet"]["without"]
    assert abs(row.quality["fooling_gap"]) <= 0.25
    data = json.loads((tmp_path / "t.json").read_text())
    assert data["classifiers"] == {"guiding": "world:guide", "held_out": "world:held-out"}
    assert set(data["classes"][0]["accuracy"]) == {"world:guide", "world:held-out"}
    assert (tmp_path / "before-after.png").is_file() and row.token_path.is_file()


def test_redrawn_scenes_keep_their_class_and_look_like_the_model():
    from dct_core.world.model import load_world_pipeline
    from dct_core.world.redraw import redrawn_scenes

    images, labels = redrawn_scenes(load_world_pipeline(WEIGHTS_DIR), 8, torch.Generator().manual_seed(1), chunk=8)
    renders = sample_scenes(8, torch.Generator().manual_seed(1))
    assert torch.equal(labels, renders.labels) and images.shape == renders.images.shape
    diff = (images - renders.images).abs().mean().item()
    assert 0.005 < diff < 0.15  # redrawn, not copied, and still the same scene


def test_training_script_builds_a_loadable_world(tmp_path):
    """The script end to end at toy sizes: every stage writes files the loaders accept and a record."""
    from dct_core.world.train import main as train_main

    argv = ["--out", str(tmp_path), "--steps", "2", "--batch", "4", "--save-every", "1", "--classifier-steps", "2",
            "--redrawn", "8"]
    assert train_main(argv) == 0
    record = json.loads((tmp_path / "training.json").read_text())
    assert record["diffusion"]["steps"] == 2 and set(record["classifiers"]) == {"guide", "held-out"}
    assert set(record["baseline"]["classes"]) == {c.label for c in DEMO_CLASSES}
    backend = load_world_backend(folder=tmp_path)
    assert backend.unet.config.in_channels == 12
    assert load_world_classifier("held-out", tmp_path).labels == LABELS


def test_demo_cancel_keeps_the_best_token_and_reports_nothing_half_done(tmp_path):
    seen = []
    report = run_demo(tmp_path, steps=5, num_images=4, on_step=lambda record, images: seen.append(record),
                      should_cancel=lambda: len(seen) >= 2)
    assert report.cancelled and report.rows == [] and report.grid_path is None
    assert len(seen) == 2 and [p.name for p in report.token_paths] == ["toy-kite.safetensors"]
    assert report.token_paths[0].is_file() and not (tmp_path / "before-after.png").exists()
