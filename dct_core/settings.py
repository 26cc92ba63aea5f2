"""Every setting a user types, declared once: name, kind, bounds, what "unset" means, help, where it shows.

The name is the same everywhere: the CLI's long option (``--sampling-steps``), the ComfyUI node's input
(``sampling_steps``), the token metadata key and the config field. Front ends build their options from
:data:`SETTINGS` (``dct_core/cli/options.py``, ``nodes/adapters/settings_widgets.py``), the configs validate with
:func:`check`, and the token metadata records the settings marked ``metadata``. Adding a setting is one entry
here plus its field in the config that holds it (``config.py`` or the DATE config) and the code that uses it.

Defaults live in the configs (the paper's) and in the recipes (``config.PRESETS``); a setting marked
``from_recipe`` left unset takes the chosen recipe's value.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .errors import DCTError

TOKEN_MARK = "{token}"  # where the class token goes in a prompt template
LABEL_MARK = "{label}"  # where the class name goes


def check_templates(templates: Iterable[str]) -> None:
    templates = list(templates)
    if not templates:
        raise DCTError("no prompt templates given; use e.g. 'A photo of {token} {label}'.")
    for template in templates:
        if template.count(TOKEN_MARK) != 1:
            raise DCTError(
                f"prompt template {template!r} must contain {TOKEN_MARK} exactly once, where the class "
                "token goes; e.g. 'A photo of {token} {label}'."
            )

CLI, NODE, WEBUI = "cli", "node", "webui"
ALL_FRONTS = (CLI, NODE, WEBUI)

# Sections: which config holds the setting.
TRAINING, GENERATION, DATE, BACKEND, SIZES, PROGRESS = "training", "generation", "date", "backend", "sizes", "progress"

# Kinds: int, float, text, lines (a list of texts: prompts), flag (on/off), choice, interval ("0.2-0.8"),
# indices (step numbers: "0-9" or "2,5").
KINDS = ("int", "float", "text", "lines", "flag", "choice", "interval", "indices")


@dataclass(frozen=True)
class Setting:
    name: str
    kind: str
    help: str
    section: str = TRAINING
    low: float | None = None  # bounds of a number (or of both ends of an interval)
    high: float | None = None
    low_open: bool = False  # the bound itself is not allowed
    high_open: bool = False
    choices: tuple[str, ...] = ()  # kind "choice"; empty: the front end supplies them (the host's samplers)
    from_recipe: bool = False  # unset (None) means the recipe's value
    unset: str = ""  # what unset means when it is not "the recipe's" ("the whole batch at once")
    metadata: bool = False  # token files record it (key = name)
    fronts: tuple[str, ...] = ALL_FRONTS
    flags: tuple[str, ...] = ()  # older CLI spellings, still accepted
    cli_flag: str = ""  # the CLI's spelling where it is not --<name> (a repeatable --template)
    widget_max: float | None = None  # a UI slider's end where the bound is open-ended
    widget_step: float | None = None
    extra_check: Callable[[Any], None] | None = None  # what bounds cannot say (a template's {token})
    node_unset: float = 0  # the number a node widget shows for "unset" (-1 where 0 is a value of its own)

    @property
    def flag(self) -> str:
        return self.cli_flag or "--" + self.name.replace("_", "-")

    def describe_bounds(self) -> str:
        lo = "" if self.low is None else f"{'>' if self.low_open else '>='} {self.low:g}"
        hi = "" if self.high is None else f"{'<' if self.high_open else '<='} {self.high:g}"
        return " and ".join(p for p in (lo, hi) if p)


def _s(name: str, kind: str, help: str, **kw: Any) -> Setting:
    return Setting(name, kind, help, **kw)


# The order is the order of the ComfyUI Options node's inputs (saved workflows restore widgets by position): new
# settings go at the end of their section's node block.
SETTINGS: tuple[Setting, ...] = (
    # --- training ---------------------------------------------------------------------------------------------
    _s("init_word", "text", "Word whose embedding starts the token ('a' as the paper for ImageNet; a related word "
       "such as 'bird' helps a bird classifier)", from_recipe=True, metadata=True),
    _s("templates", "lines", "Training prompts with {token} and {label}", from_recipe=True, metadata=True,
       cli_flag="--template", extra_check=check_templates),
    _s("lr", "float", "AdamW learning rate on the token only", low=0, high=10, low_open=True, from_recipe=True,
       metadata=True, widget_max=1.0, widget_step=1e-5),
    _s("batch_size", "int", "Images (seeds) per optimization step", low=1, high=1024, from_recipe=True, metadata=True,
       widget_max=64),
    _s("micro_batch", "int", "Images per forward/backward, to save memory", low=1, high=1024,
       unset="the whole batch at once",
       widget_max=64),
    _s("guidance", "float", "Classifier-free guidance scale while sampling", section=GENERATION, low=0, high=100,
       from_recipe=True, metadata=True, widget_max=30.0, widget_step=0.1),
    _s("sampler_name", "choice", "The host sampler for the steps without gradient", section=BACKEND,
       fronts=(NODE,)),
    _s("scheduler", "choice", "The host scheduler (sigmas)", section=BACKEND, fronts=(NODE,)),
    _s("sampling_steps", "int", "Sampling steps per image", section=GENERATION, low=1, high=1000, from_recipe=True,
       metadata=True, widget_max=200),
    _s("resolution", "int", "Image size in pixels (SD1.x: 512, SDXL: 1024)", section=GENERATION, low=8, high=4096,
       from_recipe=True, unset="the model's native size (SDXL: 1024), else the recipe's (512)", metadata=True,
       widget_max=2048, widget_step=8),
    _s("seed", "int", "First seed; a batch uses seed, seed+1, ...", section=GENERATION, low=0, high=2**63 - 1,
       metadata=True,
       widget_max=0xFFFFFFFF),
    _s("accuracy_threshold", "float", "Stop once a batch (averaged over threshold_window steps) is classified this "
       "well", low=0, low_open=True, high=1,
       from_recipe=True, widget_step=0.01),
    _s("patience", "int", "Or stop after this many steps without a lower loss", low=1, high=100_000, from_recipe=True,
       widget_max=1000),
    _s("backprop_depth", "int", "Sampling steps taken with gradient, K, when the gradient is taken at the last "
       "steps (the paper's gradient skipping: 1)", low=1, high=1000, from_recipe=True, metadata=True, widget_max=50),
    _s("decoder", "choice", "Decoder for the training signal: the checkpoint's VAE, or a TAESD decoder from "
       "models/vae_approx (much cheaper at 512 px)", section=BACKEND, fronts=(NODE,)),
    _s("preview_every", "int", "Show the current batch every N steps (0: never)", section=PROGRESS, low=0, high=100_000,
       widget_max=1000),
    _s("fresh_seeds", "flag", "New seeds every step (the token then fits no particular images) instead of the same "
       "batch of seeds", from_recipe=True, metadata=True),
    # settings that reached no front end before the table
    _s("gradient_point", "choice", "Where the gradient is taken: the last K sampling steps (paper) or the predicted "
       "clean image x0 at a random intermediate step", choices=("last", "x0"), from_recipe=True),
    _s("x0_interval", "interval", "Fraction of the trajectory the x0 gradient point is drawn from, e.g. 0.2-0.8",
       low=0, high=1, from_recipe=True),
    _s("x0_points", "int", "x0 gradient points per image", low=1, high=100, from_recipe=True, widget_max=10),
    _s("preserve", "float", "Pull toward the image the prompt alone makes on the same seed (x0 gradient point): "
       "keeps what the prompt leaves free", low=0, high=1e4, from_recipe=True, widget_max=1000.0, widget_step=0.1,
       node_unset=-1),
    _s("keep", "choice", "The token returned: the best step's (paper), the last, or the mean of the tokens of the "
       "last half of the steps (average)", choices=("best", "last", "average"), from_recipe=True, metadata=True),
    _s("validation_images", "int", "Pick the best token on this many fixed validation seeds (0: on the training "
       "batch)", low=0, high=1024, from_recipe=True, widget_max=64, node_unset=-1),
    _s("threshold_window", "int", "Average the stop accuracy over this many steps", low=1, high=10_000,
       from_recipe=True,
       widget_max=100),
    _s("enough_prob", "float", "Stop pushing an image once the classifier gives the class this probability (0: "
       "plain cross-entropy)", low=0, high=1, high_open=True, from_recipe=True, widget_max=0.99, widget_step=0.01,
       node_unset=-1),
    _s("init_pull", "float", "L2 pull toward the init word, relative to its norm (0: off)", low=0, high=1e4,
       from_recipe=True, widget_max=100.0, widget_step=0.01, node_unset=-1),
    _s("norm_cap", "float", "Keep the token's norm within this multiple of the init word's (0: off)", low=0, high=1e4,
       from_recipe=True, widget_max=100.0, widget_step=0.1, node_unset=-1),
    _s("weight_decay", "float", "AdamW weight decay on the token", low=0, high=100, from_recipe=True, widget_max=10.0,
       widget_step=1e-3, node_unset=-1),
    _s("max_grad_norm", "float", "Gradient clipping norm", low=0, high=1e6, low_open=True, from_recipe=True,
       widget_max=1000.0, widget_step=0.1),
    _s("num_vectors", "int", "Vectors in the token", low=1, high=75, from_recipe=True, metadata=True, widget_max=16),
    _s("checkpointing", "flag", "Block-level gradient checkpointing in the UNet step(s) with gradient, the decoder "
       "and the classifier (off: faster, much more memory)", from_recipe=True),
    _s("negative_prompt", "text", "Negative prompt", section=GENERATION, from_recipe=True),
    _s("spread", "float", "Keep the batch's variety (x0 gradient point): the token's images must look as varied as "
       "the prompt alone's on the same seeds, in what the guide's first layer reads (colour, texture; 0: off)", low=0,
       high=1e4, from_recipe=True, metadata=True, widget_max=100.0, widget_step=0.1, node_unset=-1),
    _s("free_words", "text", "Words naming what the prompt leaves free, comma-separated (colours): the token may not "
       "move along their embedding directions, so it cannot paint every image one colour; words of the class's own "
       "name are left out (none: off)", from_recipe=True, metadata=True),
    _s("free_penalty", "float", "Weight of keeping the free words out of what the token does to the prompt's text "
       "conditioning, not only its own vector (0: off)", low=0, high=1e4, from_recipe=True, metadata=True,
       widget_max=1000.0, widget_step=0.1, node_unset=-1),
    # The step budget: on the Train node itself (its 'max_steps' input), not on the Options node.
    _s("max_steps", "int", "Maximum optimization steps", low=1, high=100_000, from_recipe=True, metadata=True,
       flags=("--steps",), fronts=(CLI, WEBUI), widget_max=10000),
    # --- the diffusers backend (CLI) -----------------------------------------------------------------------------
    _s("sampler", "choice", "Sampler of the diffusers backend", section=BACKEND, choices=("ddim", "euler", "own"),
       flags=("--scheduler",), fronts=(CLI,)),
    # --- DATE: test-time conditioning updates -------------------------------------------------------------------
    _s("rho", "float", "Step length of each update of the conditioning (DATE; 0 = plain sampling)", section=DATE,
       low=0, high=100, flags=("--adaptive-rho",), widget_max=5.0, widget_step=0.01),
    _s("every", "int", "Update at every N-th sampling step", section=DATE, low=1, high=10_000,
       flags=("--adaptive-every",),
       widget_max=1000),
    _s("interval", "interval", "Fraction of the trajectory where updates happen, e.g. 0.2-0.8", section=DATE, low=0,
       high=1, flags=("--adaptive-interval",)),
    _s("updates_per_step", "int", "Updates at each chosen step", section=DATE, low=1, high=100,
       flags=("--adaptive-updates",), widget_max=20),
    _s("reset", "flag", "Each update starts from the original conditioning (off: updates add up)", section=DATE),
    _s("prior", "float", "L2 pull of the updated conditioning toward the original", section=DATE, low=0, high=1e4,
       flags=("--adaptive-prior",), widget_max=100.0, widget_step=0.01),
    _s("score", "choice", "What is raised: the class log-probability, or the raw logit (zero-shot CLIP similarity)",
       section=DATE, choices=("log_prob", "logit"), flags=("--adaptive-score",)),
    _s("at_steps", "indices", "Update exactly at these sampling steps (0-based), e.g. 0-9 or 2,5 (not every N-th)",
       section=DATE, low=0, high=10_000, flags=("--adaptive-steps",), fronts=(CLI, WEBUI)),
    _s("date_target", "choice", "What moves: all prompt positions, the class-token positions, or also SDXL's pooled "
       "embedding", section=DATE, choices=("all", "token", "pooled"), flags=("--adaptive-target",),
       fronts=(CLI, WEBUI)),
    # --- sizes of the jobs (eval, demo, library, dataset) ---------------------------------------------------------
    _s("num_images", "int", "Fresh-seed images per condition (with and without the token)", section=SIZES, low=1,
       high=100_000,
       fronts=(CLI, WEBUI), widget_max=1024),
    _s("eval_images", "int", "Fresh seeds per class for the library's held-out judge", section=SIZES, low=1,
       high=10_000,
       fronts=(CLI,)),
    _s("images_per_class", "int", "Images to draw per class", section=SIZES, low=1, high=1_000_000, fronts=(CLI,)),
)

BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}


def setting(name: str) -> Setting:
    try:
        return BY_NAME[name]
    except KeyError:
        raise DCTError(f"unknown setting {name!r}; known: {', '.join(sorted(BY_NAME))}.") from None


def in_section(*sections: str, front: str | None = None) -> list[Setting]:
    return [s for s in SETTINGS if s.section in sections and (front is None or front in s.fronts)]


def metadata_names() -> list[str]:
    return [s.name for s in SETTINGS if s.metadata]


def _number(s: Setting, value: Any, what: str) -> float:
    number_types = (int,) if s.kind == "int" else (int, float)
    if isinstance(value, bool) or not isinstance(value, number_types):
        raise DCTError(f"{what} must be {'a whole number' if s.kind == 'int' else 'a number'}, got {value!r}.")
    if not math.isfinite(value):
        raise DCTError(f"{what} must be a finite number, got {value!r}.")
    low_bad = s.low is not None and (value <= s.low if s.low_open else value < s.low)
    high_bad = s.high is not None and (value >= s.high if s.high_open else value > s.high)
    if low_bad or high_bad:
        raise DCTError(f"{what} must be {s.describe_bounds()}, got {value!r}.")
    return float(value)


def check(name: str, value: Any) -> None:
    """Raise a one-line DCTError when ``value`` is not a valid ``name`` (None, unset, always passes)."""
    s = setting(name)
    if value is None:
        return
    if s.kind in ("int", "float"):
        _number(s, value, s.name)
    elif s.kind == "flag" and not isinstance(value, bool):
        raise DCTError(f"{s.name} must be true or false, got {value!r}.")
    elif s.kind == "choice" and s.choices and value not in s.choices:
        raise DCTError(f"unknown {s.name} {value!r}; choose one of: {', '.join(s.choices)}.")
    elif s.kind in ("text",) and not isinstance(value, str):
        raise DCTError(f"{s.name} must be text, got {value!r}.")
    elif s.kind == "lines" and (isinstance(value, str) or not all(isinstance(v, str) for v in value)):
        raise DCTError(f"{s.name} must be a list of texts, got {value!r}.")
    elif s.kind == "indices":
        if isinstance(value, str) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise DCTError(f"{s.name} must be step numbers, got {value!r}.")
        for v in value:
            _number(s, v, f"{s.name} {value!r}: each step")
    elif s.kind == "interval":
        lo, hi = _pair(s, value)
        for end in (lo, hi):
            _number(s, end, f"{s.name} {value!r}: each end")
        if lo > hi:
            raise DCTError(f"{s.name} {value!r} must be two fractions start <= end.")
    if s.extra_check is not None:
        s.extra_check(value)


def check_all(values: dict[str, Any]) -> None:
    for name, value in values.items():
        if name in BY_NAME:
            check(name, value)


def _pair(s: Setting, value: Any) -> tuple[Any, Any]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise DCTError(f"{s.name} must be two numbers (start, end), got {value!r}.")
    items = list(value)
    if len(items) != 2:
        raise DCTError(f"{s.name} must be two numbers (start, end), got {value!r}.")
    return items[0], items[1]


MAX_LISTED = 100_000  # numbers one range option may list ("0-7", "2,5,9")


def parse_ranges(name: str, text: str, low: int = 0, high: int = 2**63 - 1, max_count: int = MAX_LISTED
                 ) -> tuple[int, ...]:
    """"0-9" or "2,5" or "3" -> the numbers, each within [low, high] and at most ``max_count`` of them, checked
    arithmetically before anything is expanded (so "0-100000000000" costs nothing)."""
    spans: list[tuple[int, int]] = []
    try:
        for part in text.split(","):
            lo_text, dash, hi_text = part.strip().partition("-")
            lo = int(lo_text)
            hi = int(hi_text) if dash else lo
            spans.append((lo, hi))
    except ValueError:
        raise DCTError(f"{name} must look like 0-9 or 2,5, got {text[:80]!r}.") from None
    for lo, hi in spans:
        if lo > hi:
            raise DCTError(f"{name}: {lo}-{hi} runs backwards; write the smaller number first.")
        if lo < low or hi > high:
            shown = str(lo) if lo == hi else f"{lo}-{hi}"
            raise DCTError(f"{name}: {shown} is outside {low} to {high}.")
    count = sum(hi - lo + 1 for lo, hi in spans)
    if count > max_count:
        raise DCTError(f"{name} lists {count} numbers; at most {max_count} are allowed.")
    if not count:
        raise DCTError(f"{name}: no numbers given.")
    return tuple(n for lo, hi in spans for n in range(lo, hi + 1))


def parse_indices(name: str, text: str) -> tuple[int, ...]:
    """Step numbers of an "indices" setting ("0-9" or "2,5"), checked."""
    s = setting(name)
    return parse_ranges(name, text, int(s.low or 0), int(s.high if s.high is not None else 2**63 - 1))


def parse_interval(name: str, text: str) -> tuple[float, float]:
    """"0.2-0.8" (or "0.2,0.8") -> (0.2, 0.8), checked."""
    parts = text.replace(",", "-").split("-")
    try:
        lo, hi = (float(p) for p in parts)
    except ValueError:
        raise DCTError(f"{name} must look like 0.2-0.8, got {text!r}.") from None
    check(name, (lo, hi))
    return lo, hi


def format_value(value: Any) -> str:
    """How a value is written in token metadata and summaries."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (tuple, list)):
        import json

        return json.dumps(list(value))
    return str(value)


