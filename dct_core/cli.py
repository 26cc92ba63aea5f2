"""`dct train | generate | eval | demo`: the engine on the command line (console script and python -m dct_core)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from .config import DEFAULT_PRESET, PAPER_TEMPLATES, PRESETS, SamplingConfig, TrainConfig, preset_config
from .dataset import add_arguments as add_dataset_arguments
from .errors import DCTError


def _seeds(text: str) -> list[int]:
    """"0-7" or "1,5,9" or "3"."""
    try:
        out: list[int] = []
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            out += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"seeds must look like 0-7 or 1,5,9, got {text!r}") from exc
    if not out:
        raise argparse.ArgumentTypeError("no seeds given")
    return out


def _add_generation(p: argparse.ArgumentParser, *, seed: int = 0) -> None:
    g = p.add_argument_group("generation")
    g.add_argument("--resolution", type=int, help="image size in pixels (default 512; SDXL: 1024; world: 32)")
    g.add_argument("--sampling-steps", type=int, help="sampling steps per image (default 30; world: 10)")
    g.add_argument("--guidance", type=float, help="classifier-free guidance scale (default 7; world: 3)")
    g.add_argument("--scheduler", default="ddim", choices=["ddim", "euler", "own"], help="sampler (default ddim)")
    g.add_argument("--negative-prompt", default="", help="negative prompt (default empty)")
    g.add_argument("--seed", type=int, default=seed, help=f"first seed (default {seed})")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    g.add_argument("--dtype", default="auto", help="auto, fp32, fp16 or bf16 (auto: fp32 on CPU, bf16/fp16 on GPU)")


def _add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True,
                   help="local diffusers folder, single-file .safetensors checkpoint, or a built-in model name: "
                        "'world' (the demo world: pair it with --classifier world:guide or world:held-out)")
    p.add_argument("--model-kind", choices=["sd1", "sd2", "sd2-v", "sdxl"], help="family of a single-file checkpoint")


def _add_classifier(p: argparse.ArgumentParser, *, target: bool = True, many: bool = True, required: bool = True):
    c = p.add_argument_group("classifier" if required else "classifier (for --adaptive)")
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


def _add_train_options(p: argparse.ArgumentParser) -> None:
    """The training settings `dct train` and `dct library` share (recipe, steps, lr, ..., generation)."""
    p.add_argument("--recipe", default=DEFAULT_PRESET, choices=sorted(PRESETS),
                   help=f"named settings the options below start from (default {DEFAULT_PRESET}: the paper's)")
    paper = TrainConfig()  # the paper's values, shown in the help; an option left out takes the recipe's value
    p.add_argument("--steps", type=int, help=f"maximum optimization steps (paper: {paper.max_steps})")
    p.add_argument("--batch-size", type=int, help=f"images (seeds) per step (paper: {paper.batch_size})")
    p.add_argument("--micro-batch", type=int, help="images per forward/backward, to save memory")
    p.add_argument("--lr", type=float, help=f"AdamW learning rate (paper: {paper.lr})")
    p.add_argument("--weight-decay", type=float, help=f"AdamW weight decay on the token (paper: {paper.weight_decay})")
    p.add_argument("--init-word", help=f"word whose embedding starts the token (paper: {paper.init_word!r})")
    p.add_argument("--num-vectors", type=int, help=f"vectors in the token (paper: {paper.num_vectors})")
    p.add_argument("--template", action="append", dest="templates",
                   help="prompt template with {token} and {label}; repeat for several (paper: its two)")
    p.add_argument("--fresh-seeds", action="store_true", default=None,
                   help="new seeds every step instead of the same batch of seeds (paper: the same)")
    p.add_argument("--backprop-depth", type=int,
                   help=f"sampling steps with gradient, K (paper: {paper.backprop_depth})")
    p.add_argument("--gradient-point", choices=["last", "x0"],
                   help="where the gradient is taken: the last K sampling steps (paper) or the predicted clean "
                        "image x0 at a random intermediate step")
    p.add_argument("--preserve", type=float,
                   help="pull toward the image the prompt alone makes on the same seed (x0 gradient point): "
                        "keeps what the prompt leaves free (paper: 0)")
    p.add_argument("--keep", choices=["best", "last"],
                   help="the token returned: the best training batch's (paper) or the last")
    p.add_argument("--threshold-window", type=int,
                   help=f"average the stop accuracy over this many steps (paper: {paper.threshold_window})")
    p.add_argument("--no-checkpointing", dest="checkpointing", action="store_false", default=None,
                   help="keep all activations (faster, much more memory); default: block-level gradient "
                        "checkpointing in the UNet step(s) with gradient, the VAE decoder and the classifier")
    p.add_argument("--accuracy-threshold", type=float,
                   help=f"stop at this batch accuracy (paper: {paper.accuracy_threshold})")
    p.add_argument("--patience", type=int,
                   help=f"stop after this many steps without a lower loss (paper: {paper.patience})")
    _add_generation(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dct", description="Discriminative class tokens for text-to-image diffusion.")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="learn a class token from a classifier")
    _add_model(t)
    _add_classifier(t)
    t.add_argument("--out", required=True, help="token file to write (.safetensors, or A1111 .pt)")
    t.add_argument("--overwrite", action="store_true", help="replace an existing token file")
    _add_train_options(t)
    t.add_argument("--preview-every", type=int, default=0, help="write a preview grid every N steps (0: off)")

    g = sub.add_parser("generate", help="images with and without a class token on the same seeds")
    _add_model(g)
    g.add_argument("--token", help="class token file")
    g.add_argument("--prompt", required=True, help="prompt; {token} marks where the class token goes")
    g.add_argument("--seeds", type=_seeds, default=_seeds("0-7"), help="e.g. 0-7 or 1,5,9 (default 0-7)")
    g.add_argument("--out", required=True, help="output folder")
    _add_generation(g)
    _add_classifier(g, required=False)
    a = g.add_argument_group("test-time adaptive conditioning (DATE)")
    a.add_argument("--adaptive", action="store_true",
                   help="also sample with the conditioning nudged toward --class at chosen steps (no training)")
    a.add_argument("--adaptive-rho", type=float, default=0.2, help="update step length (default 0.2; 0 = off)")
    a.add_argument("--adaptive-every", type=int, default=1, help="update at every k-th step (default 1)")
    a.add_argument("--adaptive-steps", type=_seeds, help="update exactly at these step indices, e.g. 0-9 or 2,5")
    a.add_argument("--adaptive-interval", default="0-1", help="fraction of the trajectory, e.g. 0.2-0.8")
    a.add_argument("--adaptive-updates", type=int, default=1, help="updates per chosen step (default 1)")
    a.add_argument("--adaptive-accumulate", action="store_true", help="let updates add up (default: reset)")
    a.add_argument("--adaptive-prior", type=float, default=0.0, help="L2 pull toward the original (default 0)")
    a.add_argument("--adaptive-target", choices=["all", "token", "pooled"], default="all",
                   help="what moves: all positions, the class-token positions, or also SDXL's pooled embedding")
    a.add_argument("--adaptive-score", choices=["log_prob", "logit"], default="log_prob",
                   help="raise the class log-probability, or the raw logit (zero-shot CLIP similarity)")

    e = sub.add_parser("eval", help="top-1/top-5 accuracy of generated images under a classifier")
    _add_model(e)
    _add_classifier(e)
    e.add_argument("--token", help="class token file (compared against no token)")
    e.add_argument("--num-images", type=int, default=64, help="images per condition (default 64)")
    e.add_argument("--template", action="append", dest="templates", help="prompt template (default: the paper's two)")
    e.add_argument("--json", action="store_true", help="print JSON instead of a table")
    q = e.add_argument_group("quality beyond accuracy")
    q.add_argument("--held-out", metavar="SPEC",
                   help="a second classifier that judges too (not the one the token was trained with): its "
                        "accuracy, and the fooling gap = guide top-1 minus held-out top-1 with the token")
    q.add_argument("--reference", metavar="DIR",
                   help="a folder of real images of the class: Frechet distance of the images with and without "
                        "the token to them (lower is closer); 'model' for a built-in model's own (the demo world's "
                        "renders)")
    q.add_argument("--feature-classifier", metavar="SPEC",
                   help="the classifier whose features the Frechet distance uses (default: --held-out, else "
                        "--classifier); distances compare only under the same classifier and image counts")
    _add_generation(e, seed=10_000)

    lab = sub.add_parser("labels", help="list or search a classifier's class names")
    _add_classifier(lab, target=False, many=False)
    lab.add_argument("--search", help="show only labels containing this text (case-insensitive)")

    info = sub.add_parser("classifier-info", help="what a classifier resolves to: classes, input, preprocessing")
    _add_classifier(info, target=False, many=False)

    lib = sub.add_parser("library", help="train one token per class into a folder (resumable; split over ranks "
                                         "under torchrun)")
    _add_model(lib)
    _add_classifier(lib, target=False)
    lib.add_argument("--classes", default="all",
                     help="all (default), indices like 0-9 or 3,5,7, or a file with one label or index per line")
    lib.add_argument("--out", required=True, help="folder for <class>.safetensors and index.json")
    lib.add_argument("--eval-classifier", metavar="SPEC",
                     help="a held-out classifier: each token's top-1 with it on a few fresh seeds goes in the index")
    lib.add_argument("--eval-images", type=int, default=8, help="fresh seeds for --eval-classifier (default 8)")
    _add_train_options(lib)

    ds = sub.add_parser("dataset", help="draw N images per token of a library into an ImageFolder tree with a "
                                        "manifest (resumable; split over ranks under torchrun)")
    add_dataset_arguments(ds)

    d = sub.add_parser("demo", help="train tokens on the built-in demo world and print a Table-1-like table "
                                     "(no download, CPU, about 2 min)")
    d.add_argument("--out", default="dct-demo", help="output folder (default ./dct-demo)")
    d.add_argument("--class", dest="classes", action="append",
                   help="demo class to train (repeatable; default: the ambiguous and the fine-detail one)")
    d.add_argument("--recipe", default=DEFAULT_PRESET, choices=sorted(PRESETS),
                   help=f"training recipe (default {DEFAULT_PRESET}; 'paper' for the paper's exactly)")
    d.add_argument("--steps", type=int, help="optimization steps per token (default: the recipe's)")
    d.add_argument("--backprop-depth", type=int,
                   help="sampling steps with gradient, K, for a recipe that takes the last steps (default: the "
                        "recipe's)")
    d.add_argument("--num-images", type=int, default=64, help="fresh-seed images per class and condition (default 64)")
    d.add_argument("--json", dest="json_path", help="also write the table as JSON to this file")
    d.add_argument("--seed", type=int, default=0, help="first training seed (default 0)")
    return parser


def _sampling(args) -> SamplingConfig:
    """The user's settings; what they leave out comes from the model's defaults (SD, or the demo world's)."""
    from .registry import named_model

    named = named_model(getattr(args, "model", None) or "")
    defaults = named.sampling if named is not None else SamplingConfig()
    def given(value, default):
        return default if value is None else value

    s = SamplingConfig(
        resolution=given(args.resolution, defaults.resolution), steps=given(args.sampling_steps, defaults.steps),
        guidance=given(args.guidance, defaults.guidance), negative_prompt=args.negative_prompt,
        scheduler=args.scheduler,
    )
    s.validate()
    return s


def _backend(args):
    from .diffusers_backend import DiffusersBackend
    from .model_loading import load_pipeline
    from .registry import named_model
    from .runtime import resolve_device, resolve_dtype

    device = resolve_device(args.device)
    named = named_model(args.model)
    if named is not None:
        return named.load_backend(device, resolve_dtype(args.dtype, device))
    pipe = load_pipeline(args.model, device=device, dtype=resolve_dtype(args.dtype, device), kind=args.model_kind)
    return DiffusersBackend(pipe)


def _load_classifier(args):
    from .classifiers import load_classifiers

    return load_classifiers(
        args.classifiers, args.classifier_weights, args.labels, pooling=args.pooling, multi_label=args.multi_label,
        template=args.clip_template, grad_checkpointing=args.classifier_checkpointing, trust_code=args.trust_code,
    )


def _classifier(args):
    classifier = _load_classifier(args)
    return classifier, classifier.class_index(args.target)


class _CancelOnInterrupt:
    """First Ctrl+C: finish the current step, keep the best token. Second: stop at once."""

    def __init__(self) -> None:
        self.cancelled = False

    def __enter__(self):
        self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, *_):
        if self.cancelled:
            raise KeyboardInterrupt
        self.cancelled = True
        print("\ncancelling after this step (Ctrl+C again to abort)...", file=sys.stderr)

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self._old)

    def __call__(self) -> bool:
        return self.cancelled


