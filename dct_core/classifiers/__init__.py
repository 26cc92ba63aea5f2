"""Classifiers behind one interface: logits, label names, differentiable preprocessing."""

from .base import Classifier, EnsembleClassifier, ImageClassifier
from .labels import resolve_class
from .preprocess import Preprocess
from .spec import load_classifier, load_classifiers

__all__ = [
    "Classifier",
    "EnsembleClassifier",
    "ImageClassifier",
    "Preprocess",
    "load_classifier",
    "load_classifiers",
    "resolve_class",
]
