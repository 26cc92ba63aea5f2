"""Top-1/top-5 accuracy of generated images with and without a class token, on the same seeds and prompts,
under one or more classifiers (the paper's Table 1 protocol): used by ``dct eval`` and ``dct demo``."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

from ..classifiers import Classifier
from ..config import SamplingConfig
from ..errors import DCTError
from .backend import Backend, Vectors
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


def fooling_gap(results: Mapping[str, Mapping[str, dict]], guide: str, held_out: str) -> float | None:
    """Guide top-1 minus held-out top-1 with the token: how much of the gain only the guide sees."""
    if WITH not in results.get(guide, {}) or WITH not in results.get(held_out, {}):
        return None
    return results[guide][WITH]["top1"] - results[held_out][WITH]["top1"]


def variety_report(images: Mapping[str, torch.Tensor],
                   entropy: Callable[[torch.Tensor], dict[str, float]]) -> dict[str, dict[str, float | None]]:
    """Entropy in bits of each free attribute per condition, and the ratio with / without the token (1 = the
    token left that attribute as varied as the prompt alone; 0 = it fixed it)."""
    bits = {c: entropy(images[c]) for c in (WITHOUT, WITH) if c in images}
    out: dict[str, dict[str, float | None]] = {c: dict(v) for c, v in bits.items()}
    if WITH in bits and WITHOUT in bits:
        before, after = bits[WITHOUT], bits[WITH]
        out["ratio"] = {k: (after[k] / v if v else None) for k, v in before.items()}
    return out


def diversity_report(classifier: Classifier, images: Mapping[str, torch.Tensor]) -> dict:
    """Variety on any model (method/diversity.py): the reported index of the images under ``classifier`` without
    and with the token, their ratio (1 = as varied as the prompt alone) and whether it kept variety."""
    from .diversity import appearance_features, diversity_scores
    from .frechet import feature_source

    source = feature_source(classifier)
    with_token = appearance_features(source, images[WITH]) if WITH in images else None
    report = diversity_scores(appearance_features(source, images[WITHOUT]), with_token)
    return {**report, "features": getattr(source, "name", type(source).__name__)}


def class_leak(classifier: Classifier, images: Mapping[str, torch.Tensor], target: int, *, top: int = 3) -> dict:
    """Where the token sends images the judge does not put in the target class: each other class's rise in its share
    of the judge's top-1, with over without the token, summed over the classes that rise ("points"), and the
    largest risers. A token can raise its class's top-1 by drawing a neighbour the GUIDE confuses with it (a toy-kite
    token drawing crosses: bench/results/augmentation-2026-12-06.md); a held-out judge sees that here. Single-label
    classifiers only (a multi-label one has no one class per image)."""
    if classifier.multi_label:
        return {"error": "a multi-label classifier gives no one class per image"}
    device = next(classifier.module.parameters()).device
    shares = {}
    for condition in (WITHOUT, WITH):
        with torch.no_grad():
            seen = torch.cat([classifier(chunk.to(device)).argmax(-1).cpu() for chunk in images[condition].split(64)])
        shares[condition] = torch.bincount(seen, minlength=classifier.num_classes).float() / len(seen)
    rise = (shares[WITH] - shares[WITHOUT]).clamp_min(0)
    rise[target] = 0
    order = [int(i) for i in rise.argsort(descending=True)[:top] if rise[i] > 0]
    return {"points": float(rise.sum()), "classes": {classifier.class_name(i): float(rise[i]) for i in order},
            "judge": getattr(classifier, "name", type(classifier).__name__)}


def diversity_line(classifier: Classifier, before: torch.Tensor, after: torch.Tensor) -> str:
    """One line for a front end's result text: the diversity ratio of the before/after images (few images: a rough
    sign; ``dct eval`` measures it on 64), or why it could not be measured."""
    try:
        report = diversity_report(classifier, {WITHOUT: before, WITH: after})
    except DCTError as exc:
        return f"diversity: not measured ({exc})"
    verdict = "kept" if report["kept"] else "narrowed: the token may fix what the prompt leaves free"
    return (f"diversity with / without the token: x{report['ratio']:.2f} ({verdict}; {before.shape[0]} images, a "
            "rough sign: dct eval measures it on 64)")


def token_quality(
    results: Mapping[str, Mapping[str, dict]],
    images: Mapping[str, torch.Tensor],
    *,
    guide: str | None = None,
    held_out: str | None = None,
    entropy: Callable[[torch.Tensor], dict[str, float]] | None = None,
    reference: torch.Tensor | None = None,
    feature_classifier: Classifier | None = None,
    diversity_classifier: Classifier | None = None,
    leak: tuple[Classifier, int] | None = None,
) -> dict:
    """Beyond accuracy: the fooling gap (guide vs held-out), variety of the free attributes (when the model
    offers a reader), the Frechet distance to real images of the class on a classifier's features, and the
    diversity index on any model (``diversity_classifier``'s features), and the other classes the token draws
    (``leak``: a judge, best a held-out one, and the target's index in it)."""
    from .frechet import frechet_with_and_without

    out: dict = {}
    if diversity_classifier is not None:
        try:
            out["diversity"] = diversity_report(diversity_classifier, images)
        except DCTError as exc:  # a classifier without features: the rest of the report still stands
            out["diversity"] = {"error": str(exc)}
    if leak is not None and WITH in images:
        out["leak"] = class_leak(leak[0], images, leak[1])
    if guide is not None and held_out is not None:
        out["fooling_gap"] = fooling_gap(results, guide, held_out)
    if entropy is not None:
        out["variety"] = variety_report(images, entropy)
    if reference is not None and feature_classifier is not None:
        out["frechet"] = frechet_with_and_without(feature_classifier, reference, images[WITHOUT], images.get(WITH))
    return out
