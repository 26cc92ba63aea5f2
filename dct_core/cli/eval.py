"""`dct eval`: top-1/top-5 accuracy of images with and without a token, and quality beyond accuracy."""

from __future__ import annotations

from ..config import PAPER_TEMPLATES
from ..errors import DCTError
from ..formats.printable import json_text, printable_lines
from . import options
from .loading import classifier_and_target, classifier_name, load_backend

HELP = "top-1/top-5 accuracy of generated images under a classifier"


def add_parser(sub) -> None:
    e = sub.add_parser("eval", help=HELP)
    options.add_model(e)
    options.add_classifier(e)
    e.add_argument("--token", help="class token file (compared against no token)")
    options.add_size(e, "num_images", 64)
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
                   help="the classifier whose features the Frechet distance (default: --held-out, else "
                        "--classifier) and the diversity index (default: --classifier, the judge) use; values "
                        "compare only under the same classifier and image counts")
    options.add_generation(e, seed=10_000)


def run(args) -> int:
    from ..classifiers import load_classifier
    from ..formats.tokens import load_class_token
    from ..method.evaluation import compare_with_token, token_quality
    from ..registry import named_model

    sampling = options.sampling(args)
    templates = tuple(args.templates or PAPER_TEMPLATES)
    classifier, target = classifier_and_target(args)
    token = load_class_token(args.token) if args.token else None
    named = named_model(args.model)
    # The held-out judge names the same classes: it reads the same --labels when given.
    held_out = load_classifier(args.held_out, labels=args.labels, trust_code=args.trust_code) \
        if args.held_out else None
    feature_choice = load_classifier(args.feature_classifier, labels=args.labels, trust_code=args.trust_code) \
        if args.feature_classifier else None
    features = feature_choice or held_out or classifier
    reference = _reference_images(args, named, classifier.class_name(target), sampling.resolution)
    if reference is not None and min(len(reference), args.num_images) < 2:  # before generating anything
        which = f"--reference {args.reference} holds {len(reference)} image(s)" if len(reference) < 2 \
            else f"--num-images is {args.num_images}"
        raise DCTError(f"the Frechet distance needs at least 2 images in each set; {which}.")
    backend = load_backend(args)
    for c in (classifier, held_out, features):
        if c is not None:
            c.to(backend.device)
    prompt_label = args.prompt_label or classifier.class_name(target)
    seeds = list(range(args.seed, args.seed + args.num_images))
    vectors = None
    if token is not None:
        vectors = {k: v.to(backend.device) for k, v in token.for_encoders(backend.encoders).items()}
    name = classifier_name(args)
    judges = {name: classifier, **({f"held-out {args.held_out}": held_out} if held_out is not None else {})}
    label = classifier.class_name(target)
    results, images = compare_with_token(backend, judges, label, prompt_label, templates, vectors, seeds, sampling,
                                         target_on=not args.target_off)
    quality = token_quality(
        results, images, guide=name, held_out=f"held-out {args.held_out}" if held_out is not None else None,
        entropy=named.variety() if named is not None and named.variety is not None else None,
        reference=reference, feature_classifier=features if reference is not None else None,
        diversity_classifier=feature_choice or classifier,
        leak=_leak_judge(classifier, held_out, label, target),
    )
    report = {"class_index": target, "class_label": label, "prompt_label": prompt_label,
              "classifier": name, "target": "off" if args.target_off else "on", "num_images": args.num_images,
              "first_seed": args.seed, "results": results[name], "judges": results, **quality}
    if args.json:
        print(json_text(report, indent=2))
    else:
        print(printable_lines(format_eval(report)))
    return 0


def _leak_judge(classifier, held_out, label: str, target: int):
    """The held-out judge where there is one (the guide cannot see what it is fooled by), else the classifier."""
    if held_out is not None:
        try:
            return held_out, held_out.class_index(label)
        except DCTError:  # a held-out judge without the class: fall back on the classifier
            pass
    return classifier, target


def _reference_images(args, named, label: str, resolution: int):
    if not args.reference:
        return None
    if args.reference == "model":
        if named is None or named.reference_images is None:
            raise DCTError("--reference model needs a built-in model with real images (e.g. --model world); "
                           "otherwise give a folder of real images of the class.")
        return named.reference_images(label, args.num_images)
    from ..formats.reference_images import load_image_folder

    return load_image_folder(args.reference, size=resolution)


def format_eval(report: dict) -> str:
    from ..method.evaluation import WITH, WITHOUT

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
    div = report.get("diversity")
    if div and div.get("error"):
        lines.append(f"diversity: not measured ({div['error']})")
    elif div and div.get("ratio") is not None:
        verdict = "kept" if div["kept"] else "NARROWED: the token fixes what the prompt leaves free"
        lines.append(f"diversity ({div['index']}, {div['features']} features), without -> with the token: "
                     f"{div['without']:.2f} -> {div['with']:.2f}, ratio {div['ratio']:.2f} ({verdict})")
    leak = report.get("leak")
    if leak and leak.get("error") is None:
        risers = ", ".join(f"{k} +{100 * v:.1f}" for k, v in leak["classes"].items()) or "none"
        lines.append(f"other classes the token draws ({leak['judge']}): +{100 * leak['points']:.1f} points of the "
                     f"images ({risers})")
    fd = report.get("frechet")
    if fd:
        with_text = "" if fd["with"] is None else f" -> {fd['with']:.2f} with the token"
        lines.append(f"Frechet distance to {fd['reference_images']} real images ({fd['feature_classifier']} "
                     f"features): {fd['without']:.2f} without{with_text}")
    return "\n".join(lines)
