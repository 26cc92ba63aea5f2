"""`dct train`: learn one class token from a classifier."""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import DCTError
from ..formats.printable import printable
from ..settings import setting
from . import options
from .loading import classifier_and_target, classifier_name, load_backend
from .progress import CancelOnInterrupt, step_printer

HELP = "learn a class token from a classifier"
OVERWRITE_HINT = "pass --overwrite to replace it or choose another --out"


def add_parser(sub) -> None:
    t = sub.add_parser("train", help=HELP)
    options.add_model(t)
    options.add_classifier(t)
    t.add_argument("--out", required=True, help="token file to write (.safetensors, or A1111 .pt)")
    t.add_argument("--overwrite", action="store_true", help="replace an existing token file")
    options.add_training(t)
    options.add_setting(t, setting("preview_every"), default=0, note="write a preview grid every N steps; 0: off")


def run(args) -> int:
    from ..formats.tokens import sanitize_name
    from ..jobs.run import RunHooks, TrainJob, execute, plan_run

    config = options.train_config(args)
    name = sanitize_name(Path(args.out).name)
    classifier, target = classifier_and_target(args)
    # Settings, class and --out checked once, before the model loads: a bad --out costs seconds, not a training.
    plan = plan_run(TrainJob(
        backend=None, classifier=classifier, target=target, config=config, name=name,
        prompt_label=args.prompt_label, target_on=not args.target_off, out=Path(args.out), overwrite=args.overwrite,
        overwrite_hint=OVERWRITE_HINT, recipe=args.recipe, base_model=Path(args.model).name,
        classifier_name=classifier_name(args),
    )).with_backend(load_backend(args))
    print(f"training a token for class {target} {printable(plan.job.label)!r} with {printable(classifier.describe())} "
          f"(recipe {args.recipe})", file=sys.stderr)
    assert plan.out is not None
    bar, on_step = step_printer(config.max_steps, plan.out.parent / f"{name}-previews", args.preview_every)
    with CancelOnInterrupt() as cancel, bar:
        outcome = execute(plan, RunHooks(on_step=on_step, should_cancel=cancel))
    if outcome.result.best is None:
        raise DCTError("training stopped before the first step finished; nothing was saved.")
    print(outcome.cli_line())
    if outcome.result.token_source():  # its own line: scripts read the line above as it always was
        print(f"token: {outcome.result.token_source()}")
    error = outcome.error()
    if error is not None:
        raise DCTError(error)
    print(f"wrote {outcome.path} (use {name!r} as the trigger word / embedding:{name})")
    return 0
