"""Variety on the demo world: the scene generator's attribute draws, the committed attribute reader and the
entropy of what it reads."""

import json
import math
import time

import pytest
import torch

from dct_core.errors import DCTError
from dct_core.world import scenes
from dct_core.world.attributes import (
    ATTRIBUTES,
    AttributeReader,
    attribute_entropy,
    attribute_targets,
    default_folder,
    entropy_bits,
    load_attribute_reader,
    render_attribute_scenes,
    train_attribute_reader,
)
from dct_core.world.scenes import BIRD_COLORS, COLOR_NAMES, LABELS, render, render_with_attributes, sample_scenes


def _reference_render(labels, g, size=scenes.RESOLUTION):
    """``scenes.render`` as it was when the world's weights and baselines were recorded (verbatim): the
    refactored renderer must reproduce it bit for bit."""
    n = labels.shape[0]
    images = scenes._background(n, size, g)
    u, v = scenes._grid(n, size)
    cx, cy = ((torch.rand(2, n, 1, 1, generator=g) - 0.5) * 0.5).unbind(0)
    scale = torch.rand(n, 1, 1, generator=g) * 0.25 + 0.5
    angle = (torch.rand(n, 1, 1, generator=g) - 0.5) * math.radians(24)
    flip = torch.where(torch.rand(n, 1, 1, generator=g) < 0.5, -1.0, 1.0)
    du, dv = u - cx, v - cy
    x = (du * torch.cos(angle) + dv * torch.sin(angle)) / scale * flip
    y = (-du * torch.sin(angle) + dv * torch.cos(angle)) / scale
    edge = 2.0 / size / scale
    color_names = []
    for i, idx in enumerate(labels.tolist()):
        cls = scenes.CLASSES[idx]
        palette = scenes.BIRD_COLORS if cls.label in scenes.THROAT else tuple(scenes.COLORS)
        name = palette[int(torch.randint(len(palette), (1,), generator=g))]
        color_names.append(name)
        color = torch.tensor(scenes.COLORS[name]).view(3, 1, 1) * (0.85 + 0.15 * torch.rand(1, generator=g))
        cover = scenes._soft(scenes._shape_sdf(cls.label, x[i], y[i]), edge[i])
        images[i] = images[i] * (1 - cover) + color * cover
        if cls.label in scenes.THROAT:
            patch = scenes._soft(scenes._throat_sdf(x[i], y[i]), edge[i] * 2.5) * cover
            images[i] = images[i] * (1 - patch) + torch.tensor(scenes.THROAT[cls.label]).view(3, 1, 1) * patch
    noise = torch.randn(images.shape, generator=g) * 0.02
    return (images + noise).clamp(0, 1), color_names


@pytest.fixture(scope="module")
def reader() -> AttributeReader:
    torch.set_num_threads(1)
    return load_attribute_reader()


def _one_class(label: str, n: int, seed: int, color: str | None = None) -> torch.Tensor:
    labels = torch.full((n,), LABELS.index(label))
    return render_with_attributes(labels, torch.Generator().manual_seed(seed), color=color)[0]


def test_render_outputs_unchanged_by_the_attribute_refactor():
    labels = torch.arange(len(LABELS)).repeat(6)
    for seed in (0, 11):
        ref_images, ref_colors = _reference_render(labels, torch.Generator().manual_seed(seed))
        images, colors = render(labels, torch.Generator().manual_seed(seed))
        assert torch.equal(images, ref_images) and colors == ref_colors
        images, drawn = render_with_attributes(labels, torch.Generator().manual_seed(seed))
        assert torch.equal(images, ref_images) and [COLOR_NAMES[i] for i in drawn["color"]] == ref_colors
    # sample_scenes draws its classes, then renders, then captions: the same stream as before
    g_ref, g_new = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    ref_labels = torch.randint(len(LABELS), (40,), generator=g_ref)
    ref_images, ref_colors = _reference_render(ref_labels, g_ref)
    ref_captions = [scenes.caption(i, c, g_ref) for i, c in zip(ref_labels.tolist(), ref_colors)]
    batch = sample_scenes(40, g_new)
    assert torch.equal(batch.labels, ref_labels) and torch.equal(batch.images, ref_images)
    assert batch.captions == ref_captions


