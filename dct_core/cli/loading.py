"""What the commands load from their options: the diffusion backend and the classifier(s)."""

from __future__ import annotations

import argparse

from ..classifiers import Classifier


def load_backend(args: argparse.Namespace, device=None):
    """The backend for ``--model``: a built-in model by name, else a diffusers folder or checkpoint file."""
    from ..backends.diffusers_backend import DiffusersBackend
    from ..backends.model_loading import load_pipeline
    from ..backends.runtime import resolve_device, resolve_dtype
    from ..registry import named_model

    device = device if device is not None else resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    sampler = getattr(args, "sampler", None) or "ddim"
    named = named_model(args.model)
    if named is not None:
        return named.load_backend(device, dtype, sampler=sampler)
    pipe = load_pipeline(args.model, device=device, dtype=dtype, kind=args.model_kind)
    return DiffusersBackend(pipe, sampler=sampler)


def load_classifier(args: argparse.Namespace) -> Classifier:
    from ..classifiers import load_classifiers

    return load_classifiers(
        args.classifiers, args.classifier_weights, args.labels, pooling=args.pooling, multi_label=args.multi_label,
        template=args.clip_template, grad_checkpointing=args.classifier_checkpointing, trust_code=args.trust_code,
    )


def classifier_and_target(args: argparse.Namespace) -> tuple[Classifier, int]:
    classifier = load_classifier(args)
    return classifier, classifier.class_index(args.target)


def classifier_name(args: argparse.Namespace) -> str:
    return " + ".join(args.classifiers)
