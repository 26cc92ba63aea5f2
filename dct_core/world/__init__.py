"""The demo world: procedural scenes, a small trained text-to-image model and two trained classifiers.

Shipped with the package (``weights/``, about 15 MB, reproduced by ``python -m dct_core.world.train``) so that
the method's effect can be measured anywhere, on a CPU, without downloads: ``dct demo`` trains tokens on it
and prints top-1/top-5 accuracy with and without them, under the guiding and a held-out classifier.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import SamplingConfig
from ..errors import DCTError
from ..registry import ClassifierSource, NamedModel, register_classifier_source, register_model
from .facts import DEMO_RECIPE, REFERENCE_SEED

WEIGHTS_DIR = Path(__file__).parent / "weights"
MODEL_NAME = "world"  # what --model names it
CLASSIFIER_ROLES = ("guide", "held-out")  # classifier specs world:guide and world:held-out
# How the world samples: its native 32 px, few DDIM steps, moderate guidance.
SAMPLING = SamplingConfig(resolution=32, sampling_steps=10, guidance=3.0)


def _require(path: Path) -> Path:
    if not path.exists():
        raise DCTError(
            f"the demo world's weights are missing ({path}); reinstall the package or rebuild them with "
            "'python -m dct_core.world.train --out dct_core/world/weights'."
        )
    return path


def load_world_backend(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                       folder: str | Path | None = None, sampler: str = "ddim"):
    """A DiffusersBackend over the world's text-to-image model."""
    from ..backends.diffusers_backend import DiffusersBackend
    from .model import load_world_pipeline

    pipe = load_world_pipeline(_require(Path(folder or WEIGHTS_DIR)), device=device, dtype=dtype)
    return DiffusersBackend(pipe, sampler=sampler)


def load_world_classifier(role: str, folder: str | Path | None = None):
    """The guiding ("guide") or the held-out ("held-out") classifier of the world."""
    from ..classifiers.timm_source import load_timm_folder

    if role not in CLASSIFIER_ROLES:
        raise DCTError(f"the demo world has no classifier {role!r}; use world:guide or world:held-out.")
    classifier = load_timm_folder(_require(Path(folder or WEIGHTS_DIR) / role))
    classifier.name = f"world:{role}"
    return classifier


def reference_renders(label: str, count: int, seed: int = REFERENCE_SEED) -> torch.Tensor:
    """Real images of a class: fresh renders of the scene generator ([N, 3, 32, 32] in [0, 1])."""
    from .scenes import LABELS, render

    if label not in LABELS:
        raise DCTError(f"the demo world has no class {label!r}; its classes: {', '.join(LABELS)}.")
    images, _ = render(torch.full((count,), LABELS.index(label)), torch.Generator().manual_seed(seed))
    return images


def variety_reader():
    """images -> entropy in bits of each free attribute (colour, facing, size, position) and their total."""
    from .attributes import attribute_entropy, load_attribute_reader

    reader = load_attribute_reader()
    return lambda images: attribute_entropy(reader, images)


def prompt_words() -> dict[str, str]:
    """Each class's coarse caption word, as `dct demo` prompts it ("kite" for both kites)."""
    from .scenes import CLASSES

    return {c.label: c.noun for c in CLASSES}


# The world's models are tiny: memory is no concern there, and a recompute would only cost time.
TRAIN_DEFAULTS = {**DEMO_RECIPE, "checkpointing": False}

register_model(NamedModel(MODEL_NAME, load_world_backend, SAMPLING, "the built-in demo world, 32 px",
                          variety=variety_reader, reference_images=reference_renders, prompt_words=prompt_words,
                          train_defaults=TRAIN_DEFAULTS))
def _world_source(role: str, options=None):
    if options is not None and (options.labels is not None or options.weights is not None):
        raise DCTError(f"world:{role} has its own weights and class names: leave out --labels and "
                       "--classifier-weights (they apply to the other classifier forms).")
    return load_world_classifier(role)


register_classifier_source(ClassifierSource("world", _world_source,
                                            "the demo world's classifiers: world:guide, world:held-out"))