def _step_printer(total: int, preview_dir: Path | None = None, every: int = 0):
    from tqdm import tqdm

    bar = tqdm(total=total, desc="training", unit="step", file=sys.stderr, disable=not sys.stderr.isatty())

    def on_step(record, images):
        bar.update(1)
        bar.set_postfix(loss=f"{record.loss:.4f}", acc=f"{record.accuracy:.2f}")
        tqdm.write(f"step {record.step:3d}  loss {record.loss:.4f}  accuracy {record.accuracy:.2f}  "
                   f"p(target) {record.target_prob:.3f}  {record.seconds:.2f}s", file=sys.stderr)
        if preview_dir is not None and every and record.step % every == 0:
            from .images import make_grid, save_image

            save_image(make_grid([images]), preview_dir / f"step-{record.step:04d}.png")

    return bar, on_step


def train_config(args, **defaults) -> TrainConfig:
    """The TrainConfig of the training options (_add_train_options): the recipe, then ``defaults`` (a front end's
    own, e.g. the demo world's prompts), then what the user gave."""
    given = dict(
        templates=tuple(args.templates) if args.templates else None, init_word=args.init_word,
        num_vectors=args.num_vectors, batch_size=args.batch_size, micro_batch=args.micro_batch, seed=args.seed,
        fresh_seeds=args.fresh_seeds, lr=args.lr, weight_decay=args.weight_decay, max_steps=args.steps,
        accuracy_threshold=args.accuracy_threshold, patience=args.patience, backprop_depth=args.backprop_depth,
        checkpointing=args.checkpointing, sampling=_sampling(args), gradient_point=args.gradient_point,
        preserve=args.preserve, keep=args.keep, threshold_window=args.threshold_window,
    )
    return preset_config(args.recipe, **{**defaults, **{k: v for k, v in given.items() if v is not None}})


