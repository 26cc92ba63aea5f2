"""What the demo world's demonstration is made of: its classes, prompts, evaluation seeds and the training
recipe that works on it. Kept with the world, so generic code never has to know them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DemoClass:
    label: str  # the classifiers' class
    word: str  # the coarse word the prompts use (never names the class itself)
    kind: str  # what makes it hard


DEMO_CLASSES: tuple[DemoClass, ...] = (
    DemoClass("toy kite", "kite", "ambiguous word"),
    DemoClass("red-throated warbler", "bird", "fine detail"),
)
DEMO_TEMPLATES = ("a photo of a {token} {label}", "a {token} {label}")
EVAL_FIRST_SEED = 100_000  # fresh seeds: far from the training seeds
REFERENCE_SEED = 200_000  # the scene generator's seed for the real renders a class's images are compared with

# `dct demo` trains with the default recipe (dct_core.config.DEFAULT_PRESET) on the world's own sampling; only
# the prompts are the world's (they use the coarse word). Kept as overrides so a bench can change them.
DEMO_RECIPE: dict = dict(templates=DEMO_TEMPLATES)
