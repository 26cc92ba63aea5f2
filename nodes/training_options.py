"""DCT Training Options: the Train node's settings beyond the few an artist needs, as a node plugged into
Train Discriminative Token's ``options`` input (the pattern of the host's SamplerCustomAdvanced pieces).

Its output is a frozen :class:`TrainingOptions` in which an unset value (``None``; 0, empty or ``recipe`` on the
node) means the chosen recipe's value, so the Train node without options and with a fresh options node train alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dct_core.config import DEFAULT_PRESET, TrainConfig, preset_config

from .host import sampler_names, scheduler_names
from .host_api import io
from .sockets import CATEGORY, TrainingOptionsSocket

CHECKPOINT_VAE = "checkpoint VAE"
SAMPLER, SCHEDULER = "euler", "normal"  # the host sampler and scheduler for the steps without gradient
RECIPE_CHOICE = "recipe"
FRESH_SEEDS = {RECIPE_CHOICE: None, "on": True, "off": False}  # the options node's fresh_seeds combo


@dataclass(frozen=True)
class TrainingOptions:
    """What DCT Training Options hands to the Train node. ``None`` = the recipe's value (or, for ``resolution``,
    the model's native size where it is not the recipe's 512: SDXL trains at 1024)."""

    init_word: str | None = None
    templates: tuple[str, ...] | None = None
    learning_rate: float | None = None
    batch_size: int | None = None
    micro_batch: int | None = None  # None: the whole batch in one forward/backward
    cfg: float | None = None
    sampler_name: str = SAMPLER
    scheduler: str = SCHEDULER
    sampling_steps: int | None = None
    resolution: int | None = None
    seed: int | None = None
    accuracy_threshold: float | None = None
    patience: int | None = None
    backprop_depth: int | None = None
    decoder: str = CHECKPOINT_VAE
    preview_every: int = 1  # show the current batch on the node every N steps (0: never)
    fresh_seeds: bool | None = None

    @classmethod
    def from_widgets(cls, *, init_word: str = "", templates: str = "", learning_rate: float = 0.0,
                     batch_size: int = 0, micro_batch: int = 0, cfg: float = 0.0, sampler_name: str = SAMPLER,
                     scheduler: str = SCHEDULER, sampling_steps: int = 0, resolution: int = 0,
                     seed: int | None = None, accuracy_threshold: float = 0.0, patience: int = 0,
                     backprop_depth: int = 0, decoder: str = CHECKPOINT_VAE, preview_every: int = 1,
                     fresh_seeds: bool | str | None = None) -> TrainingOptions:
        """From widget values, where 0 or empty means the recipe's; ``fresh_seeds`` is a bool (on) or one of
        the options node's choices (recipe / on / off)."""
        lines = tuple(t.strip() for t in templates.splitlines() if t.strip())
        if isinstance(fresh_seeds, str):
            if fresh_seeds not in FRESH_SEEDS:
                raise ValueError(f"fresh_seeds must be one of {', '.join(FRESH_SEEDS)}, got {fresh_seeds!r}.")
            fresh = FRESH_SEEDS[fresh_seeds]
        else:
            fresh = True if fresh_seeds else None  # a boolean widget: off leaves it to the recipe
        return cls(init_word=init_word.strip() or None, templates=lines or None, learning_rate=learning_rate or None,
                   batch_size=batch_size or None, micro_batch=micro_batch or None, cfg=cfg or None,
                   sampler_name=sampler_name, scheduler=scheduler, sampling_steps=sampling_steps or None,
                   resolution=resolution or None, seed=seed, accuracy_threshold=accuracy_threshold or None,
                   patience=patience or None, backprop_depth=backprop_depth or None, decoder=decoder,
                   preview_every=preview_every, fresh_seeds=fresh)

    def train_config(self, recipe: str, max_steps: int | None = None,
                     default_resolution: int | None = None) -> TrainConfig:
        """The engine's config: the recipe with these options (and ``max_steps``) over it. ``default_resolution``
        replaces the recipe's resolution when this leaves it unset (the model's native size)."""
        sampling = {"guidance": self.cfg, "steps": self.sampling_steps,
                    "resolution": self.resolution or default_resolution}
        return preset_config(
            recipe, templates=self.templates, init_word=self.init_word, batch_size=self.batch_size,
            micro_batch=self.micro_batch, seed=self.seed, fresh_seeds=self.fresh_seeds, lr=self.learning_rate,
            max_steps=max_steps, accuracy_threshold=self.accuracy_threshold, patience=self.patience,
            backprop_depth=self.backprop_depth, sampling={k: v for k, v in sampling.items() if v is not None},
        )


# ---- widget helpers shared with the Train nodes ---------------------------------------------------------------
def decoders() -> list[str]:
    import folder_paths

    return [CHECKPOINT_VAE] + [f for f in folder_paths.get_filename_list("vae_approx") if "decoder" in f]


def from_recipe(text: str, field: str) -> str:
    """A tooltip for a setting where 0 means "the recipe's", naming the default recipe's and the paper's value."""
    return f"{text}; 0 = the recipe's ({_recipe_value(DEFAULT_PRESET, field)}; paper {_recipe_value('paper', field)})."


