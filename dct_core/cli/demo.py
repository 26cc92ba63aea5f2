"""`dct demo`: tokens on the built-in demo world and a Table-1-like table (no download, CPU)."""

from __future__ import annotations

import sys

from ..config import DEFAULT_PRESET, PRESETS
from . import options
from .progress import CancelOnInterrupt, step_printer

HELP = "train tokens on the built-in demo world and print a Table-1-like table (no download, CPU, about 2 min)"


def add_parser(sub) -> None:
    from ..settings import setting

    d = sub.add_parser("demo", help=HELP)
    d.add_argument("--out", default="dct-demo", help="output folder (default ./dct-demo)")
    d.add_argument("--class", dest="classes", action="append",
                   help="demo class to train (repeatable; default: the ambiguous and the fine-detail one)")
    d.add_argument("--recipe", default=DEFAULT_PRESET, choices=sorted(PRESETS),
                   help=f"training recipe (default {DEFAULT_PRESET}; 'paper' for the paper's exactly)")
    options.add_setting(d, setting("max_steps"), note="per token; default: the recipe's")
    options.add_setting(d, setting("backprop_depth"),
                        note="for a recipe that takes the last steps; default: the recipe's")
    options.add_size(d, "num_images", 64)
    d.add_argument("--json", dest="json_path", help="also write the table as JSON to this file")
    options.add_setting(d, setting("seed"), default=0, note="first training seed")


def run(args) -> int:
    from ..config import preset_config
    from ..jobs.demo import format_table, run_demo

    print("dct demo: class tokens on the built-in demo world (CPU, no download)", file=sys.stderr)
    bar, on_step = step_printer(args.max_steps or preset_config(args.recipe).max_steps)

    def on_class(target):
        bar.reset()
        print(f"training a token for {target.label!r} ({target.kind}; prompts say {target.word!r})", file=sys.stderr)

    with CancelOnInterrupt() as cancel, bar:
        report = run_demo(
            args.out, classes=args.classes, steps=args.max_steps, backprop_depth=args.backprop_depth,
            num_images=args.num_images, seed=args.seed, json_path=args.json_path, recipe=args.recipe,
            on_class=on_class, on_step=on_step, should_cancel=cancel,
        )
    if report.rows:
        print(format_table(report))
    written = [str(p) for p in report.token_paths]
    written += [str(p) for p in (report.grid_path, report.json_path) if p is not None]
    if written:
        print(f"wrote {', '.join(written)}")
    if report.grid_path is not None:
        print("grid rows: per class, 8 fresh seeds without the token, then the same seeds with it")
    if report.cancelled:
        print("dct demo: cancelled; the table holds only the classes finished before that", file=sys.stderr)
        return 130
    return 0
