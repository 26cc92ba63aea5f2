"""The settings table (dct_core.settings) as ComfyUI widgets, and widget values back as settings.

Unset is a widget value of its own, so that a node's settings can be left to the recipe chosen on the Train
node: 0 (or -1 where 0 is a value, ``Setting.node_unset``) for numbers, empty for texts and prompts, ``recipe``
for choices and on/off settings. Each tooltip names what unset gives (the default recipe's value and the
paper's); the Train node's result lists the settings it trained with.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from dct_core.config import DEFAULT_PRESET, config_values, preset_config
from dct_core.errors import DCTError
from dct_core.settings import NODE, SETTINGS, Setting, parse_interval, setting

from .node_api import io

RECIPE_CHOICE = "recipe"
ON_OFF = {RECIPE_CHOICE: None, "on": True, "off": False}


def recipe_value(recipe: str, name: str) -> Any:
    return config_values(preset_config(recipe)).get(name)


def _unset_text(s: Setting, unset: Any) -> str:
    if s.unset:
        return f"{unset} = {s.unset}"
    shown = {k: recipe_value(k, s.name) for k in (DEFAULT_PRESET, "paper")}
    shown = {k: (f"its {len(v)}" if isinstance(v, tuple) and s.kind == "lines" else v) for k, v in shown.items()}
    return f"{unset} = the recipe's ({shown[DEFAULT_PRESET]}; paper {shown['paper']})"


def widget(s: Setting, choices: Callable[[], list[str]] | None = None, default: Any = None,
           optional: bool = False) -> io.Input:
    """One input for setting ``s``. ``choices``: the host's options for a choice the table leaves open (samplers);
    ``default``: the value shown for a setting that is not the recipe's; ``optional``: an API prompt may leave it
    out (a widget added after workflows were saved)."""
    made = _widget(s, choices, default)
    made.optional = optional
    return made


def _widget(s: Setting, choices: Callable[[], list[str]] | None, default: Any) -> io.Input:
    unset = s.node_unset
    if s.kind in ("int", "float"):
        cls = io.Int if s.kind == "int" else io.Float
        low = unset if s.from_recipe or s.unset else (s.low or 0)
        high = s.widget_max if s.widget_max is not None else s.high
        value = unset if s.from_recipe or (s.unset and default is None) else default
        extra: dict[str, Any] = {"step": s.widget_step} if s.widget_step is not None else {}
        if s.kind == "int" and s.name == "seed":
            extra["control_after_generate"] = False
        tip = s.help + ("; " + _unset_text(s, unset) if s.from_recipe or s.unset else "") + "."
        return cls.Input(s.name, default=value, min=low, max=high, tooltip=tip, **extra)
    if s.kind in ("text", "lines", "interval"):
        tip = f"{s.help}{'; one per line' if s.kind == 'lines' else ''}; {_unset_text(s, 'empty')}."
        return io.String.Input(s.name, default="", multiline=s.kind == "lines", tooltip=tip)
    if s.kind == "flag" and not s.from_recipe:
        return io.Boolean.Input(s.name, default=bool(default), tooltip=s.help + ".")
    if s.kind == "flag":
        return io.Combo.Input(s.name, options=list(ON_OFF), default=RECIPE_CHOICE,
                              tooltip=f"{s.help}; {_unset_text(s, RECIPE_CHOICE)}.")
    if s.from_recipe:
        return io.Combo.Input(s.name, options=[RECIPE_CHOICE, *s.choices], default=RECIPE_CHOICE,
                              tooltip=f"{s.help}; {_unset_text(s, RECIPE_CHOICE)}.")
    options = choices() if choices is not None else list(s.choices)
    return io.Combo.Input(s.name, options=options, default=default if default is not None else options[0],
                          tooltip=s.help + ".")


def node_settings(*sections: str, exclude: Iterable[str] = ()) -> list[Setting]:
    """The settings of ``sections`` a node shows, in the table's order (saved workflows restore widgets by
    position)."""
    skip = set(exclude)
    return [s for s in SETTINGS if NODE in s.fronts and s.section in sections and s.name not in skip]


def from_widget(name: str, value: Any) -> Any:
    """A widget's value as the setting's value; None when it means unset."""
    s = setting(name)
    if s.kind in ("int", "float"):
        return None if (s.from_recipe or s.unset) and value == s.node_unset else value
    if s.kind == "text":
        return value.strip() or None
    if s.kind == "lines":
        lines = tuple(t.strip() for t in value.splitlines() if t.strip())
        return lines or None
    if s.kind == "interval":
        return parse_interval(name, value) if value.strip() else None
    if s.kind == "flag":
        if isinstance(value, bool):
            return value
        if value not in ON_OFF:
            raise DCTError(f"{name} must be one of {', '.join(ON_OFF)}, got {value!r}.")
        return ON_OFF[value]
    return None if value == RECIPE_CHOICE and s.from_recipe else value


def from_widgets(values: dict[str, Any]) -> dict[str, Any]:
    """Widget values by setting name -> the settings that are set."""
    parsed = {name: from_widget(name, value) for name, value in values.items()}
    return {k: v for k, v in parsed.items() if v is not None}


def describe(values: dict[str, Any]) -> str:
    """"lr 0.05, batch_size 8, ..." for a node's result text."""
    from dct_core.settings import format_value

    return ", ".join(f"{k} {format_value(v)}" for k, v in values.items())