def test_drawn_attributes_and_forced_colour():
    labels = torch.arange(len(LABELS)).repeat(20)
    images, drawn = render_with_attributes(labels, torch.Generator().manual_seed(1))
    assert set(drawn) >= {"color", "flip", "scale", "cx", "cy"} and all(v.shape == (200,) for v in drawn.values())
    birds = torch.isin(labels, torch.tensor([LABELS.index(b) for b in scenes.THROAT]))
    assert set(drawn["color"][birds].tolist()) <= {COLOR_NAMES.index(c) for c in BIRD_COLORS}
    targets = attribute_targets(labels, drawn)
    for attr, values in ATTRIBUTES.items():
        assert 0 <= targets[attr].min() and targets[attr].max() < len(values)
    for attr in ("size", "x", "y"):  # tertile bins: about equally likely
        counts = torch.bincount(targets[attr], minlength=3).float() / len(labels)
        assert counts.min() > 0.22, (attr, counts)
    forced, forced_drawn = render_with_attributes(labels, torch.Generator().manual_seed(1), color="blue")
    assert (forced_drawn["color"] == COLOR_NAMES.index("blue")).all()
    for key in ("flip", "scale", "cx", "cy"):  # the other draws are the unforced ones
        assert torch.equal(forced_drawn[key], drawn[key])
    with pytest.raises(ValueError, match="never drawn"):
        render_with_attributes(torch.tensor([LABELS.index("red-throated warbler")]), torch.Generator(), color="red")


def test_committed_reader_reads_fresh_renders(reader):
    assert list(reader.heads) == list(ATTRIBUTES) and reader.values("color") == list(COLOR_NAMES)
    record = json.loads((default_folder() / "training.json").read_text())
    images, labels, targets = render_attribute_scenes(600, torch.Generator().manual_seed(2024))
    read = reader.read(images)
    for attr in ATTRIBUTES:
        accuracy = (read[attr] == targets[attr]).float().mean().item()
        assert accuracy >= 0.9, (attr, accuracy)
        assert record["accuracy_renders"][attr] >= 0.9
    assert (read["color"] == targets["color"]).float().mean() >= 0.97


def test_entropy_is_high_for_varied_sets_and_zero_for_one_colour(reader):
    balls = _one_class("ball", 300, seed=3)
    h = attribute_entropy(reader, balls)
    assert h["color"] > math.log2(9) - 0.15, h  # nine colours, equally likely
    assert h["facing"] < 0.1  # a ball has no facing
    for attr in ("size", "x", "y"):
        assert h[attr] > math.log2(3) - 0.15, (attr, h)
    assert h["total"] == pytest.approx(sum(v for k, v in h.items() if k != "total"))
    warblers = _one_class("red-throated warbler", 300, seed=4)
    h = attribute_entropy(reader, warblers)
    assert h["color"] > math.log2(len(BIRD_COLORS)) - 0.15 and h["facing"] > 0.9, h
    purple = attribute_entropy(reader, _one_class("red-throated warbler", 300, seed=4, color="purple"))
    assert purple["color"] < 0.1, purple
    assert purple["total"] < h["total"] - 2.0
    assert attribute_entropy(reader, _one_class("house", 100, seed=5, color="green"))["color"] < 0.1


def test_reading_is_deterministic_and_fast(reader):
    images = render_attribute_scenes(64, torch.Generator().manual_seed(9))[0]
    first = reader.read(images)
    assert all(torch.equal(first[a], b) for a, b in reader.read(images).items())
    assert all(v.shape == (64,) and v.dtype == torch.long for v in first.values())
    assert attribute_entropy(reader, images) == attribute_entropy(reader, images)
    started = time.perf_counter()
    reader.read(images)
    assert time.perf_counter() - started < 2.0  # about 0.05 s on one core; slack for a loaded machine
    assert reader.read(torch.nn.functional.interpolate(images, size=64, mode="bilinear"))["color"].shape == (64,)


def test_entropy_bits():
    assert entropy_bits(torch.tensor([0, 0, 0]), 3) == 0.0
    assert entropy_bits(torch.tensor([0, 1, 2, 3]), 4) == pytest.approx(2.0)
    assert entropy_bits(torch.tensor([0, 0, 1, 1]), 9) == pytest.approx(1.0)
    assert entropy_bits(torch.zeros(0, dtype=torch.long), 3) == 0.0


def test_missing_or_broken_reader_folder(tmp_path, reader):
    with pytest.raises(DCTError, match="no attribute reader"):
        load_attribute_reader(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "test_resnet", "num_classes": 21}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(DCTError, match="attribute_heads"):
        load_attribute_reader(tmp_path)
    with pytest.raises(DCTError, match="no attribute 'hue'"):
        reader.values("hue")
    with pytest.raises(DCTError, match=r"images \[N, 3, H, W\]"):
        reader.read(torch.rand(3, 32, 32))


def test_training_saves_a_loadable_reader(tmp_path):
    torch.set_num_threads(1)
    summary = train_attribute_reader(tmp_path / "r", steps=2, seed=0, batch=8, log=lambda _: None)
    assert set(summary["accuracy_renders"]) >= set(ATTRIBUTES)
    loaded = load_attribute_reader(tmp_path / "r")
    assert loaded.heads == {k: list(v) for k, v in ATTRIBUTES.items()}
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["architecture"].startswith("test_")
    assert config["num_classes"] == sum(len(v) for v in ATTRIBUTES.values())