def from_request(name: str, value: Any) -> Any:
    """A value as a web form or a JSON client sends it (numbers as numbers or text, an interval as "0.2-0.8" or
    [0.2, 0.8], steps as "0-9" or a list, prompts as a list or one per line, a flag as true/false) -> the setting's
    value, checked; "" and None mean unset (None). One line naming the setting when it is wrong."""
    s = setting(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if s.kind in ("int", "float") and isinstance(value, str):
        try:
            value = float(value) if s.kind == "float" else int(value)
        except ValueError:
            raise DCTError(f"{name} must be {'a whole number' if s.kind == 'int' else 'a number'}, "
                           f"got {value!r}.") from None
    elif s.kind == "int" and isinstance(value, float) and value.is_integer():
        value = int(value)
    elif s.kind == "float" and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    elif s.kind == "interval" and isinstance(value, str):
        return parse_interval(name, value)
    elif s.kind == "interval" and isinstance(value, (list, tuple)):
        value = tuple(value)
    elif s.kind == "indices" and isinstance(value, str):
        return parse_indices(name, value)
    elif s.kind == "indices" and isinstance(value, list):
        value = tuple(value)
    elif s.kind == "lines" and isinstance(value, str):
        value = tuple(t.strip() for t in value.splitlines() if t.strip())
    elif s.kind == "lines" and isinstance(value, list):
        value = tuple(value)
    elif s.kind == "flag" and isinstance(value, str) and value.lower() in ("true", "false", "on", "off"):
        value = value.lower() in ("true", "on")
    if s.kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
        raise DCTError(f"{name} must be a whole number, got {value!r}.")
    check(name, value)
    return value
