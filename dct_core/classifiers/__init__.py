"""Classifiers behind one interface: logits, label names, differentiable preprocessing."""

from .base import ImageClassifier
from .labels import resolve_class
from .preprocess import Preprocess
from .spec import load_classifier

__all__ = ["ImageClassifier", "Preprocess", "load_classifier", "resolve_class"]