def _recipe_value(recipe: str, field: str) -> Any:
    config = preset_config(recipe)
    return getattr(config.sampling, field) if field in ("guidance", "steps", "resolution") else getattr(config, field)


class TrainingOptionsNode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        d = preset_config(DEFAULT_PRESET)
        return io.Schema(
            node_id="DCTTrainingOptions",
            display_name="DCT Training Options",
            category=CATEGORY,
            description="More settings for Train Discriminative Token (DCT): plug into its 'options' input. A "
                        "setting left at 0, empty or 'recipe' takes the value of the recipe chosen on the Train node.",
            inputs=[
                io.String.Input("init_word", default="",
                                tooltip="Word whose embedding starts the token: empty = the recipe's ('a', as the "
                                        "paper for ImageNet); a related word such as 'bird' helps a bird "
                                        "classifier."),
                io.String.Input("templates", default="", multiline=True,
                                tooltip="Training prompts, one per line; {token} marks the class token and "
                                        "{label} the class name. Empty = the recipe's (the paper's two)."),
                io.Float.Input("learning_rate", default=0.0, min=0.0, max=1.0, step=1e-5,
                               tooltip=from_recipe("AdamW learning rate on the token only", "lr")),
                io.Int.Input("batch_size", default=0, min=0, max=64,
                             tooltip=from_recipe("Images (seeds) per step", "batch_size")),
                io.Int.Input("micro_batch", default=0, min=0, max=64,
                             tooltip="Images per forward/backward to save VRAM (0 = the whole batch at once)."),
                io.Float.Input("cfg", default=0.0, min=0.0, max=30.0, step=0.1,
                               tooltip=from_recipe("Classifier-free guidance scale while training", "guidance")),
                io.Combo.Input("sampler_name", options=sampler_names(), default=SAMPLER,
                               tooltip="The host sampler for the steps without gradient."),
                io.Combo.Input("scheduler", options=scheduler_names(), default=SCHEDULER,
                               tooltip="The host scheduler (sigmas)."),
                io.Int.Input("sampling_steps", default=0, min=0, max=200,
                             tooltip=from_recipe("Sampling steps per image", "steps")),
                io.Int.Input("resolution", default=0, min=0, max=2048, step=8,
                             tooltip=f"Image size while training; 0 = the model's native size (SDXL: 1024), "
                                     f"else the recipe's ({d.sampling.resolution})."),
                io.Int.Input("seed", default=d.seed, min=0, max=0xFFFFFFFF, control_after_generate=False,
                             tooltip="First training seed; the batch uses seed, seed+1, ... (the recipes: "
                                     f"{d.seed})."),
                io.Float.Input("accuracy_threshold", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip=from_recipe("Stop once a batch is classified this well",
                                                   "accuracy_threshold")),
                io.Int.Input("patience", default=0, min=0, max=1000,
                             tooltip=from_recipe("Or stop after this many steps without a lower loss", "patience")),
                io.Int.Input("backprop_depth", default=0, min=0, max=50,
                             tooltip="Sampling steps taken with gradient when the recipe takes it at the last "
                                     "steps; 0 = the recipe's (paper: 1, its gradient skipping)."),
                io.Combo.Input("decoder", options=decoders(), default=CHECKPOINT_VAE,
                               tooltip="Decoder for the training signal: the checkpoint's VAE, or a TAESD decoder "
                                       "from models/vae_approx (much cheaper at 512 px)."),
                io.Int.Input("preview_every", default=1, min=0, max=1000,
                             tooltip="Show the current batch on the Train node every N steps (0: never)."),
                io.Combo.Input("fresh_seeds", options=list(FRESH_SEEDS), default=RECIPE_CHOICE,
                               tooltip="New seeds every step (on: the token then fits no particular images) or "
                                       "the same seeds every step (off); recipe = the recipe's choice (balanced: "
                                       "on, paper: off)."),
            ],
            outputs=[TrainingOptionsSocket.Output("OPTIONS", display_name="options",
                                                  tooltip="Into Train Discriminative Token's 'options' input.")],
        )

    @classmethod
    def execute(cls, init_word, templates, learning_rate, batch_size, micro_batch, cfg, sampler_name, scheduler,
                sampling_steps, resolution, seed, accuracy_threshold, patience, backprop_depth, decoder,
                preview_every, fresh_seeds) -> io.NodeOutput:
        return io.NodeOutput(TrainingOptions.from_widgets(
            init_word=init_word, templates=templates, learning_rate=learning_rate, batch_size=batch_size,
            micro_batch=micro_batch, cfg=cfg, sampler_name=sampler_name, scheduler=scheduler,
            sampling_steps=sampling_steps, resolution=resolution, seed=seed, accuracy_threshold=accuracy_threshold,
            patience=patience, backprop_depth=backprop_depth, decoder=decoder, preview_every=preview_every,
            fresh_seeds=fresh_seeds))
