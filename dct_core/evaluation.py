"""Top-1/top-5 accuracy of generated images with and without a class token, on the same seeds and prompts,
under one or more classifiers (the paper's Table 1 protocol): used by ``dct eval`` and ``dct demo``."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

from .backend import Backend, Vectors
from .classifiers import Classifier
from .config import SamplingConfig
from .generation import generate_images, topk_accuracy
from .prompts import prompts_for_batch, strip_token

WITHOUT, WITH = "without token", "with token"


def score(classifier: Classifier, images: torch.Tensor, target: int, target_on: bool = True) -> dict:
    """{"top1", "top5"}; for a multi-label classifier top1 is the rate of images with the attribute as wanted."""
    device = next(classifier.module.parameters()).device
    with torch.no_grad():
        logits = classifier(images.to(device))
    if classifier.multi_label:
        return {"top1": float(classifier.hits(logits, target, target_on).float().mean()), "top5": None}
    acc = topk_accuracy(logits, target)
    return {"top1": acc[1], "top5": acc[5]}


def compare_with_token(
    backend: Backend,
    classifiers: Mapping[str, Classifier],
    target: str | int,
    prompt_label: str,
    templates: Sequence[str],
    vectors: dict[str, torch.Tensor] | None,
    seeds: Sequence[int],
    sampling: SamplingConfig,
    *,
    target_on: bool = True,
    chunk: int = 4,
    should_cancel: Callable[[], bool] | None = None,
) -> tuple[dict[str, dict[str, dict]], dict[str, torch.Tensor]]:
    """Accuracy per classifier name and condition, and the images per condition ([N, 3, H, W] in [0, 1]).
    ``target`` is a class name (resolved in each classifier) or an index.

    Image i uses template i mod len(templates) and seed i in both conditions; without the token the marker is
    simply removed from the prompt. ``chunk`` images are generated at once (small models: raise it)."""
    prompts = prompts_for_batch(templates, prompt_label, len(seeds))
    conditions: dict[str, tuple[list[str], Vectors | None]] = {WITHOUT: ([strip_token(p) for p in prompts], None)}
    if vectors is not None:
        conditions[WITH] = (prompts, vectors)
    results: dict[str, dict[str, dict]] = {name: {} for name in classifiers}
    images = {}
    for condition, (ps, vecs) in conditions.items():
        images[condition] = generate_images(backend, ps, seeds, sampling, vecs, chunk=chunk,
                                            should_cancel=should_cancel)
        for name, classifier in classifiers.items():
            index = classifier.class_index(target)
            results[name][condition] = score(classifier, images[condition], index, target_on)
    return results, images
