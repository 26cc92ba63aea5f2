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

# `dct demo`'s recipe on this world: the whole 10-step trajectory with gradient (K = 10) gave held-out gains
# of +45 to +50 points where K = 3 gave +11 to +36 and K = 1 less (README, "The demo world";
# bench/demo_depth.py). Overrides of the paper's TrainConfig; sampling is the world's own.
DEMO_STEPS = 25
DEMO_DEPTH = 10
DEMO_RECIPE = dict(
    templates=DEMO_TEMPLATES, batch_size=8, lr=5e-2, max_steps=DEMO_STEPS, backprop_depth=DEMO_DEPTH,
    fresh_seeds=True, accuracy_threshold=1.0, patience=DEMO_STEPS, checkpointing=False,
)