def cmd_train(args) -> int:
    from .run import TrainJob, run_training
    from .tokens import check_save_target, sanitize_name

    config = train_config(args)
    sampling = config.sampling
    out = Path(args.out)
    name = sanitize_name(out.name)
    hint = "pass --overwrite to replace it or choose another --out"
    # Before loading anything big: a bad --out costs seconds, not a training.
    out = check_save_target(out, overwrite=args.overwrite, overwrite_hint=hint)
    classifier, target = _classifier(args)
    job = TrainJob(
        backend=_backend(args), classifier=classifier, target=target, config=config, name=name,
        prompt_label=args.prompt_label, target_on=not args.target_off, out=out, overwrite=args.overwrite,
        overwrite_hint=hint, recipe=args.recipe, base_model=Path(args.model).name,
        classifier_name=" + ".join(args.classifiers), sampler=sampling.scheduler,
    )
    print(f"training a token for class {target} {job.label!r} with {classifier.describe()} "
          f"(recipe {args.recipe})", file=sys.stderr)
    bar, on_step = _step_printer(config.max_steps, out.parent / f"{name}-previews", args.preview_every)
    with _CancelOnInterrupt() as cancel, bar:
        outcome = run_training(job, on_step=on_step, should_cancel=cancel)
    best = outcome.result.best
    if best is None:
        raise DCTError("training stopped before the first step finished; nothing was saved.")
    print(f"stopped: {outcome.result.stopped}; best step {best.step}: accuracy {best.accuracy:.2f}, "
          f"loss {best.loss:.4f}")
    if outcome.save_error is not None:
        raise DCTError(outcome.save_error)
    print(f"wrote {outcome.path} (use {name!r} as the trigger word / embedding:{name})")
    return 0


