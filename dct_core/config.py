"""Settings with the paper's defaults, documented once (Schwartz et al., ICCV 2023, and its reference code)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from .errors import DCTError

# The paper's two training prompts (Sec. 3, "Number of prompts").
PAPER_TEMPLATES: tuple[str, ...] = (
    "A high-resolution realistic image of a {token} {label}",
    "A photo of {token} {label}",
)



@dataclass(frozen=True)
class SamplingConfig:
    """How each image of a batch is generated."""

    resolution: int = 512  # SD1.x/SD2-base native size; SDXL wants 1024
    steps: int = 30  # sampling steps, reference code default
    guidance: float = 7.0  # classifier-free guidance scale
    negative_prompt: str = ""
    scheduler: str = "ddim"  # "ddim" | "euler" | "own" (the class the model folder names)

    def validate(self) -> None:
        if self.resolution < 8 or self.resolution % 8:
            raise DCTError(f"resolution {self.resolution} is not a positive multiple of 8; use e.g. 512.")
        if self.steps < 1:
            raise DCTError(f"sampling steps must be at least 1, got {self.steps}.")
        if self.guidance < 0:
            raise DCTError(f"guidance scale must be >= 0, got {self.guidance}.")
        if self.scheduler not in ("ddim", "euler", "own"):
            raise DCTError(f"unknown scheduler {self.scheduler!r}; choose ddim, euler or own.")


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
    # Weight of a pull toward the image the prompt alone makes on the same seed (mean squared difference of the
    # x0 predictions, x0 gradient point only): the token should change what the class needs, not the rest.
    preserve: float = 0.0
    init_pull: float = 0.0  # L2 pull toward the init word, relative to its norm (0: off)
    norm_cap: float = 0.0  # keep the token's norm within this multiple of the init word's (0: off)
    # Block-level gradient checkpointing in the UNet step(s) with gradient, the VAE decoder and the classifier
    # (and, in ComfyUI, the text encoder): at 512 px it cut a training step's peak memory from 2.1x to 1.5x plain
    # generation for about 4% more time (bench/train_step.py); in ComfyUI see bench/host_step.py.
    checkpointing: bool = True
    sampling: SamplingConfig = field(default_factory=SamplingConfig)

    def validate(self) -> None:
        from .prompts import check_templates

        check_templates(self.templates)
        self.sampling.validate()
        if self.batch_size < 1:
            raise DCTError(f"batch size must be at least 1, got {self.batch_size}.")
        if self.micro_batch is not None and self.micro_batch < 1:
            raise DCTError(f"micro batch must be at least 1, got {self.micro_batch}.")
        if self.num_vectors < 1:
            raise DCTError(f"number of vectors must be at least 1, got {self.num_vectors}.")
        if self.lr <= 0:
            raise DCTError(f"learning rate must be positive, got {self.lr}.")
        if self.max_steps < 1:
            raise DCTError(f"steps must be at least 1, got {self.max_steps}.")
        if not 1 <= self.backprop_depth <= self.sampling.steps:
            raise DCTError(
                f"backprop depth {self.backprop_depth} must be between 1 and the {self.sampling.steps} "
                "sampling steps."
            )
        if self.gradient_point not in ("last", "x0"):
            raise DCTError(f"unknown gradient point {self.gradient_point!r}; use last or x0.")
        lo, hi = self.x0_interval
        if not 0 <= lo <= hi <= 1:
            raise DCTError(f"x0 interval {self.x0_interval} must be two fractions 0 <= start <= end <= 1.")
        if self.keep not in ("best", "last"):
            raise DCTError(f"unknown keep {self.keep!r}; use best or last.")
        if self.threshold_window < 1:
            raise DCTError(f"threshold window must be at least 1, got {self.threshold_window}.")
        if not 0 <= self.enough_prob < 1:
            raise DCTError(f"enough_prob must be in [0, 1), got {self.enough_prob}.")
        if self.x0_points < 1 or min(self.validation_images, self.init_pull, self.norm_cap, self.preserve) < 0:
            raise DCTError("x0 points must be at least 1; validation images, init pull, norm cap, preserve >= 0.")
        if not 0 < self.accuracy_threshold <= 1:
            raise DCTError(f"accuracy threshold must be in (0, 1], got {self.accuracy_threshold}.")
        if self.patience < 1:
            raise DCTError(f"patience must be at least 1, got {self.patience}.")


# Named recipes: overrides of TrainConfig's defaults (which are the paper's). Every front end (the CLI, the
# ComfyUI node, the demo) builds its config here, from a preset plus the user's overrides.
PRESETS: dict[str, dict[str, Any]] = {
    # The measured default (README, "Recipes"; bench/recipes.py): the gradient of the predicted clean image at a
    # random intermediate sampling step, new seeds every step, a stronger learning rate, stop on an all-correct
    # batch. On the demo world it kept the free attributes' variety where the whole-trajectory gradient
    # collapsed it, gained far more than the paper's last step, and costs less per step than it.
    "balanced": dict(gradient_point="x0", x0_interval=(0.2, 0.8), lr=0.05, batch_size=8, fresh_seeds=True,
                     max_steps=25, accuracy_threshold=1.0, patience=25),
    "paper": {},  # Schwartz et al. and their reference code: K = 1 (gradient skipping), lr 0.00125, fixed seeds
}
DEFAULT_PRESET = "balanced"


def preset_config(preset: str = DEFAULT_PRESET, **overrides: Any) -> TrainConfig:
    """The TrainConfig of a named preset with ``overrides`` applied (None values are ignored, so front ends
    can pass every option and leave the unset ones to the preset). ``sampling`` may be a SamplingConfig or a
    dict of its fields."""
    if preset not in PRESETS:
        raise DCTError(f"unknown recipe {preset!r}; choose one of: {', '.join(PRESETS)}.")
    settings = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise DCTError(f"unknown training setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}.")
    sampling = settings.pop("sampling", None)
    config = TrainConfig(**settings)
    if isinstance(sampling, SamplingConfig):
        config = replace(config, sampling=sampling)
    elif sampling:
        config = replace(config, sampling=replace(config.sampling, **sampling))
    if "templates" in settings:
        config = replace(config, templates=tuple(config.templates))
    if "x0_interval" in settings:
        lo, hi = config.x0_interval
        config = replace(config, x0_interval=(float(lo), float(hi)))
    config.validate()
    return config
