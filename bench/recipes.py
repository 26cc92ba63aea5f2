"""Which training recipe teaches the class AND keeps the model's variety, on the demo world.

Every candidate trains a token for each of the four sub-classes (toy kite, kite bird of prey, red-throated
warbler, yellow-throated finch) with several training seeds, then judges it on 64 fresh seeds with and without
the token, in prompts it never saw (the paper's two templates): held-out top-1 gain, variety (entropy of the
free attributes read by the world's attribute reader; and the diversity index any model has, method/diversity.py),
Frechet distance to real renders of the class (held-out classifier's features), the leak (other classes' rise in
the held-out classifier's top-1 share, as `dct eval` reports it: evaluation.class_leak), fooling gap (guide minus
held-out top-1 with the token), CPU-seconds of training per class.

    python bench/recipes.py                          # every recipe below, 3 seeds, 2 worker processes
    python bench/recipes.py --recipes paper,x0 --seeds 0 --json out.json

Candidates are overrides of the `paper` preset plus the world's sampling (dct_core.config.preset_config).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from multiprocessing import get_context
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dct_core.config import COLOUR_WORDS  # noqa: E402

CLASSES = {  # class -> the coarse word its prompts use (and its init word)
    "toy kite": "kite",
    "kite, bird of prey": "kite",
    "red-throated warbler": "bird",
    "yellow-throated finch": "bird",
}
MINORITY = ("toy kite", "red-throated warbler")  # about 27% of the coarse word's images without a token

WORLD = dict(templates=("a photo of a {token} {label}", "a {token} {label}"), batch_size=8, fresh_seeds=True)
# More prompt variety: the world's four caption forms instead of two.
PROMPT_VARIETY = ("a {token} {label}", "a photo of a {token} {label}", "an image of a {token} {label}",
                  "{token} {label}")
RECIPES: dict[str, dict] = {
    # The paper's exact recipe (K = 1 last step, lr 0.00125, 50 steps, fixed seeds, stop at 0.7).
    "paper": dict(templates=WORLD["templates"]),
    # The shipped demo's: the whole trajectory with gradient, lr 0.05, fresh seeds, stop on an all-correct batch.
    "demo-K10": dict(WORLD, lr=0.05, max_steps=25, backprop_depth=10, accuracy_threshold=1.0, patience=25,
                     checkpointing=False),
    "last-K3": dict(WORLD, lr=0.05, max_steps=25, backprop_depth=3, accuracy_threshold=1.0, patience=25,
                    checkpointing=False),
    "x0": dict(WORLD, lr=0.05, max_steps=25, gradient_point="x0", accuracy_threshold=1.0, patience=25,
               checkpointing=False),
    "x0-val": dict(WORLD, lr=0.05, max_steps=25, gradient_point="x0", accuracy_threshold=1.0, patience=25,
                   checkpointing=False, validation_images=16),
    "x0-pull": dict(WORLD, lr=0.05, max_steps=25, gradient_point="x0", accuracy_threshold=1.0, patience=25,
                    checkpointing=False, init_pull=0.5),
    "x0-cap": dict(WORLD, lr=0.05, max_steps=25, gradient_point="x0", accuracy_threshold=1.0, patience=25,
                   checkpointing=False, norm_cap=1.5),
    "x0-enough": dict(WORLD, lr=0.05, max_steps=25, gradient_point="x0", accuracy_threshold=1.0, patience=25,
                      checkpointing=False, enough_prob=0.8),
    "x0-prompts": dict(WORLD, lr=0.05, max_steps=25, gradient_point="x0", accuracy_threshold=1.0, patience=25,
                       checkpointing=False, templates=PROMPT_VARIETY),
    # The shipped default (the token kept off the colour words: free_words on its vector, free_penalty on its
    # conditioning; all 25 steps, the mean of the last half's tokens returned), earlier defaults, and it keeping the
    # batch's variety in the guide's class-independent features.
    "balanced": dict(WORLD, lr=0.05, max_steps=25, gradient_point="x0", x0_interval=(0.2, 0.8),
                     accuracy_threshold=1.0, threshold_window=25, patience=25, keep="average", enough_prob=0.9,
                     free_words=COLOUR_WORDS, free_penalty=0.3),
    # The default of the night of December 6: the free words kept off the token's vector only.
    "balanced-vector": dict(WORLD, lr=0.05, max_steps=25, gradient_point="x0", x0_interval=(0.2, 0.8),
                            accuracy_threshold=1.0, threshold_window=25, patience=25, keep="average",
                            enough_prob=0.9, free_words=COLOUR_WORDS),
    # The default until the evening of December 6: it stopped on one all-correct batch and returned that step's token.
    "balanced-best": dict(WORLD, lr=0.05, max_steps=25, gradient_point="x0", x0_interval=(0.2, 0.8),
                          accuracy_threshold=1.0, patience=25, free_words=COLOUR_WORDS),
    "balanced-no-free": dict(WORLD, lr=0.05, max_steps=25, gradient_point="x0", x0_interval=(0.2, 0.8),
                             accuracy_threshold=1.0, patience=25),
    "spread-5": dict(WORLD, lr=0.05, max_steps=25, gradient_point="x0", x0_interval=(0.2, 0.8),
                     accuracy_threshold=1.0, patience=25, spread=5.0),
    "spread-20": dict(WORLD, lr=0.05, max_steps=25, gradient_point="x0", x0_interval=(0.2, 0.8),
                      accuracy_threshold=1.0, patience=25, spread=20.0),
    "spread-5-window3": dict(WORLD, lr=0.05, max_steps=25, gradient_point="x0", x0_interval=(0.2, 0.8),
                             accuracy_threshold=1.0, threshold_window=3, patience=25, spread=5.0),
    # Longer training judged on a 4-step window, the last token kept, pulled toward the prompt-alone image.
    "x0-preserve": dict(WORLD, lr=0.05, max_steps=50, gradient_point="x0", accuracy_threshold=0.95,
                        threshold_window=4, patience=50, keep="last", checkpointing=False, preserve=5.0),
}


def run_one(job: tuple[str, dict, str, int, int, bool]) -> dict:
    """Train one token and judge it; runs in a worker process with one thread."""
    import torch

    torch.set_num_threads(1)
    from dct_core.config import PAPER_TEMPLATES, preset_config
    from dct_core.jobs.run import TrainJob, run_training
    from dct_core.method.evaluation import (
        WITH,
        WITHOUT,
        class_leak,
        compare_with_token,
        diversity_report,
        token_quality,
    )
    from dct_core.world import SAMPLING, load_world_backend, load_world_classifier, reference_renders, variety_reader
    from dct_core.world.facts import EVAL_FIRST_SEED

    name, overrides, label, seed, num_images, keep_images = job
    word = CLASSES[label]
    backend = load_world_backend()
    guide, held_out = load_world_classifier("guide"), load_world_classifier("held-out")
    config = preset_config("paper", **{"init_word": word, **overrides, "sampling": SAMPLING, "seed": seed})
    started = time.process_time()
    outcome = run_training(TrainJob(backend, guide, guide.class_index(label), config, prompt_label=word))
    cpu = time.process_time() - started
    vectors = outcome.result.token.for_encoders(backend.encoders)
    seeds = list(range(EVAL_FIRST_SEED, EVAL_FIRST_SEED + num_images))
    # Judged in prompts the token never saw (the paper's two templates), on fresh seeds: the product's promise.
    results, images = compare_with_token(backend, {guide.name: guide, held_out.name: held_out}, label, word,
                                         PAPER_TEMPLATES, vectors, seeds, SAMPLING, chunk=32)
    quality = token_quality(results, images, guide=guide.name, held_out=held_out.name, entropy=variety_reader(),
                            reference=reference_renders(label, num_images), feature_classifier=held_out)
    held, guided = results[held_out.name], results[guide.name]
    leak = class_leak(held_out, images, held_out.class_index(label))  # what `dct eval` reports
    diversity = diversity_report(guide, images)["ratio"]  # the judging classifier's (the default everywhere)
    variety = quality["variety"]
    return {
        "recipe": name, "class": label, "seed": seed, "cpu_s": cpu, "steps": len(outcome.result.history),
        "stopped": outcome.result.stopped,
        "held_without": held[WITHOUT]["top1"], "held_with": held[WITH]["top1"], "guide_with": guided[WITH]["top1"],
        "fooling_gap": quality["fooling_gap"],
        "leak": leak["points"], "leak_classes": leak["classes"],
        "colour_ratio": variety["ratio"]["color"], "total_ratio": variety["ratio"]["total"],
        "variety": variety, "diversity_ratio": diversity, "frechet_without": quality["frechet"]["without"],
        "frechet_with": quality["frechet"]["with"],
        # --keep-images: the judged images (uint8), for measures computed afterwards (bench/variety_measure.py)
        **({"images": {k: (v * 255).round().to(torch.uint8) for k, v in images.items()}} if keep_images else {}),
    }


def summarize(name: str, rows: list[dict]) -> dict:
    minority = [r for r in rows if r["class"] in MINORITY]
    majority = [r for r in rows if r["class"] not in MINORITY]
    gains = [100 * (r["held_with"] - r["held_without"]) for r in minority]
    return {
        "recipe": name,
        "minority_gain_mean": statistics.mean(gains) if gains else float("nan"),
        "minority_gain_worst": min(gains) if gains else float("nan"),
        "majority_top1_mean": 100 * statistics.mean(r["held_with"] for r in majority) if majority else float("nan"),
        "colour_ratio_worst": min(r["colour_ratio"] or 0 for r in rows),
        "total_ratio_worst": min(r["total_ratio"] or 0 for r in rows),
        "total_ratio_mean": statistics.mean(r["total_ratio"] or 0 for r in rows),
        "colour_kept": sum((r["colour_ratio"] or 0) >= 0.9 for r in rows),
        "diversity_worst": min(r["diversity_ratio"] for r in rows),
        "frechet_without": statistics.mean(r["frechet_without"] for r in rows),
        "frechet_with": statistics.mean(r["frechet_with"] for r in rows),
        "frechet_lower_share": sum(r["frechet_with"] < r["frechet_without"] for r in rows) / len(rows),
        "fooling_gap_mean": 100 * statistics.mean(r["fooling_gap"] for r in rows),
        "leak_mean": 100 * statistics.mean(r["leak"] for r in rows),
        "leak_worst": 100 * max(r["leak"] for r in rows),
        "cpu_s_per_class": statistics.mean(r["cpu_s"] for r in rows),
        "runs": len(rows),
    }


def table(summaries: list[dict]) -> str:
    head = ("| recipe | minority held-out gain, mean / worst | majority held-out top-1 | colour ratio >= 0.9 | "
            "entropy ratio worst (colour / all) | all-attribute ratio mean | diversity ratio worst | "
            "Frechet without -> with (lower in) | fooling gap | leak (held-out), mean / worst | CPU s / class | runs |")
    lines = [head, "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for s in summaries:
        lines.append(
            f"| {s['recipe']} | {s['minority_gain_mean']:+.1f} / {s['minority_gain_worst']:+.1f} | "
            f"{s['majority_top1_mean']:.1f}% | {s['colour_kept']}/{s['runs']} | "
            f"{s['colour_ratio_worst']:.2f} / {s['total_ratio_worst']:.2f} | "
            f"{s['total_ratio_mean']:.2f} | {s['diversity_worst']:.2f} | "
            f"{s['frechet_without']:.2f} -> {s['frechet_with']:.2f} "
            f"({100 * s['frechet_lower_share']:.0f}% of runs) | {s['fooling_gap_mean']:+.1f} | "
            f"{s['leak_mean']:.1f} / {s['leak_worst']:.1f} | "
            f"{s['cpu_s_per_class']:.1f} | {s['runs']} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated names (default: all)")
    p.add_argument("--set", action="append", default=[], metavar="NAME=JSON",
                   help='an extra candidate, e.g. --set \'mine={"gradient_point": "x0", "lr": 0.02}\'')
    p.add_argument("--classes", default="|".join(CLASSES),
                   help="separated by '|' (class names hold commas); default: the four sub-classes")
    p.add_argument("--seeds", default="0,1,2", help="training seeds (default 0,1,2)")
    p.add_argument("--images", type=int, default=64, help="evaluation images per class and condition")
    p.add_argument("--workers", type=int, default=2, help="worker processes, one thread each (default 2)")
    p.add_argument("--json", help="write every run and the summary here")
    p.add_argument("--keep-images", metavar="FILE.pt", help="also save every run with its judged images here")
    args = p.parse_args()
    recipes = {n: RECIPES[n] for n in args.recipes.split(",") if n}
    for item in args.set:
        name, _, text = item.partition("=")
        recipes[name] = json.loads(text)
    classes = [c.strip() for c in args.classes.split("|") if c.strip()]
    unknown = [c for c in classes if c not in CLASSES]
    if unknown:
        p.error(f"unknown classes {unknown}; choose from {list(CLASSES)}")
    jobs = [(n, o, c, int(s), args.images, bool(args.keep_images)) for n, o in recipes.items() for c in classes
            for s in args.seeds.split(",")]
    rows: list[dict] = []
    with get_context("spawn").Pool(args.workers) as pool:
        for row in pool.imap_unordered(run_one, jobs):
            rows.append(row)
            print(f"{row['recipe']:<12} {row['class']:<22} seed {row['seed']}: held-out "
                  f"{100 * row['held_without']:.1f} -> {100 * row['held_with']:.1f}, "
                  f"guide {100 * row['guide_with']:.1f}, "
                  f"colour x{row['colour_ratio'] or 0:.2f}, all x{row['total_ratio'] or 0:.2f}, "
                  f"diversity x{row['diversity_ratio']:.2f}, "
                  f"leak {100 * row['leak']:.1f}, Frechet "
                  f"{row['frechet_without']:.2f} -> {row['frechet_with']:.2f}, {row['cpu_s']:.1f} CPU s", flush=True)
    summaries = [summarize(n, [r for r in rows if r["recipe"] == n]) for n in recipes]
    print(table(summaries))
    if args.keep_images:
        import torch

        torch.save(rows, args.keep_images)
    if args.json:
        plain = [{k: v for k, v in r.items() if k != "images"} for r in rows]
        Path(args.json).write_text(json.dumps({"runs": plain, "summary": summaries}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
