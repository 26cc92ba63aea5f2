"""Command-line options. The settings come from the one table (dct_core.settings): each is ``--<name>`` with its
older spellings kept; what is not a setting (the model, the classifier, files) is declared here once."""

from __future__ import annotations

import argparse
from typing import Any

from ..config import PRESETS, SamplingConfig, TrainConfig, config_values
from ..errors import DCTError
from ..settings import (
    BACKEND,
    CLI,
    GENERATION,
    TRAINING,
    Setting,
    check,
    in_section,
    parse_indices,
    parse_interval,
    parse_ranges,
    setting,
)

RECIPE_DEFAULT_NOTE = "an option left out takes the recipe's value"


def seeds(text: str) -> list[int]:
    """"0-7" or "1,5,9" or "3": seeds within the seed setting's bounds, at most as many as an image count."""
    seed, count = setting("seed"), setting("num_images")
    try:
        return list(parse_ranges("--seeds", text, int(seed.low or 0), int(seed.high or 0), int(count.high or 0)))
    except DCTError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _typed(s: Setting):
    """The argparse type of a setting: parses and checks one value (bounds, finite numbers, choices)."""
    def parse(text: str) -> Any:
        try:
            if s.kind == "interval":
                return parse_interval(s.name, text)
            if s.kind == "indices":
                return parse_indices(s.name, text)
            value: Any = int(text) if s.kind == "int" else float(text) if s.kind == "float" else text
            check(s.name, value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{s.flag} takes {'a whole number' if s.kind == 'int' else 'a number'}, "
                                             f"got {text!r}") from None
        except DCTError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return value

    parse.__name__ = s.kind  # argparse names the type in its error
    return parse


def _shown(value: Any) -> str:
    if isinstance(value, tuple):
        return f"its {len(value)}"
    return repr(value) if isinstance(value, str) else str(value)


def _recipe_note(name: str) -> str:
    """"balanced: 0.05; paper: 0.00125": what each recipe gives a setting the user leaves out."""
    from ..config import preset_config

    values = {recipe: config_values(preset_config(recipe)).get(name) for recipe in PRESETS}
    if all(v is None or v == "" for v in values.values()):
        return ""
    if len({repr(v) for v in values.values()}) == 1:
        return f"every recipe: {_shown(next(iter(values.values())))}"
    return "; ".join(f"{recipe}: {_shown(v)}" for recipe, v in values.items())


def add_setting(group, s: Setting, *, default: Any = None, note: str = "", required: bool = False) -> None:
    """``--<name>`` (and its older spellings) for one setting; its value lands in ``args.<name>``."""
    flags = [s.flag, *s.flags]
    tail = note or (_recipe_note(s.name) if s.from_recipe else "")
    if default is not None:
        tail = f"default {default}" + (f"; {tail}" if tail else "")
    help_text = s.help + (f" ({tail})" if tail else "")
    if s.kind == "flag":
        group.add_argument(*flags, dest=s.name, action=argparse.BooleanOptionalAction, default=default,
                           help=help_text)
    elif s.kind == "lines":
        group.add_argument(*flags, dest=s.name, action="append", default=default,
                           help=help_text + "; repeat for several")
    elif s.kind == "choice":
        group.add_argument(*flags, dest=s.name, choices=list(s.choices), default=default, help=help_text)
    else:
        group.add_argument(*flags, dest=s.name, type=_typed(s), default=default, required=required, help=help_text)


def add_training(p: argparse.ArgumentParser) -> None:
    """The recipe and every training setting the CLI shows, then generation; what is left out is the recipe's."""
    p.add_argument("--recipe", default=_default_preset(), choices=sorted(PRESETS),
                   help=f"named settings the options below start from (default {_default_preset()}; 'paper' for "
                        f"the paper's exactly); {RECIPE_DEFAULT_NOTE}")
    t = p.add_argument_group("training")
    for s in in_section(TRAINING, front=CLI):
        add_setting(t, s)
    add_generation(p)


def add_generation(p: argparse.ArgumentParser, *, seed: int = 0) -> None:
    g = p.add_argument_group("generation")
    model_note = {"resolution": "SD 512, SDXL 1024, world 32", "sampling_steps": "SD 30, world 10",
                  "guidance": "SD 7, world 3"}
    for s in in_section(GENERATION, BACKEND, front=CLI):
        if s.name == "seed":
            add_setting(g, s, default=seed)
        elif s.name == "sampler":
            add_setting(g, s, default="ddim")
        else:
            note = f"default: the model's ({model_note[s.name]})" if s.name in model_note else ""
            add_setting(g, s, note=note)
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    g.add_argument("--dtype", default="auto", help="auto, fp32, fp16 or bf16 (auto: fp32 on CPU, bf16/fp16 on GPU)")


