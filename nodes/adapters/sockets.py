"""The pack's socket types and category. Named ...Socket so they never shadow the engine's classes."""

from .node_api import io

CATEGORY = "Discriminative Class Tokens"
ClassifierSocket = io.Custom("DCT_CLASSIFIER")
ClassTokenSocket = io.Custom("DCT_CLASS_TOKEN")
TrainingOptionsSocket = io.Custom("DCT_TRAINING_OPTIONS")
