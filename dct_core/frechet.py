"""Fréchet distance between generated and reference images in the feature space of a classifier the user names.

No Inception weights are shipped or downloaded: the features are the penultimate activations (pre-logits) of an
ordinary classifier, so the number is comparable only between runs that use the same feature classifier and the
same numbers of images (the distance is biased upward for small sets).

What "features" means for each classifier kind (:func:`classifier_features`):

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

from collections.abc import Callable
from typing import Any

import torch

from .classifiers import Classifier, EnsembleClassifier, ImageClassifier
from .errors import DCTError

FeatureFn = Callable[[torch.Tensor], torch.Tensor]
HF_HEAD_NAMES = ("classifier", "cls_classifier", "head")


def feature_source(classifier: Classifier) -> ImageClassifier:
    """The single classifier whose features are used: the classifier itself, or an ensemble's first member."""
    if isinstance(classifier, EnsembleClassifier):
        return classifier.members[0]
    if not isinstance(classifier, ImageClassifier):
        raise DCTError(f"cannot take image features from {classifier.name} ({type(classifier).__name__}); "
                       f"name a timm, transformers or CLIP classifier for the features.")
    return classifier


def _head_input(module: torch.nn.Module, head: torch.nn.Module) -> FeatureFn:
    """Runs ``module`` and returns what ``head`` received (its last call), flattened to [B, D]."""

    def run(x: torch.Tensor) -> torch.Tensor:
        seen: list[torch.Tensor] = []

        def hook(_mod: torch.nn.Module, args: tuple[Any, ...]) -> None:
            seen.append(args[0])

        handle = head.register_forward_pre_hook(hook)
        try:
            module(x)
        finally:
            handle.remove()
        if not seen:
            raise DCTError("the classifier's head was not called in its forward pass; cannot take its features.")
        return seen[-1].flatten(1)

    return run


def _last_linear(classifier: ImageClassifier) -> FeatureFn:
    module = classifier.module
    if isinstance(module, torch.jit.ScriptModule):
        raise DCTError(f"{classifier.name} is TorchScript, whose layers cannot be read from outside; name a timm, "
                       f"transformers or CLIP classifier for the features.")
    linears = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
    if not linears:
        raise DCTError(f"{classifier.name} has no linear head layer to take features from; name a timm, "
                       f"transformers or CLIP classifier for the features.")
    head = linears[-1]
    if head.out_features != classifier.num_classes:
        raise DCTError(f"the last linear layer of {classifier.name} gives {head.out_features} outputs, not its "
                       f"{classifier.num_classes} classes, so it is not the head; name another classifier for "
                       f"the features.")
    return _head_input(module, head)


def feature_function(classifier: ImageClassifier) -> FeatureFn:
    """Preprocessed (normalized) images -> features [B, ...] for one classifier; see the module docstring."""
    from .classifiers.clip_source import ZeroShotLogits
    from .classifiers.hf_source import HFLogits

    module: Any = classifier.module
    if isinstance(module, ZeroShotLogits):
        return module.image_features
    if isinstance(module, HFLogits):
        model = module.model
        if module.pooling == "mean":  # as HFLogits: the final norm of the mean patch token
            vit = model.vit

            def mean_patch(x: torch.Tensor) -> torch.Tensor:
                hidden = vit(pixel_values=x, output_hidden_states=True).hidden_states[-1]
                return vit.layernorm(hidden[:, 1:].mean(1))

            return mean_patch
        head = next((getattr(model, n) for n in HF_HEAD_NAMES if isinstance(getattr(model, n, None), torch.nn.Module)),
                    None)
        return _head_input(module, head) if head is not None else _last_linear(classifier)
    if callable(getattr(module, "forward_features", None)) and callable(getattr(module, "forward_head", None)):
        return lambda x: module.forward_head(module.forward_features(x), pre_logits=True)  # timm
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