def cmd_generate(args) -> int:
    from .generation import generate_images
    from .images import make_grid, save_image, to_pil
    from .prompts import TOKEN_MARK, strip_token
    from .tokens import load_class_token

    sampling = _sampling(args)
    token = load_class_token(args.token) if args.token else None
    if token is not None and TOKEN_MARK not in args.prompt:
        raise DCTError(
            f"--prompt must contain {TOKEN_MARK} where the class token goes, e.g. 'a photo of {{token}} tiger cat'."
        )
    backend = _backend(args)
    out = Path(args.out)
    seeds = args.seeds
    adaptive = _adaptive(args) if args.adaptive else None
    rows = {"without-token": generate_images(backend, [strip_token(args.prompt)] * len(seeds), seeds, sampling)}
    vectors = None
    if token is not None:
        vectors = {k: v.to(backend.device) for k, v in token.for_encoders(backend.encoders).items()}
        rows["with-token"] = generate_images(backend, [args.prompt] * len(seeds), seeds, sampling, vectors)
    if adaptive is not None:
        from .adaptive import adaptive_generate, class_score

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


def _adaptive(args):
    from .adaptive import AdaptiveConfig

    if not args.classifiers or args.target is None:
        raise DCTError("--adaptive needs a classifier and a class: --classifier SPEC --class NAME.")
    try:
        lo, hi = (float(v) for v in args.adaptive_interval.split("-"))
    except ValueError as exc:
        raise DCTError(f"--adaptive-interval must look like 0.2-0.8, got {args.adaptive_interval!r}.") from exc
    config = AdaptiveConfig(
        rho=args.adaptive_rho, every=args.adaptive_every, interval=(lo, hi),
        steps=tuple(args.adaptive_steps) if args.adaptive_steps else None, updates_per_step=args.adaptive_updates,
        reset=not args.adaptive_accumulate, prior=args.adaptive_prior, target=args.adaptive_target,
        score=args.adaptive_score,
    )
    config.validate()
    classifier, target = _classifier(args)
    return config, classifier, target


