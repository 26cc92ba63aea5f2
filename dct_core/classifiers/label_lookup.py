"""The class names of a classifier without loading its weights (fast: configs, labels files, file headers).

Used where a list must come back quickly (the ComfyUI class picker). Each classifier source answers for its own
kind (its ``quick_labels``, built on the loader's own helpers such as ``resolve_names``, so both agree);
`load_classifier` stays the authority. Nothing here runs a file's code: TorchScript labels come from the
explicit list or the JSON sidecar, never from the module.
"""

from __future__ import annotations

from pathlib import Path

from ..registry import AUTO_KIND, NO_OPTIONS, ClassifierOptions, find_classifier_source, node_spec
from .labels import imagenet_labels, labels_from


def labels_for(spec: str, options: ClassifierOptions = NO_OPTIONS) -> list[str]:
    """Labels of the classifier ``spec`` names (options already split off): explicit labels first, else the
    quick answer of the source that takes it (a source without one is loaded); a file no source takes gets
    ImageNet's names, as a 1000-class head would."""
    if options.labels is not None:
        return labels_from(options.labels)
    found = find_classifier_source(spec)
    if found is None:
        return imagenet_labels()
    source, target = found
    if source.quick_labels is None:
        return list(source.load(target, options).labels)
    return source.quick_labels(target, options)


def quick_labels(path: str | Path, *, kind: str = AUTO_KIND, architecture: str = "", labels=None) -> list[str]:
    """Labels for a classifier at ``path`` as Load Classifier would resolve them (explicit labels first), with
    the node's ``kind`` and architecture field."""
    if labels is not None:
        return labels_from(labels)
    return labels_for(node_spec(kind, str(path), architecture))
