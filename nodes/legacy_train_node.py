"""The original Train node, every setting a widget, kept (deprecated, out of the node search) so that workflows
saved with it load (the frontend restores widgets by position) and run as before. Its widget list is frozen:
tests/host/test_server.py checks it against the schema captured in 2025-11. It runs what the simple Train node
runs (train_node.train); only its widget names are older than the settings table's."""

from __future__ import annotations

from typing import Any

from dct_core.config import DEFAULT_PRESET, PRESETS, preset_config

from .adapters import host_internals as host
from .adapters.node_api import io, schema_fields
from .adapters.settings_widgets import recipe_value
from .adapters.sockets import CATEGORY
from .train_node import DISPLAY_NAME, outputs, subject_inputs, train, unique_id
from .training_options import CHECKPOINT_VAE, TrainingOptions, decoders

LEGACY_SUFFIX = " (legacy, all settings)"
LEGACY_RECIPE = "paper"  # what the legacy node trained with before it had a recipe input
LEGACY_RECIPES = ("balanced", "paper")  # the recipe choices it shipped with (saved workflows, its frozen schema)
# The frozen widget names that the settings table spells otherwise.
RENAMED = {"steps": "max_steps", "learning_rate": "lr", "cfg": "guidance"}
# On this node these were always plain values (0 never meant "the recipe's").
PLAIN = ("guidance", "sampling_steps", "resolution")
NOT_SETTINGS = ("save_name", "overwrite", "recipe", "max_steps")


def from_recipe(text: str, name: str) -> str:
    """A tooltip for a setting where 0 means "the recipe's", naming the default recipe's and the paper's value."""
    return f"{text}; 0 = the recipe's ({recipe_value(DEFAULT_PRESET, name)}; paper {recipe_value('paper', name)})."


def legacy_options(widgets: dict[str, Any]) -> TrainingOptions:
    """The frozen widgets as options: renamed to the table's names; a boolean fresh_seeds off = the recipe's."""
    values = {RENAMED.get(k, k): v for k, v in widgets.items()}
    plain = {k: values.pop(k) for k in PLAIN}
    values["fresh_seeds"] = "on" if values.get("fresh_seeds") else "recipe"
    options = TrainingOptions.from_widgets({k: v for k, v in values.items() if k not in NOT_SETTINGS})
    return TrainingOptions({**options.values, **plain})


class TrainClassToken(io.ComfyNode):
    """Never change its inputs."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        d = preset_config(DEFAULT_PRESET)
        return io.Schema(
            node_id="DCTTrainClassToken",
            display_name=DISPLAY_NAME + LEGACY_SUFFIX,
            category=CATEGORY,
            description="The original Train Discriminative Token node with every setting on it, kept so saved "
                        "workflows run as before. New workflows: Train Discriminative Token (DCT), with DCT "
                        "Training Options for the other settings.",
            inputs=[
                *subject_inputs(),
                io.String.Input("init_word", default="",
                                tooltip="Word whose embedding starts the token: empty = the recipe's ('a', as the "
                                        "paper for ImageNet); a related word such as 'bird' helps a bird "
                                        "classifier."),
                io.String.Input("templates", default="", multiline=True,
                                tooltip="Training prompts, one per line; {token} marks the class token and "
                                        "{label} the class name. Empty = the recipe's (the paper's two)."),
                io.Int.Input("steps", default=0, min=0, max=10000,
                             tooltip=from_recipe("Maximum optimization steps", "max_steps")),
                io.Float.Input("learning_rate", default=0.0, min=0.0, max=1.0, step=1e-5,
                               tooltip=from_recipe("AdamW learning rate on the token only", "lr")),
                io.Int.Input("batch_size", default=0, min=0, max=64,
                             tooltip=from_recipe("Images (seeds) per step", "batch_size")),
                io.Int.Input("micro_batch", default=0, min=0, max=64,
                             tooltip="Images per forward/backward to save VRAM (0 = the whole batch at once)."),
                io.Float.Input("cfg", default=d.sampling.guidance, min=0.0, max=30.0, step=0.1,
                               tooltip="Classifier-free guidance scale while training."),
                io.Combo.Input("sampler_name", options=host.sampler_names(), default="euler",
                               tooltip="The host sampler for the steps without gradient."),
                io.Combo.Input("scheduler", options=host.scheduler_names(), default="normal",
                               tooltip="The host scheduler (sigmas)."),
                io.Int.Input("sampling_steps", default=d.sampling.sampling_steps, min=1, max=200,
                             tooltip="Sampling steps per image (paper: 30)."),
                io.Int.Input("resolution", default=d.sampling.resolution, min=64, max=2048, step=8,
                             tooltip="Image size while training (SD1.x: 512, SDXL: 1024)."),
                io.Int.Input("seed", default=d.seed, min=0, max=0xFFFFFFFF, control_after_generate=False,
                             tooltip="First training seed; the batch uses seed, seed+1, ..."),
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
                io.String.Input("save_name", default="class-token",
                                tooltip="Saved as models/embeddings/<name>.safetensors; use embedding:<name> in "
                                        "prompts. Empty: do not save."),
                io.Boolean.Input("overwrite", default=False, tooltip="Replace an existing token file of that name."),
                io.Int.Input("preview_every", default=1, min=0, max=1000,
                             tooltip="Show the current batch on the node every N steps (0: never)."),
                io.Boolean.Input("fresh_seeds", default=False, optional=True,
                                 tooltip="On: new seeds every step whatever the recipe says (the token then fits "
                                         "no particular images). Off: the recipe's choice."),
                # Default "paper", not the pack's default: the frontend gives a widget missing from a saved
                # workflow its default, and workflows saved before this input existed trained with the paper's.
                # The deprecated node keeps the recipes it shipped with; newer ones are on the Train node.
                io.Combo.Input("recipe", options=[r for r in PRESETS if r in LEGACY_RECIPES], default=LEGACY_RECIPE,
                               optional=True,
                               tooltip=f"The training recipe the settings start from; a setting left at 0 or empty "
                                       f"takes the recipe's value. {DEFAULT_PRESET}: the measured default "
                                       "(README, 'Recipes'); paper: Schwartz et al. exactly. Workflows saved "
                                       "before this input existed run as 'paper'."),
            ],
            outputs=outputs(),
            hidden=[io.Hidden.unique_id],
            # Deprecated, never io.NodeReplace'd onto DCTTrainToken: a replacement would drop the settings on its
            # widgets, and saved workflows must train as they did.
            **schema_fields(is_deprecated=True),
        )

    @classmethod
    def execute(cls, model, clip, vae, classifier, target_class, save_name, overwrite, recipe=None,
                **widgets: Any) -> io.NodeOutput:
        recipe = recipe or LEGACY_RECIPE  # an API prompt saved before the recipe input: the paper's, as it ran
        return train(model, clip, vae, classifier, target_class, widgets.pop("steps"), save_name, overwrite, recipe,
                     legacy_options(widgets), unique_id(cls))