def cmd_eval(args) -> int:
    from .classifiers import load_classifier
    from .evaluation import compare_with_token, token_quality
    from .registry import named_model
    from .tokens import load_class_token

    sampling = _sampling(args)
    templates = tuple(args.templates or PAPER_TEMPLATES)
    classifier, target = _classifier(args)
    token = load_class_token(args.token) if args.token else None
    named = named_model(args.model)
    # The held-out judge names the same classes: it reads the same --labels when given.
    held_out = load_classifier(args.held_out, labels=args.labels, trust_code=args.trust_code) \
        if args.held_out else None
    features = load_classifier(args.feature_classifier, labels=args.labels, trust_code=args.trust_code) \
        if args.feature_classifier else (held_out or classifier)
    reference = _reference_images(args, named, classifier.class_name(target), sampling.resolution)
    backend = _backend(args)
    for c in (classifier, held_out, features):
        if c is not None:
            c.to(backend.device)
    prompt_label = args.prompt_label or classifier.class_name(target)
    seeds = list(range(args.seed, args.seed + args.num_images))
    vectors = None
    if token is not None:
        vectors = {k: v.to(backend.device) for k, v in token.for_encoders(backend.encoders).items()}
    name = " + ".join(args.classifiers)
    judges = {name: classifier, **({f"held-out {args.held_out}": held_out} if held_out is not None else {})}
    label = classifier.class_name(target)
    results, images = compare_with_token(backend, judges, label, prompt_label, templates, vectors, seeds, sampling,
                                         target_on=not args.target_off)
    quality = token_quality(
        results, images, guide=name, held_out=f"held-out {args.held_out}" if held_out is not None else None,
        entropy=named.variety() if named is not None and named.variety is not None else None,
        reference=reference, feature_classifier=features if reference is not None else None,
    )
    report = {"class_index": target, "class_label": label, "prompt_label": prompt_label,
              "classifier": name, "target": "off" if args.target_off else "on", "num_images": args.num_images,
              "first_seed": args.seed, "results": results[name], "judges": results, **quality}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_eval(report))
    return 0


