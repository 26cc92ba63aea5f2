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
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto; one GPU per rank)")
    p.add_argument("--dtype", default="auto", help="auto, fp32, fp16 or bf16 (auto: fp32 on CPU, bf16/fp16 on GPU)")


def run(args) -> int:
    from ..backends.runtime import resolve_device
    from ..config import SamplingConfig
    from ..jobs.distributed import process_group
    from ..registry import named_model

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
                                allow_foreign=args.allow_foreign_files, log=log)
    if ranks.is_main:
        print(f"{summary.images} images of {summary.classes} classes in {summary.out_dir} (this process wrote "
              f"{summary.written}, found {summary.skipped} already there); manifest: {summary.manifest}")
    return 0
