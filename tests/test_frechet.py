"""Fréchet distance in a classifier's feature space, the features of each classifier kind, and reference folders."""

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiny_clip_model
from dct_core.classifiers import EnsembleClassifier, ImageClassifier, Preprocess
from dct_core.errors import DCTError
from dct_core.formats.reference_images import load_image_folder
from dct_core.method import frechet
from dct_core.method.frechet import classifier_features, frechet_distance, frechet_with_and_without
from dct_core.testing.tiny import TINY_LABELS, tiny_classifier


def _exact_moments(n, mean, variances, seed):
    """n samples whose sample mean and unbiased sample covariance are exactly ``mean`` and diag(variances)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, len(mean), generator=g, dtype=torch.float64)
    z = z - z.mean(0)
    values, vectors = torch.linalg.eigh(z.T @ z / (n - 1))
    z = z @ (vectors * values.rsqrt()) @ vectors.T  # whitened: sample covariance = I
    return z * variances.sqrt() + mean


def _naive(a, b):
    """The textbook formula with explicit D x D matrix square roots, for comparison."""
    a, b = a.double(), b.double()
    sa, sb = torch.cov(a.T), torch.cov(b.T)
    root = frechet._psd_sqrt(sa)
    inner = torch.linalg.eigvalsh(root @ sb @ root).clamp(min=0).sqrt().sum()
    return float((a.mean(0) - b.mean(0)).pow(2).sum() + sa.trace() + sb.trace() - 2 * inner)


def test_closed_form_for_gaussians_with_diagonal_covariances():
    d = 6
    mu1, mu2 = torch.linspace(-1, 1, d, dtype=torch.float64), torch.linspace(0, 3, d, dtype=torch.float64)
    s1, s2 = torch.linspace(0.5, 4, d, dtype=torch.float64), torch.linspace(2, 0.1, d, dtype=torch.float64)
    a, b = _exact_moments(120, mu1, s1, 0), _exact_moments(80, mu2, s2, 1)
    expected = float((mu1 - mu2).pow(2).sum() + (s1.sqrt() - s2.sqrt()).pow(2).sum())
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(b, a) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(a.float(), b.float()) == pytest.approx(expected, rel=1e-5)
    xa, xb = a - a.mean(0), b - b.mean(0)  # both forms of the cross term give the same trace
    expected_cross = float((s1 * s2).sqrt().sum())
    assert float(frechet._trace_sqrt_gram(xa, xb)) == pytest.approx(expected_cross, rel=1e-9)
    assert float(frechet._trace_sqrt_cov(xa, xb)) == pytest.approx(expected_cross, rel=1e-9)


def test_rank_deficient_sets_fewer_images_than_features():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(12, 64, generator=g, dtype=torch.float64) * torch.linspace(0.1, 3, 64, dtype=torch.float64)
    b = torch.randn(9, 64, generator=g, dtype=torch.float64) + 0.3
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(a, a[torch.randperm(12, generator=g)]) == pytest.approx(0.0, abs=1e-9)
    shift = torch.randn(64, generator=g, dtype=torch.float64)
    assert frechet_distance(a, a + shift) == pytest.approx(float(shift.pow(2).sum()), rel=1e-9)
    k = 2.5  # b = mu + k (a - mu): Sb = k^2 Sa, so FD = (1 - k)^2 Tr(Sa)
    scaled = a.mean(0) + k * (a - a.mean(0))
    assert frechet_distance(a, scaled) == pytest.approx((1 - k) ** 2 * float(torch.cov(a.T).trace()), rel=1e-9)
    fd = frechet_distance(a, b)
    assert fd == pytest.approx(_naive(a, b), rel=1e-6)
    assert fd == pytest.approx(frechet_distance(b, a), rel=1e-9)
    assert fd == pytest.approx(frechet_distance(a[torch.randperm(12, generator=g)], b), rel=1e-9)
    xa, xb = a - a.mean(0), b - b.mean(0)
    assert float(frechet._trace_sqrt_gram(xa, xb)) == pytest.approx(float(frechet._trace_sqrt_cov(xa, xb)), rel=1e-7)


def test_frechet_distance_refuses_bad_inputs():
    with pytest.raises(DCTError, match="at least 2"):
        frechet_distance(torch.zeros(1, 4), torch.zeros(3, 4))
    with pytest.raises(DCTError, match="widths differ"):
        frechet_distance(torch.zeros(3, 4), torch.zeros(3, 5))
    with pytest.raises(DCTError, match="NaN"):
        frechet_distance(torch.full((3, 4), float("nan")), torch.zeros(3, 4))


@pytest.fixture(scope="module")
def tiny():
    return tiny_classifier(torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0)))


def test_timm_features_are_the_pre_logits(tiny):
    images = torch.rand(5, 3, 40, 40, generator=torch.Generator().manual_seed(1))
    features = classifier_features(tiny, images, chunk=2)
    model = tiny.module
    head = model.get_classifier()
    assert features.shape == (5, head.in_features) and features.dtype == torch.float32
    with torch.no_grad():
        x = tiny.preprocess(images)
        expected = model.forward_head(model.forward_features(x), pre_logits=True)
        # chunks of 2 against one batch of 5: the same up to the CPU kernels' batch-size-dependent rounding
        torch.testing.assert_close(features, expected, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(head(features), tiny(images), atol=1e-4, rtol=1e-4)  # what the head reads
        torch.testing.assert_close(frechet._last_linear(tiny)(x), expected, atol=1e-4, rtol=1e-4)  # the fallback
    assert not head._forward_pre_hooks


def test_last_linear_fallback_on_a_plain_module():
    torch.manual_seed(0)
    body = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(8, 16), torch.nn.Tanh())
    head = torch.nn.Linear(16, 3)
    clf = ImageClassifier(torch.nn.Sequential(body, head).eval(), ["a", "b", "c"],
                          Preprocess(input_size=(16, 16), crop_pct=1.0))
    images = torch.rand(4, 3, 16, 16)
    features = classifier_features(clf, images)
    with torch.no_grad():
        torch.testing.assert_close(features, body(clf.preprocess(images)))
    assert not head._forward_pre_hooks
    wrong = ImageClassifier(torch.nn.Sequential(body, head), ["a", "b"], Preprocess(input_size=(16, 16)))
    with pytest.raises(DCTError, match="not its 2 classes"):
        classifier_features(wrong, images)


def test_transformers_vit_features_cls_and_mean_pooling():
    from transformers import ViTConfig, ViTForImageClassification

    from dct_core.classifiers.hf_source import HFLogits

    torch.manual_seed(0)
    config = ViTConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4,
                       image_size=32, patch_size=8, num_labels=3)
    model = ViTForImageClassification(config).eval()
    pre = Preprocess(input_size=(32, 32), crop_pct=1.0, mean=(0.5,) * 3, std=(0.5,) * 3)
    images = torch.rand(3, 3, 32, 32)
    x = pre(images)
    with torch.no_grad():
        cls = classifier_features(ImageClassifier(HFLogits(model), ["a", "b", "c"], pre), images)
        torch.testing.assert_close(cls, model.vit(pixel_values=x).last_hidden_state[:, 0])
        mean = classifier_features(ImageClassifier(HFLogits(model, "mean"), ["a", "b", "c"], pre), images)
        hidden = model.vit(pixel_values=x, output_hidden_states=True).hidden_states[-1]
        torch.testing.assert_close(mean, model.vit.layernorm(hidden[:, 1:].mean(1)))
    assert cls.shape == mean.shape == (3, 32)


def test_zero_shot_clip_features_are_the_image_embeddings():
    from dct_core.classifiers.clip_source import ZeroShotLogits, _features

    model = tiny_clip_model(layers=1)
    text = torch.nn.functional.normalize(torch.randn(4, 16), dim=-1)
    pre = Preprocess(input_size=(32, 32), crop_pct=1.0)
    clf = ImageClassifier(ZeroShotLogits(model, text), list("abcd"), pre)
    images = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        expected = _features(model.get_image_features(pixel_values=pre(images)))
    torch.testing.assert_close(classifier_features(clf, images), expected)


def test_ensemble_uses_its_first_member_and_the_report(tiny):
    other = tiny_classifier(torch.rand(8, 3, 32, 32), seed=1)
    ensemble = EnsembleClassifier([tiny, other])
    g = torch.Generator().manual_seed(2)
    reference, without, with_ = (torch.rand(6, 3, 32, 32, generator=g) for _ in range(3))
    torch.testing.assert_close(classifier_features(ensemble, reference), classifier_features(tiny, reference))
    report = frechet_with_and_without(ensemble, reference, without, with_)
    width = tiny.module.get_classifier().in_features
    assert report["feature_dim"] == width and report["reference_images"] == 6 and report["generated_images"] == 6
    assert report["feature_classifier"] == tiny.name == "tiny-random-resnet"
    assert report["without"] > 0 and report["with"] > 0
    same = frechet_with_and_without(tiny, reference, reference)
    assert same["without"] == pytest.approx(0.0, abs=1e-6) and same["with"] is None
    assert tiny.num_classes == len(TINY_LABELS)


def test_torchscript_is_refused_with_a_hint(tmp_path):
    scripted = torch.jit.trace(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2)).eval(),
                               torch.rand(1, 3, 8, 8))
    clf = ImageClassifier(scripted, ["a", "b"], Preprocess(input_size=(8, 8), crop_pct=1.0), name="attr.pt")
    with pytest.raises(DCTError, match="attr.pt is TorchScript"):
        classifier_features(clf, torch.rand(2, 3, 8, 8))


def _save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)


def test_load_image_folder_order_size_and_crop(tmp_path):
    stripes = np.zeros((20, 40, 3), np.uint8)  # 40 wide, 20 high: red | green | blue
    stripes[:, :10, 0], stripes[:, 10:30, 1], stripes[:, 30:, 2] = 255, 255, 255
    _save(tmp_path / "b.png", stripes)
    _save(tmp_path / "a.bmp", np.full((20, 20, 3), 64))
    _save(tmp_path / "C.JPG", np.full((30, 30, 3), 200))
    _save(tmp_path / "sub" / "d.png", np.full((20, 20, 3), 10))
    Image.fromarray(np.full((20, 20), 128, np.uint8), "L").save(tmp_path / "e.webp", lossless=True)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "._b.png").write_bytes(b"macOS metadata")

    images = load_image_folder(tmp_path, size=20)
    assert images.shape == (4, 3, 20, 20) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1
    torch.testing.assert_close(images[0], torch.full((3, 20, 20), 200 / 255), atol=2 / 255, rtol=0)  # C.JPG
    torch.testing.assert_close(images[1], torch.full((3, 20, 20), 64 / 255))  # a.bmp
    assert torch.equal(images[2], torch.tensor([0.0, 1.0, 0.0]).view(3, 1, 1).expand(3, 20, 20))  # center crop
    torch.testing.assert_close(images[3], torch.full((3, 20, 20), 128 / 255))  # grey webp -> RGB

    assert load_image_folder(tmp_path, size=8, limit=2).shape == (2, 3, 8, 8)
    recursive = load_image_folder(tmp_path, size=20, recursive=True)
    assert recursive.shape[0] == 5
    torch.testing.assert_close(recursive[4], torch.full((3, 20, 20), 10 / 255))  # sub/d.png after e.webp
    assert load_image_folder(tmp_path / "sub").shape == (1, 3, 20, 20)  # without a size: as stored


def test_load_image_folder_errors(tmp_path):
    with pytest.raises(DCTError, match="does not exist"):
        load_image_folder(tmp_path / "missing")
    _save(tmp_path / "one.png", np.zeros((8, 8, 3)))
    with pytest.raises(DCTError, match="is a file"):
        load_image_folder(tmp_path / "one.png")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("x")
    with pytest.raises(DCTError, match="no images"):
        load_image_folder(tmp_path / "empty")
    _save(tmp_path / "two.png", np.zeros((8, 12, 3)))
    with pytest.raises(DCTError, match="differ in size.*give a size"):
        load_image_folder(tmp_path)
    (tmp_path / "zz_broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DCTError, match="cannot read image .*zz_broken.jpg") as info:
        load_image_folder(tmp_path, size=8)
    assert "\n" not in str(info.value)
    with pytest.raises(DCTError, match="positive whole number"):
        load_image_folder(tmp_path, size=0)
    with pytest.raises(DCTError, match="positive whole number"):
        load_image_folder(tmp_path, limit=0)
