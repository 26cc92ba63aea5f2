"""`dct dataset`: draw N images per token of a library into an ImageFolder tree with a manifest (resumable;
split over ranks under torchrun)."""

from __future__ import annotations

import sys

from ..settings import setting
from . import options
from .loading import load_backend

HELP = ("draw N images per token of a library into an ImageFolder tree with a manifest (resumable; split over ranks "
        "under torchrun)")


def add_parser(sub) -> None:
    from ..jobs.dataset import FIRST_SEED

    p = sub.add_parser("dataset", help=HELP)
    options.add_model(p)
    p.add_argument("--library", required=True, help="folder of class tokens (dct library's output)")
    options.add_setting(p, setting("images_per_class"), required=True)
    p.add_argument("--out", required=True,
                   help="output folder: OUT/<class>/<seed>.png and OUT/manifest.jsonl (a new or empty folder, or "
                        "one dct dataset wrote: rerun the same command to finish it)")
    p.add_argument("--allow-foreign-files", action="store_true",
                   help="write into an --out folder that holds other files too; they are never overwritten (a file "
                        "where an image or the manifest goes is an error)")
    p.add_argument("--prompt-template",
                   help="prompt for every class, with {token} and {label} (default: each token's training "
                        "templates, in turn)")
    p.add_argument("--without-tokens", action="store_true",
                   help="the same prompts without the class token (the plain-prompt baseline, same seeds)")
    p.add_argument("--seed", type=int, default=FIRST_SEED, help=f"first seed (default {FIRST_SEED})")
    f = p.add_argument_group("filter (keep only the images a classifier gives their class at least --min-prob)")
    f.add_argument("--min-prob", type=float,
                   help="keep an image only when --classifier gives its class at least this probability, and draw "
                        "on until --images-per-class are kept (best with a classifier other than the one the tokens "
                        "were trained against: it drops images that only fooled that one)")
    f.add_argument("--max-draws", type=int,
                   help="with --min-prob: seeds drawn per class at most (default 4 x --images-per-class)")
    options.add_classifier(p, target=False, required=False, title="filter classifier (with --min-prob)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto; one GPU per rank)")
    p.add_argument("--dtype", default="auto", help="auto, fp32, fp16 or bf16 (auto: fp32 on CPU, bf16/fp16 on GPU)")


def keep_filter(args):
    """The --min-prob filter, checked before anything is drawn (None without --min-prob)."""
    from ..errors import DCTError
    from ..jobs.dataset_filter import KeepFilter
    from .loading import classifier_name, load_classifier

    if args.min_prob is None:
        if args.classifiers or args.max_draws is not None:
            raise DCTError("--classifier and --max-draws filter the images: add --min-prob (e.g. 0.9), or leave "
                           "them out.")
        return None
    if not 0 < args.min_prob < 1:
        raise DCTError(f"--min-prob must be a probability between 0 and 1 (exclusive), got {args.min_prob}.")
    if not args.classifiers:
        raise DCTError("--min-prob needs the classifier that judges the images: add --classifier (best another "
                       "than the one the tokens were trained against).")
    max_draws = 4 * args.images_per_class if args.max_draws is None else args.max_draws
    if max_draws < args.images_per_class:
        raise DCTError(f"--max-draws {max_draws} is below --images-per-class {args.images_per_class}: at least as "
                       "many seeds must be drawn as images kept.")
    if max_draws > 100 * args.images_per_class:
        raise DCTError(f"--max-draws {max_draws} is more than 100 x --images-per-class; a class that passes that "
                       "rarely needs a lower --min-prob or another classifier.")
    # What the records name the filter by: a rerun with other weights or labels is not mixed in.
    name = classifier_name(args) + "".join(f" {flag}={value}" for flag, value in (
        ("weights", args.classifier_weights), ("labels", args.labels), ("pooling", args.pooling),
        ("clip_template", args.clip_template)) if value)
    return KeepFilter(load_classifier(args), args.min_prob, max_draws, name)


def run(args) -> int:
    from ..backends.runtime import resolve_device
    from ..config import SamplingConfig
    from ..jobs.distributed import process_group
    from ..registry import named_model

    keep = keep_filter(args)
    with process_group() as ranks:
        device = ranks.device() if args.device == "auto" else resolve_device(args.device)
        backend = load_backend(args, device)
        named = named_model(args.model)
        sampling = named.sampling if named is not None else SamplingConfig()

        def log(msg: str) -> None:
            print(f"[rank {ranks.rank}] {msg}" if ranks.world_size > 1 else msg, file=sys.stderr, flush=True)

        from ..jobs.dataset import write_dataset

        summary = write_dataset(backend, args.library, args.out, args.images_per_class, args.prompt_template,
                                args.without_tokens, args.seed, ranks, sampling=sampling, model=args.model,
                                allow_foreign=args.allow_foreign_files, keep=keep, log=log)
    if ranks.is_main:
        print(f"{summary.images} images of {summary.classes} classes in {summary.out_dir} (this process wrote "
              f"{summary.written}, found {summary.skipped} already there); manifest: {summary.manifest}")
        for folder, (kept, drawn) in summary.kept.items():
            short = kept < args.images_per_class
            print(f"{folder}: {kept} kept of {drawn} drawn ({100 * kept / max(drawn, 1):.0f}% pass)"
                  + (f"; SHORT of {args.images_per_class}: lower --min-prob or raise --max-draws" if short else ""))
    return 0
