"""`dct library`: one token per class into a folder (resumable; split over ranks under torchrun)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..formats.printable import printable_lines
from . import options
from .loading import classifier_name, load_backend, load_classifier

HELP = "train one token per class into a folder (resumable; split over ranks under torchrun)"


def add_parser(sub) -> None:
    lib = sub.add_parser("library", help=HELP)
    options.add_model(lib)
    options.add_classifier(lib, target=False)
    lib.add_argument("--classes", default="all",
                     help="all (default), indices like 0-9 or 3,5,7, or a file with one label or index per line")
    lib.add_argument("--out", required=True, help="folder for <class>.safetensors and index.json")
    lib.add_argument("--eval-classifier", metavar="SPEC",
                     help="a held-out classifier: each token's top-1 with it on a few fresh seeds goes in the index")
    options.add_size(lib, "eval_images", 8)
    options.add_training(lib)


def run(args) -> int:
    from ..jobs.distributed import process_group
    from ..jobs.library import INDEX_NAME, LibrarySettings, build_library, format_summary, select_classes
    from ..registry import named_model

    named = named_model(args.model)
    # A built-in model may say how its classes are prompted (the demo world: each class's coarse caption word)
    # and what its training needs (its own prompts); elsewhere prompts use the classifier's label.
    words = named.prompt_words() if named is not None and named.prompt_words is not None else None
    defaults = dict(named.train_defaults) if named is not None else {}
    out = Path(args.out)
    with process_group() as ranks:
        if ranks.world_size > 1:
            if ranks.device().type == "cpu":
                torch.set_num_threads(1)  # N ranks share the cores
            if args.device == "auto":
                args.device = str(ranks.device())
        config = options.train_config(args, **defaults)
        classifier = load_classifier(args)
        selection = select_classes(args.classes, classifier)
        eval_classifier = None
        if args.eval_classifier:
            from ..classifiers import load_classifier as load_spec

            eval_classifier = load_spec(args.eval_classifier, labels=args.labels, trust_code=args.trust_code)
        settings = LibrarySettings(config, args.recipe, Path(args.model).name, classifier_name(args), words,
                                   words is not None and args.init_word is None, eval_classifier,
                                   args.eval_classifier or "", args.eval_images)
        index = build_library(out, classifier, selection, settings, lambda: load_backend(args), ranks)
    if index is None:
        return 0
    print(printable_lines(format_summary(index)))
    print(f"wrote {out / INDEX_NAME}")
    # A class another run is retrying is that run's to report.
    failed = [e for e in index["classes"] if e["status"] == "failed" and not e.get("running_elsewhere")]
    return 1 if failed else 0
