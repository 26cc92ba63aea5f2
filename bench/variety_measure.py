"""Does a feature-based diversity index tell a token that collapsed the model's variety from one that kept it, with no
attribute reader (any model)? Judged against the demo world's colour-entropy ratio (the reader the world has).

    python bench/variety_measure.py collect --out bench/results/variety_runs.pt   # trains tokens, keeps features
    python bench/variety_measure.py score bench/results/variety_runs.pt           # penultimate-feature indices
    python bench/recipes.py --recipes balanced,spread-5,spread-20,demo-K10 --keep-images runs.pt
    python bench/variety_measure.py score-images runs.pt                          # first-layer (appearance) index

``collect`` trains tokens with several recipes (bench/recipes.py's candidates: some keep colour, some collapse it)
for the four sub-classes x seeds and keeps, per run, the colour and all-attribute entropy ratios and the held-out
and guide classifiers' penultimate features and logits of the 64 images with and without the token. ``score``
computes each candidate index's with/without ratio, its Spearman correlation with the colour ratio, and the best
threshold's misclassification of "colour kept" (ratio >= 0.9) vs "collapsed": the targets are Spearman >= 0.8 and
at most 1 run in 20 misclassified. ``score-images`` reads runs saved with their images (bench/recipes.py
--keep-images) and scores the reported index (Vendi of the first layer's channel statistics) and the first block's.

Measured (December 6, 48 runs of balanced / spread-5 / spread-20 / demo-K10, 27 kept colour):
| index | classifier | Spearman with colour ratio | misclassified at 0.98 |
| --- | --- | --- | --- |
| Vendi of first-layer channel statistics (reported) | guide (ResNet) | +0.95 | 2 / 48 (best threshold 0.953: 0) |
| Vendi of first-layer channel statistics (reported) | held-out (ConvNeXt) | +0.74 | 2 / 48 |
| Vendi of the first block's channel statistics | held-out / guide | +0.82 / +0.60 | 2 / 12 of 48 |
| penultimate features, Vendi / off class directions / within class (``score``) | both | +0.05 to +0.61 | 8-20 / 48 |
"""

from __future__ import annotations

import argparse
import sys
from multiprocessing import get_context
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from recipes import CLASSES, RECIPES  # noqa: E402

KEPT = 0.9  # colour-entropy ratio at or above which a run kept its variety
COLLECT_RECIPES = ("demo-K10", "x0", "x0-preserve", "last-K3")  # collapsed and kept runs both


def collect_one(job: tuple[str, dict, str, int, int]) -> dict:
    torch.set_num_threads(1)
    from dct_core.config import preset_config
    from dct_core.jobs.run import TrainJob, run_training
    from dct_core.method.diversity import class_directions
    from dct_core.method.evaluation import WITH, WITHOUT, compare_with_token, variety_report
    from dct_core.method.frechet import classifier_features
    from dct_core.world import SAMPLING, load_world_backend, load_world_classifier, variety_reader
    from dct_core.world.facts import EVAL_FIRST_SEED

    name, overrides, label, seed, num_images = job
    word = CLASSES[label]
    backend = load_world_backend()
    guide, held_out = load_world_classifier("guide"), load_world_classifier("held-out")
    config = preset_config("paper", **{"init_word": word, **overrides, "sampling": SAMPLING, "seed": seed})
    outcome = run_training(TrainJob(backend, guide, guide.class_index(label), config, prompt_label=word))
    vectors = outcome.result.token.for_encoders(backend.encoders)
    seeds = list(range(EVAL_FIRST_SEED, EVAL_FIRST_SEED + num_images))
    templates = ("a photo of a {token} {label}", "a {token} {label}")  # the world's training prompts
    results, images = compare_with_token(backend, {held_out.name: held_out}, label, word, templates, vectors,
                                         seeds, SAMPLING, chunk=32)
    variety = variety_report(images, variety_reader())
    row = {"recipe": name, "class": label, "seed": seed, "colour_ratio": variety["ratio"]["color"],
           "total_ratio": variety["ratio"]["total"],
           "held_without": results[held_out.name][WITHOUT]["top1"], "held_with": results[held_out.name][WITH]["top1"]}
    for role, classifier in (("held", held_out), ("guide", guide)):
        row[f"{role}_head"] = class_directions(classifier.module, classifier.num_classes)
        row[f"{role}_target"] = classifier.class_index(label)
        for condition, key in ((WITHOUT, "without"), (WITH, "with")):
            row[f"{role}_{key}_features"] = classifier_features(classifier, images[condition])
            with torch.no_grad():
                row[f"{role}_{key}_logits"] = classifier(images[condition]).float()
    return row


