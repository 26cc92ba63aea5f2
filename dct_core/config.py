"""Settings with the paper's defaults, documented once (Schwartz et al., ICCV 2023, and its reference code)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from .errors import DCTError
from .settings import check_all

# The paper's two training prompts (Sec. 3, "Number of prompts").
PAPER_TEMPLATES: tuple[str, ...] = (
    "A high-resolution realistic image of a {token} {label}",
    "A photo of {token} {label}",
)



@dataclass(frozen=True)
class SamplingConfig:
    """How each image of a batch is generated (the sampler itself is each backend's choice)."""

    resolution: int = 512  # SD1.x/SD2-base native size; SDXL wants 1024
    sampling_steps: int = 30  # reference code default
    guidance: float = 7.0  # classifier-free guidance scale
    negative_prompt: str = ""

    def validate(self) -> None:
        check_all({f.name: getattr(self, f.name) for f in fields(self)})
        if self.resolution % 8:
            raise DCTError(f"resolution {self.resolution} is not a positive multiple of 8; use e.g. 512.")


@dataclass(frozen=True)
class TrainConfig:
    """One training run of a discriminative class token."""

    templates: tuple[str, ...] = PAPER_TEMPLATES
    init_word: str = "a"  # paper: "a" for ImageNet, a related word ("bird") for fine-grained classifiers
    num_vectors: int = 1  # the paper learns a single vector
    batch_size: int = 5  # images per step, one seed each (paper: 5)
    micro_batch: int | None = None  # images per forward/backward (gradient accumulation); None = all at once
    seed: int = 0  # seeds are seed, seed+1, ... and stay the same every step (as the reference code)
    fresh_seeds: bool = False  # or new seeds each step (seed + step * batch_size + i): fits no particular images
    lr: float = 1.25e-3  # reference: 2.5e-4 scaled by its 5 accumulation steps
    weight_decay: float = 1e-2  # AdamW decay, on v_c only
    max_grad_norm: float = 1.0  # clipping after backward, before the step
    max_steps: int = 50  # reference: up to 50 epochs of 5 images
    accuracy_threshold: float = 0.7  # stop once a batch reaches this accuracy (reference code)
    threshold_window: int = 1  # ... averaged over this many last steps (1: one batch, as the reference code)
    patience: int = 15  # or after this many steps without a lower loss
    backprop_depth: int = 1  # K: sampling steps taken with gradient (paper: 1, "gradient skipping")
    # Where the gradient is taken: "last" (the last K sampling steps, the paper's) or "x0" (the guided model's
    # prediction of the clean image at x0_points random steps within x0_interval of the trajectory).
    gradient_point: str = "last"
    x0_interval: tuple[float, float] = (0.2, 0.8)
    x0_points: int = 1
    # Returned token: the best training batch (paper), or the best on this many fixed validation seeds, or
    # ("last") the token training ended with, which with fresh seeds has seen the most images.
    validation_images: int = 0
    keep: str = "best"
    # Stop pushing an image once the classifier gives the target this probability (0: plain cross-entropy, the
    # paper's): the loss per image is max(0, CE - (-log p)), so images already right are left as they are.
    enough_prob: float = 0.0
    # Weight of keeping the free words out of the token's text conditioning (method/free_words.FreeConditioning).
    free_penalty: float = 0.0
    # Weight of a pull toward the image the prompt alone makes on the same seed (mean squared difference of the
    # x0 predictions, x0 gradient point only): the token should change what the class needs, not the rest.
    preserve: float = 0.0
    # Weight of keeping the batch's variety (x0 gradient point): the token's images must look as varied as the prompt
    # alone's on the same seeds in the guide's first-layer statistics (training._Spread).
    spread: float = 0.0
    # Words naming what the prompt leaves free (comma-separated; "" off, the paper's): after every update the token's
    # displacement from its init word is projected off their embeddings' span (method/free_words.py).
    free_words: str = ""
    init_pull: float = 0.0  # L2 pull toward the init word, relative to its norm (0: off)
    norm_cap: float = 0.0  # keep the token's norm within this multiple of the init word's (0: off)
    # Block-level gradient checkpointing in the UNet step(s) with gradient, the VAE decoder and the classifier
    # (and, in ComfyUI, the text encoder): at 512 px it cut a training step's peak memory from 2.1x to 1.5x plain
    # generation for about 4% more time (bench/train_step.py); in ComfyUI see bench/host_step.py.
    checkpointing: bool = True
    sampling: SamplingConfig = field(default_factory=SamplingConfig)

    def validate(self) -> None:
        check_all({f.name: getattr(self, f.name) for f in fields(self) if f.name != "sampling"})
        self.sampling.validate()
        if self.backprop_depth > self.sampling.sampling_steps:
            raise DCTError(
                f"backprop depth {self.backprop_depth} must be between 1 and the {self.sampling.sampling_steps} "
                "sampling steps."
            )
        free = check_free_words(self.free_words)
        if self.free_penalty and not free:
            raise DCTError("free_penalty keeps the free words out of the token's conditioning: give free_words "
                           "(e.g. the balanced recipe's colour words) or set free_penalty to 0.")
        if self.spread and self.gradient_point != "x0":
            raise DCTError("spread compares the token's images with the prompt alone's at the x0 gradient point: "
                           "set gradient_point to x0 (the balanced recipe's) or spread to 0.")


FREE_WORDS_OFF = ("none", "off")  # what a front end types to turn free_words off (an empty node input: the recipe's)


def free_word_list(words: str) -> list[str]:
    """The words of a free_words setting ("red, green, blue"), none for "none" / "off"."""
    if words.strip().lower() in FREE_WORDS_OFF:
        return []
    return [w.strip() for w in words.split(",") if w.strip()]


def check_free_words(words: str) -> list[str]:
    """free_word_list, refusing a single word (it spans no direction)."""
    listed = free_word_list(words)
    if len(listed) == 1:
        raise DCTError(f"free_words {words!r}: give at least two words, comma-separated (e.g. 'red, green, blue'): "
                       "the directions kept off are their differences.")
    return listed


# What the balanced recipe keeps the token off (free_words): colours, the attribute a class token most often fixes.
COLOUR_WORDS = "red, orange, yellow, green, cyan, blue, purple, pink, white, black, brown, grey"

# Named recipes: overrides of TrainConfig's defaults (which are the paper's). Every front end (the CLI, the
# ComfyUI node, the demo) builds its config here, from a preset plus the user's overrides.
PRESETS: dict[str, dict[str, Any]] = {
    # The measured default (README, "Recipes"; bench/recipes.py): the gradient of the predicted clean image at a
    # random intermediate sampling step, new seeds every step, a stronger learning rate. On the demo world it kept
    # the free attributes' variety where the whole-trajectory gradient collapsed it, gained far more than the
    # paper's last step, and costs less per step than it.
    #   The token is kept off the colour words' embedding directions (free_words): over 24 runs colour kept in 19
    #   (without: 12), the majority classes at 79.5% top-1 (74.9%), the minority gain the same (+26.2 vs +26.7).
    #   All 25 steps run (no stop on one lucky all-correct batch: majority classes stopped after 1-2 steps with the
    #   untrained token) and the token returned is the mean of the last half's (keep="average"); images the guide
    #   already gives p >= 0.9 are left alone (enough_prob). Over 24 runs: minority gain +35.9 (+26.2), majority
    #   82.5% (79.5%), colour kept in 18 (19), leak 6.9 (9.3), 22 CPU s (15.5).
    #   The colour words are also kept out of what the token does to the whole text conditioning (free_penalty
    #   0.3; words of the class's own name are not free for it): over 24 runs colour kept in 21 (18), all-attribute
    #   ratio worst 0.90 (0.85), minority gain +31.8 (+35.0), majority 78.4% (81.8%), the same cost.
    "balanced": {"gradient_point": "x0", "x0_interval": (0.2, 0.8), "lr": 0.05, "batch_size": 8,
                 "fresh_seeds": True, "max_steps": 25, "accuracy_threshold": 1.0, "threshold_window": 25,
                 "patience": 25, "keep": "average", "enough_prob": 0.9, "free_words": COLOUR_WORDS,
                 "free_penalty": 0.3},
    # balanced that keeps variety by construction (README, "Recipes"): the token's batch must look as varied as the
    # prompt alone's in the guide's first layer (spread 20). On the demo world, in prompts the tokens never saw:
    # colour kept in 12 / 12 runs (balanced: 7 / 12), minority gain +32.8 (+34.1), but the majority classes do not
    # move (69% vs 77.9%) and a step costs about twice as much (a second, token-free trajectory).
    "varied": {"gradient_point": "x0", "x0_interval": (0.2, 0.8), "lr": 0.05, "batch_size": 8,
               "fresh_seeds": True, "max_steps": 25, "accuracy_threshold": 1.0, "patience": 25, "spread": 20.0},
    "paper": {},  # Schwartz et al. and their reference code: K = 1 (gradient skipping), lr 0.00125, fixed seeds
}
DEFAULT_PRESET = "balanced"


def preset_config(preset: str = DEFAULT_PRESET, **overrides: Any) -> TrainConfig:
    """The TrainConfig of a named preset with ``overrides`` applied (None values are ignored, so front ends
    can pass every setting and leave the unset ones to the preset). Generation settings may be given flat
    (``sampling_steps=4``) or as ``sampling``: a SamplingConfig (the base, e.g. a model's own defaults) or a dict
    of its fields; flat ones win."""
    if preset not in PRESETS:
        raise DCTError(f"unknown recipe {preset!r}; choose one of: {', '.join(PRESETS)}.")
    settings = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    sampling_names = {f.name for f in fields(SamplingConfig)}
    flat = {k: settings.pop(k) for k in list(settings) if k in sampling_names}
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise DCTError(f"unknown training setting(s) {', '.join(unknown)}; known: "
                       f"{', '.join(sorted(known | sampling_names))}.")
    sampling = settings.pop("sampling", None)
    for name in ("templates", "x0_interval"):  # lists from JSON or a widget: the config holds tuples
        if isinstance(settings.get(name), list):
            settings[name] = tuple(settings[name])
    check_all(settings)
    config = TrainConfig(**settings)
    if isinstance(sampling, SamplingConfig):
        config = replace(config, sampling=sampling)
    elif sampling:
        config = replace(config, sampling=replace(config.sampling, **sampling))
    if flat:
        config = replace(config, sampling=replace(config.sampling, **flat))
    if "x0_interval" in settings:
        lo, hi = config.x0_interval
        config = replace(config, x0_interval=(float(lo), float(hi)))
    config.validate()
    return config


def config_values(config: TrainConfig) -> dict[str, Any]:
    """Every setting of ``config`` by its one name (generation settings flat), e.g. for listing or metadata."""
    values = {f.name: getattr(config, f.name) for f in fields(config) if f.name != "sampling"}
    values.update({f.name: getattr(config.sampling, f.name) for f in fields(config.sampling)})
    return values
