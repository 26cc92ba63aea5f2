"""Discriminative Class Tokens: the host-independent engine (never imports comfy)."""

from .config import SamplingConfig, TrainConfig
from .errors import DCTError
from .formats.tokens import ClassToken, load_class_token, save_class_token
from .method.training import TrainResult, train_class_token

__version__ = "0.1.0"

__all__ = [
    "ClassToken",
    "DCTError",
    "SamplingConfig",
    "TrainConfig",
    "TrainResult",
    "load_class_token",
    "save_class_token",
    "train_class_token",
    "__version__",
]