def collect(args) -> None:
    jobs = [(n, RECIPES[n], c, s, args.images) for n in args.recipes.split(",") for c in CLASSES
            for s in range(args.seeds)]
    rows = []
    with get_context("spawn").Pool(args.workers) as pool:
        for row in pool.imap_unordered(collect_one, jobs):
            rows.append(row)
            print(f"{row['recipe']:<12} {row['class']:<22} seed {row['seed']}: colour x{row['colour_ratio'] or 0:.2f} "
                  f"held-out {100 * row['held_without']:.0f} -> {100 * row['held_with']:.0f}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    torch.save(rows, args.out)
    print(f"{len(rows)} runs -> {args.out}")


def spearman(a: list[float], b: list[float]) -> float:
    ra = torch.tensor(a).argsort().argsort().double()
    rb = torch.tensor(b).argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def best_threshold(values: list[float], kept: list[bool]) -> tuple[float, int]:
    """The threshold on ``values`` (kept when value >= threshold) with the fewest misclassified runs."""
    best = (float("nan"), len(values) + 1)
    for t in sorted(set(values)) + [max(values) + 1]:
        wrong = sum((v >= t) != k for v, k in zip(values, kept))
        if wrong < best[1]:
            best = (t, wrong)
    return best


def score(args) -> None:
    from dct_core.method.diversity import CANDIDATES

    rows = torch.load(args.runs, weights_only=True)
    colour = [r["colour_ratio"] or 0.0 for r in rows]
    kept = [c >= KEPT for c in colour]
    print(f"{len(rows)} runs, {sum(kept)} kept colour (ratio >= {KEPT})")
    print("| index | features | Spearman with colour ratio | best threshold | misclassified |")
    print("| --- | --- | --- | --- | --- |")
    for name, index in CANDIDATES.items():
        for role in ("held", "guide"):
            ratios = [index(r[f"{role}_without_features"], r[f"{role}_with_features"], r[f"{role}_head"],
                            r[f"{role}_without_logits"], r[f"{role}_with_logits"], r[f"{role}_target"])
                      for r in rows]
            t, wrong = best_threshold(ratios, kept)
            print(f"| {name} | {role} | {spearman(ratios, colour):+.2f} | {t:.3f} | {wrong} / {len(rows)} |")


def score_images(args) -> None:
    from dct_core.method.checkpointing import checkpoint_units
    from dct_core.method.diversity import KEPT_ABOVE, appearance_features, vendi
    from dct_core.method.evaluation import WITH, WITHOUT
    from dct_core.world import load_world_classifier

    rows = [r for r in torch.load(args.runs, weights_only=True) if "images" in r]
    colour = [r["colour_ratio"] or 0.0 for r in rows]
    kept = [c >= KEPT for c in colour]
    print(f"{len(rows)} runs, {sum(kept)} kept colour (ratio >= {KEPT})")
    print(f"| index | classifier | Spearman with colour ratio | misclassified at {KEPT_ABOVE} | best threshold |")
    print("| --- | --- | --- | --- | --- |")

    def block_features(classifier, images):
        block = next(u for u in checkpoint_units(classifier.module) if len(list(u.children())) > 0)
        seen = []
        handle = block.register_forward_hook(lambda _m, _a, out: seen.append(out.float()))
        with torch.no_grad():
            classifier(images)
        handle.remove()
        o = seen[0]
        return torch.cat([o.mean((2, 3)), o.std((2, 3))], 1).double() if o.dim() == 4 else o.flatten(1).double()

    for role in ("guide", "held-out"):
        classifier = load_world_classifier(role)
        for name, features in (("first layer (reported)", appearance_features), ("first block", block_features)):
            ratios = []
            for r in rows:
                images = {k: v.float() / 255 for k, v in r["images"].items()}
                ratios.append(vendi(features(classifier, images[WITH])) / vendi(features(classifier, images[WITHOUT])))
            wrong_fixed = sum((v >= KEPT_ABOVE) != k for v, k in zip(ratios, kept))
            t, wrong = best_threshold(ratios, kept)
            print(f"| {name} | {role} | {spearman(ratios, colour):+.2f} | {wrong_fixed} / {len(rows)} | "
                  f"{t:.3f} ({wrong} misclassified) |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("collect")
    c.add_argument("--recipes", default=",".join(COLLECT_RECIPES))
    c.add_argument("--seeds", type=int, default=3)
    c.add_argument("--images", type=int, default=64)
    c.add_argument("--workers", type=int, default=2)
    c.add_argument("--out", default="bench/results/variety_runs.pt")
    s = sub.add_parser("score")
    s.add_argument("runs")
    si = sub.add_parser("score-images")
    si.add_argument("runs")
    args = p.parse_args()
    {"collect": collect, "score": score, "score-images": score_images}[args.command](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
