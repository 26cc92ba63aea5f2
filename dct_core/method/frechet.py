"""Fréchet distance between generated and reference images in the feature space of a classifier the user names.

No Inception weights are shipped or downloaded: the features are the penultimate activations (pre-logits) of an
ordinary classifier, so the number is comparable only between runs that use the same feature classifier and the
same numbers of images (the distance is biased upward for small sets).

What "features" means for each classifier kind (:func:`classifier_features`) is the ``features`` of each registered
classifier source (dct_core.registry), the first that recognizes the classifier; for the built-in kinds:

- timm models: ``forward_head(forward_features(x), pre_logits=True)``, the pooled vector the head reads;
- transformers image classifiers: the input of the ``classifier`` head (the CLS token after the final norm for
  ViT, the pooled output for Swin/ConvNeXt/BEiT/ResNet), or with ``#pooling=mean`` the normalized mean patch token;
- zero-shot CLIP (transformers or open_clip): the image embedding (``get_image_features`` / ``encode_image``),
  before the L2 normalization used for the logits;
- any other module: the input of its last ``nn.Linear`` layer, which must be the head (its outputs = the classes);
  TorchScript modules cannot be hooked and are refused with a hint to name another classifier;
- an ensemble: its first member (concatenating members would mix feature scales and let the widest dominate).
"""

from __future__ import annotations

from typing import Any

import torch

from ..classifiers import Classifier, EnsembleClassifier, ImageClassifier
from ..classifiers.features import FeatureFn
from ..classifiers.features import last_linear as _last_linear
from ..errors import DCTError
from ..registry import classifier_sources


def feature_source(classifier: Classifier) -> ImageClassifier:
    """The single classifier whose features are used: the classifier itself, or an ensemble's first member."""
    if isinstance(classifier, EnsembleClassifier):
        return classifier.members[0]
    if not isinstance(classifier, ImageClassifier):
        raise DCTError(f"cannot take image features from {classifier.name} ({type(classifier).__name__}); "
                       f"name a timm, transformers or CLIP classifier for the features.")
    return classifier


def feature_function(classifier: ImageClassifier) -> FeatureFn:
    """Preprocessed (normalized) images -> features [B, ...] for one classifier: the first registered source
    that recognizes it answers, else the input of its last linear layer; see the module docstring."""
    for source in classifier_sources():
        if source.features is not None and (features := source.features(classifier)) is not None:
            return features
    return _last_linear(classifier)


@torch.no_grad()
def classifier_features(classifier: Classifier, images: torch.Tensor, *, chunk: int = 64) -> torch.Tensor:
    """Penultimate features [N, D] (float32, on the CPU) of images [N, 3, H, W] in [0, 1], through the
    classifier's own preprocessing, ``chunk`` images at a time, without gradients."""
    source = feature_source(classifier)
    if images.ndim != 4 or images.shape[1] != 3:
        raise DCTError(f"images must be [N, 3, H, W], not {list(images.shape)}.")
    if images.shape[0] == 0:
        raise DCTError("no images to take features from.")
    param = next(source.module.parameters(), None)
    device = param.device if param is not None else images.device
    dtype = param.dtype if param is not None else torch.float32
    features = feature_function(source)
    out = []
    for start in range(0, images.shape[0], max(1, chunk)):
        x = source.preprocess(images[start : start + max(1, chunk)].to(device).float()).to(dtype)
        out.append(features(x).flatten(1).float().cpu())
    return torch.cat(out)


def _as_float64(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.ndim != 2:
        raise DCTError(f"{name} features must be [N, D], not {list(x.shape)}.")
    if x.shape[0] < 2:
        raise DCTError(f"the Fréchet distance needs at least 2 images per set; {name} has {x.shape[0]}.")
    x = x.detach().to("cpu", torch.float64)
    if not torch.isfinite(x).all():
        raise DCTError(f"{name} features contain NaN or infinite values.")
    return x


def _psd_sqrt(s: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix; tiny negative eigenvalues (rounding) become 0."""
    values, vectors = torch.linalg.eigh((s + s.T) / 2)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def _trace_sqrt_cov(xa: torch.Tensor, xb: torch.Tensor) -> torch.Tensor:
    """Tr((Sa^1/2 Sb Sa^1/2)^1/2) from centered features, through the D x D covariances: the nuclear norm of
    Sa^1/2 Sb^1/2, as (Sa^1/2 Sb^1/2)(Sa^1/2 Sb^1/2)^T = Sa^1/2 Sb Sa^1/2."""
    sa = xa.T @ xa / (xa.shape[0] - 1)
    sb = xb.T @ xb / (xb.shape[0] - 1)
    return torch.linalg.svdvals(_psd_sqrt(sa) @ _psd_sqrt(sb)).sum()


def _trace_sqrt_gram(xa: torch.Tensor, xb: torch.Tensor) -> torch.Tensor:
    """The same trace through the N x M cross-Gram matrix, exact for any rank: the nonzero eigenvalues of
    Sa Sb = Xa^T Xa Xb^T Xb / c are those of (Xa Xb^T)(Xa Xb^T)^T / c, so the trace is ||Xa Xb^T||_* / sqrt(c)
    with c = (N - 1)(M - 1)."""
    c = (xa.shape[0] - 1) * (xb.shape[0] - 1)
    return torch.linalg.svdvals(xa @ xb.T).sum() / c**0.5


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """||mu_a - mu_b||^2 + Tr(Sa + Sb - 2 (Sa^1/2 Sb Sa^1/2)^1/2) between feature sets a [N, D] and b [M, D]
    (unbiased covariances), in float64. Works for N, M < D (rank-deficient covariances): the trace of the matrix
    square root is computed through whichever of the cross-Gram (N x M) or covariance (D x D) form is smaller."""
    a, b = _as_float64(a, "the first set's"), _as_float64(b, "the second set's")
    if a.shape[1] != b.shape[1]:
        raise DCTError(f"feature widths differ: {a.shape[1]} and {b.shape[1]}; use the same feature classifier.")
    mu_a, mu_b = a.mean(0), b.mean(0)
    xa, xb = a - mu_a, b - mu_b
    n, m, d = a.shape[0], b.shape[0], a.shape[1]
    trace_a = xa.pow(2).sum() / (n - 1)
    trace_b = xb.pow(2).sum() / (m - 1)
    cross = _trace_sqrt_gram(xa, xb) if n * m <= d * d else _trace_sqrt_cov(xa, xb)
    distance = (mu_a - mu_b).pow(2).sum() + trace_a + trace_b - 2 * cross
    return max(float(distance), 0.0)


def frechet_with_and_without(
    classifier: Classifier,
    reference_images: torch.Tensor,
    without_images: torch.Tensor,
    with_images: torch.Tensor | None = None,
    *,
    chunk: int = 64,
) -> dict[str, Any]:
    """Fréchet distance of the images generated without and with the token to the reference images, all
    [N, 3, H, W] in [0, 1], in ``classifier``'s feature space: {"without", "with" (None without ``with_images``),
    "feature_dim", "reference_images", "generated_images", "feature_classifier"}. Lower is closer."""
    source = feature_source(classifier)
    reference = classifier_features(source, reference_images, chunk=chunk)
    report: dict[str, Any] = {
        "without": frechet_distance(classifier_features(source, without_images, chunk=chunk), reference),
        "with": None,
        "feature_dim": int(reference.shape[1]),
        "reference_images": int(reference.shape[0]),
        "generated_images": int(without_images.shape[0]),
        "feature_classifier": source.name,
    }
    if with_images is not None:
        report["with"] = frechet_distance(classifier_features(source, with_images, chunk=chunk), reference)
    return report
