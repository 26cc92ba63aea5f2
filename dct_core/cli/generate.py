"""`dct generate`: images with and without a class token on the same seeds, optionally steered with DATE."""

from __future__ import annotations

from pathlib import Path

from ..errors import DCTError
from ..settings import CLI, DATE, in_section
from . import options
from .loading import classifier_and_target, load_backend

HELP = "images with and without a class token on the same seeds"


def add_parser(sub) -> None:
    g = sub.add_parser("generate", help=HELP)
    options.add_model(g)
    g.add_argument("--token", help="class token file")
    g.add_argument("--prompt", required=True, help="prompt; {token} marks where the class token goes")
    g.add_argument("--seeds", type=options.seeds, default=options.seeds("0-7"), help="e.g. 0-7 or 1,5,9 (default 0-7)")
    g.add_argument("--out", required=True, help="output folder")
    options.add_generation(g)
    options.add_classifier(g, required=False)
    a = g.add_argument_group("test-time adaptive conditioning (DATE)")
    a.add_argument("--adaptive", action="store_true",
                   help="also sample with the conditioning nudged toward --class at chosen steps (no training)")
    for s in in_section(DATE, front=CLI):
        options.add_setting(a, s)
    a.add_argument("--adaptive-accumulate", dest="reset", action="store_const", const=False,
                   help="let updates add up (the same as --no-reset)")


def adaptive_config(args):
    """The DATE config of the options given (the rest: the config's defaults)."""
    from ..method.adaptive import AdaptiveConfig

    config = AdaptiveConfig(**options.given(args, in_section(DATE, front=CLI)))
    config.validate()
    return config


def run(args) -> int:
    from ..formats.images import make_grid, save_image, to_pil
    from ..formats.tokens import load_class_token
    from ..method.generation import generate_images
    from ..method.prompts import TOKEN_MARK, strip_token

    sampling = options.sampling(args)
    token = load_class_token(args.token) if args.token else None
    if token is not None and TOKEN_MARK not in args.prompt:
        raise DCTError(
            f"--prompt must contain {TOKEN_MARK} where the class token goes, e.g. 'a photo of {{token}} tiger cat'."
        )
    adaptive = None
    if args.adaptive:
        if not args.classifiers or args.target is None:
            raise DCTError("--adaptive needs a classifier and a class: --classifier SPEC --class NAME.")
        adaptive = (adaptive_config(args), *classifier_and_target(args))
    backend = load_backend(args)
    out = Path(args.out)
    seeds = args.seeds
    rows = {"without-token": generate_images(backend, [strip_token(args.prompt)] * len(seeds), seeds, sampling)}
    vectors = None
    if token is not None:
        vectors = {k: v.to(backend.device) for k, v in token.for_encoders(backend.encoders).items()}
        rows["with-token"] = generate_images(backend, [args.prompt] * len(seeds), seeds, sampling, vectors)
    if adaptive is not None:
        from ..method.adaptive import adaptive_generate, class_score

        config, classifier, target = adaptive
        classifier.to(backend.device)
        prompt = args.prompt if token is not None else strip_token(args.prompt)
        rows["adaptive"] = adaptive_generate(backend, [prompt] * len(seeds), seeds, sampling,
                                             class_score(classifier, target, config.score), config, vectors)
    for tag, row in rows.items():
        for seed, image in zip(seeds, row):
            save_image(to_pil(image), out / f"{tag}-seed{seed}.png")
    grid = save_image(make_grid(list(rows.values())), out / "grid.png")
    print(f"wrote {len(seeds) * len(rows)} images and {grid} (rows: {', '.join(rows)})")
    return 0