def _reference_images(args, named, label: str, resolution: int):
    if not args.reference:
        return None
    if args.reference == "model":
        if named is None or named.reference_images is None:
            raise DCTError("--reference model needs a built-in model with real images (e.g. --model world); "
                           "otherwise give a folder of real images of the class.")
        return named.reference_images(label, args.num_images)
    from .reference_images import load_image_folder

    return load_image_folder(args.reference, size=resolution)


def format_eval(report: dict) -> str:
    from .evaluation import WITH, WITHOUT

    lines = [f"class {report['class_index']} {report['class_label']!r}, {report['num_images']} images"]
    lines.append(f"{'judged by':<40}{'condition':<16}{'top-1':>8}{'top-5':>8}")
    for judge, by_condition in report["judges"].items():
        for condition in (WITHOUT, WITH):
            r = by_condition.get(condition)
            if r is None:
                continue
            top5 = "-" if r["top5"] is None else f"{100 * r['top5']:.1f}%"
            lines.append(f"{judge[:39]:<40}{condition:<16}{100 * r['top1']:>7.1f}%{top5:>8}")
    if report.get("fooling_gap") is not None:
        lines.append(f"fooling gap (guide minus held-out top-1 with the token): {100 * report['fooling_gap']:+.1f}")
    variety = report.get("variety")
    if variety and WITH in variety:
        parts = ", ".join(f"{k} {variety[WITHOUT][k]:.2f} -> {variety[WITH][k]:.2f}" for k in variety[WITHOUT])
        lines.append(f"variety, bits without -> with the token: {parts}")
    fd = report.get("frechet")
    if fd:
        with_text = "" if fd["with"] is None else f" -> {fd['with']:.2f} with the token"
        lines.append(f"Frechet distance to {fd['reference_images']} real images ({fd['feature_classifier']} "
                     f"features): {fd['without']:.2f} without{with_text}")
    return "\n".join(lines)


def cmd_labels(args) -> int:
    from .classifiers.labels import synonyms

    classifier = _load_classifier(args)
    wanted = (args.search or "").strip().lower()
    shown = 0
    for i, label in enumerate(classifier.labels):
        if not wanted or any(wanted in s for s in synonyms(label)) or wanted in label.lower():
            print(f"{i:>6}  {label}")
            shown += 1
    if wanted and not shown:
        raise DCTError(f"no label contains {args.search!r}; run without --search to list all {classifier.num_classes}.")
    return 0


def cmd_classifier_info(args) -> int:
    classifier = _load_classifier(args)
    params = sum(p.numel() for p in classifier.module.parameters())
    print(classifier.describe())
    print(f"parameters: {params / 1e6:.2f} M; first labels: {', '.join(classifier.labels[:5])}")
    return 0


def cmd_dataset(args) -> int:
    from .dataset import run

    return run(args)


def cmd_library(args) -> int:
    from .library import run_library_cli

    return run_library_cli(args)


def cmd_demo(args) -> int:
    from .demo import format_table, run_demo
    print("dct demo: class tokens on the built-in demo world (CPU, no download)", file=sys.stderr)
    bar, on_step = _step_printer(args.steps or preset_config(args.recipe).max_steps)

    def on_class(target):
        bar.reset()
        print(f"training a token for {target.label!r} ({target.kind}; prompts say {target.word!r})", file=sys.stderr)

    with _CancelOnInterrupt() as cancel, bar:
        report = run_demo(
            args.out, classes=args.classes, steps=args.steps, backprop_depth=args.backprop_depth,
            num_images=args.num_images, seed=args.seed, json_path=args.json_path, recipe=args.recipe, on_class=on_class,
            on_step=on_step, should_cancel=cancel,
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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = {
        "train": cmd_train, "generate": cmd_generate, "eval": cmd_eval, "demo": cmd_demo, "labels": cmd_labels,
        "classifier-info": cmd_classifier_info, "library": cmd_library, "dataset": cmd_dataset,
    }[args.command]
    try:
        return handler(args)
    except DCTError as exc:
        print(f"dct {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dct {args.command}: aborted", file=sys.stderr)
        return 130