def add_size(p, name: str, default: int) -> None:
    add_setting(p, setting(name), default=default)


def add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True,
                   help="local diffusers folder, single-file .safetensors checkpoint, or a built-in model name: "
                        "'world' (the demo world: pair it with --classifier world:guide or world:held-out)")
    p.add_argument("--model-kind", choices=["sd1", "sd2", "sd2-v", "sdxl"], help="family of a single-file checkpoint")


def add_classifier(p: argparse.ArgumentParser, *, target: bool = True, many: bool = True, required: bool = True,
                   title: str | None = None):
    c = p.add_argument_group(title or ("classifier" if required else "classifier (for --adaptive)"))
    if many:
        c.add_argument("--classifier", action="append", required=required, dest="classifiers",
                       help="timm:<name>[@weights], a timm/transformers folder, a TorchScript file or clip:<folder>; "
                            "repeat for an ensemble; options as SPEC#pooling=mean,multi_label=true")
    else:
        c.add_argument("classifiers", nargs="+", metavar="CLASSIFIER", help="a classifier in any form train accepts")
    c.add_argument("--classifier-weights", help="the classifier's weights (.safetensors, .pth, .bin)")
    c.add_argument("--labels", help="class names, one per line or JSON (default: from the model, or ImageNet)")
    c.add_argument("--pooling", choices=["cls", "mean"], help="transformers ViT: mean-pooled patch tokens (ViT-MAE)")
    c.add_argument("--multi-label", action="store_true", default=None,
                   help="sigmoid outputs (attributes): binary cross-entropy on the target")
    c.add_argument("--clip-template", help="zero-shot CLIP prompt (default 'a photo of a {label}')")
    c.add_argument("--trust-code", action="store_true",
                   help="allow TorchScript classifiers: loading one runs the code inside the file (refused "
                        "without this flag); only for files you trust")
    c.add_argument("--classifier-checkpointing", action="store_true",
                   help="gradient checkpointing inside the classifier (large ViTs)")
    if target:
        c.add_argument("--class", dest="target", required=required,
                       help="target class: a name (any synonym) or an index")
        c.add_argument("--target-off", action="store_true",
                       help="multi-label classifiers: train toward the attribute being absent")
        c.add_argument("--prompt-label",
                       help="the class as written in prompts (default: the classifier's name for it); e.g. the "
                            "coarse word 'bird' when the class is a species")


def given(args: argparse.Namespace, settings: list[Setting]) -> dict[str, Any]:
    """The settings the user typed (None: left to the recipe or the model)."""
    out = {}
    for s in settings:
        value = getattr(args, s.name, None)
        if value is not None:
            out[s.name] = tuple(value) if s.kind in ("lines", "indices") else value
    return out


def sampling(args: argparse.Namespace) -> SamplingConfig:
    """The user's generation settings; what they leave out comes from the model's defaults (SD, or a built-in
    model's own, e.g. the demo world's)."""
    from dataclasses import replace

    from ..registry import named_model

    named = named_model(getattr(args, "model", None) or "")
    base = named.sampling if named is not None else SamplingConfig()
    fields = set(SamplingConfig.__dataclass_fields__)  # the seed is the run's, not the sampler's
    chosen = replace(base, **{k: v for k, v in given(args, in_section(GENERATION, front=CLI)).items() if k in fields})
    chosen.validate()
    return chosen


def train_config(args: argparse.Namespace, **defaults: Any) -> TrainConfig:
    """The TrainConfig of add_training's options: the recipe, then ``defaults`` (a model's own, e.g. the demo
    world's prompts), then what the user gave."""
    from ..config import preset_config

    typed = given(args, in_section(TRAINING, front=CLI))
    seed = getattr(args, "seed", None)
    return preset_config(args.recipe, **{**defaults, "sampling": sampling(args), **typed,
                                         **({"seed": seed} if seed is not None else {})})


def _default_preset() -> str:
    from ..config import DEFAULT_PRESET

    return DEFAULT_PRESET


__all__ = ["add_classifier", "add_generation", "add_model", "add_setting", "add_size", "add_training",
           "given", "sampling", "seeds", "train_config"]
