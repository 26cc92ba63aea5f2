"""DCT Training Options: the Train node's settings beyond the few an artist needs, as a node plugged into
Train Discriminative Token's ``options`` input (the pattern of the host's SamplerCustomAdvanced pieces).

Its inputs are the settings table's (every setting the table shows on a node, in the table's order); its output
is a frozen :class:`TrainingOptions` in which a setting left unset means the chosen recipe's value, so the Train
node without options and with a fresh options node train alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dct_core.config import TrainConfig, preset_config
from dct_core.errors import DCTError
from dct_core.settings import BACKEND, GENERATION, PROGRESS, TRAINING, setting

from .adapters.decoders import installed as installed_decoders
from .adapters.host_internals import sampler_names, scheduler_names
from .adapters.node_api import io, schema_fields
from .adapters.settings_widgets import from_widgets, node_settings, widget
from .adapters.sockets import CATEGORY, TrainingOptionsSocket

CHECKPOINT_VAE = "checkpoint VAE"
# What the node-only settings are when no options node says otherwise.
HOST_DEFAULTS: dict[str, Any] = {"sampler_name": "euler", "scheduler": "normal", "decoder": CHECKPOINT_VAE,
                                 "preview_every": 1, "seed": 0}
TRAIN_NODE_OWN = ("max_steps",)  # on the Train node itself
# Options nodes saved before the table (2026-11) have 17 widgets; the settings added since are optional, so
# API-format prompts saved then still run (a UI workflow restores widgets by position and gets their defaults).
FIRST_WIDGETS = 17


@dataclass(frozen=True)
class TrainingOptions:
    """What DCT Training Options hands to the Train node: the settings that are set, by their table names.
    Host settings (sampler, scheduler, decoder, preview_every) fall back to HOST_DEFAULTS; a training or
    generation setting left out is the recipe's (``resolution``: the model's native size where that is not
    the recipe's 512, so SDXL trains at 1024)."""

    values: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, **values: Any) -> TrainingOptions:
        return cls({k: v for k, v in values.items() if v is not None})

    @classmethod
    def from_widgets(cls, values: Mapping[str, Any]) -> TrainingOptions:
        return cls(from_widgets(dict(values)))

    def host(self, name: str) -> Any:
        return self.values.get(name, HOST_DEFAULTS.get(name))

    def train_config(self, recipe: str, max_steps: int | None = None,
                     default_resolution: int | None = None) -> TrainConfig:
        """The engine's config: the recipe with these options (and ``max_steps``) over it. ``default_resolution``
        replaces the recipe's resolution when this leaves it unset (the model's native size)."""
        engine = {k: v for k, v in self.values.items() if setting(k).section not in (BACKEND, PROGRESS)}
        given = {"resolution": default_resolution, **engine, "max_steps": max_steps}
        return preset_config(recipe, **given)


# ---- widget helpers shared with the Train nodes ---------------------------------------------------------------
def decoders() -> list[str]:
    return [CHECKPOINT_VAE, *installed_decoders()]


HOST_CHOICES = {"sampler_name": sampler_names, "scheduler": scheduler_names, "decoder": decoders}


def option_inputs() -> list[io.Input]:
    shown = node_settings(TRAINING, GENERATION, BACKEND, PROGRESS, exclude=TRAIN_NODE_OWN)
    return [widget(s, HOST_CHOICES.get(s.name), HOST_DEFAULTS.get(s.name), optional=i >= FIRST_WIDGETS)
            for i, s in enumerate(shown)]


class TrainingOptionsNode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DCTTrainingOptions",
            **schema_fields(search_aliases=["DCT settings", "learning rate", "DCT"]),
            display_name="DCT Training Options",
            category=CATEGORY,
            description="More settings for Train Discriminative Token (DCT): plug into its 'options' input. A "
                        "setting left at its 'recipe' value (0, -1, empty or 'recipe', as its tooltip says) takes "
                        "the value of the recipe chosen on the Train node; the Train node's result lists the "
                        "settings it used.",
            inputs=option_inputs(),
            outputs=[TrainingOptionsSocket.Output("OPTIONS", display_name="options",
                                                  tooltip="Into Train Discriminative Token's 'options' input.")],
        )

    @classmethod
    def execute(cls, **widgets: Any) -> io.NodeOutput:
        try:
            return io.NodeOutput(TrainingOptions.from_widgets(widgets))
        except DCTError as exc:  # a node error the host shows as the user's mistake, as the Train node's
            raise ValueError(str(exc)) from exc
