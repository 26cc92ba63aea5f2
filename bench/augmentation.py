"""Data augmentation with class tokens (the paper's Sec. 5), in miniature, on the demo world.

The world's held-out classifier architecture (dct_core/world/classifier_zoo.py, "held-out") is trained from
scratch, with the world's own recipe (dct_core/world/classifier_training.py: AdamW at the spec's lr, weight decay
0.05, one-cycle schedule, label smoothing 0.05, the ``degrade`` augmentations) but on a FIXED small training set
instead of an endless stream of renders, in three conditions:

    (a) real       K real renders per class
    (b) +plain     (a) plus N images per class generated from the plain prompt ("a photo of a kite")
    (c) +tokens    (a) plus N images per class generated with the class token ("a photo of a <token> kite")

and judged by top-1 on fresh real renders (balanced over the ten classes), for several training seeds (each
seed: new real images, new initialisation and batches; the generated sets are drawn once). The generated images
come from ``dct dataset`` (dct_core/dataset.py); the tokens are the world's ten classes trained with the
default recipe (as ``dct demo`` trains them), cached in --library.

    python bench/augmentation.py            # defaults: 6.1 min on 2 CPU cores with the tokens and images cached
                                            # in --out; about 10 min from nothing (tokens ~2 min, images ~1-2 min)
    python bench/augmentation.py --library DIR --real-per-class 5 --generated-per-class 48 --steps 400  # ~4 min

    python bench/augmentation.py --filter-prob 0.9   # both sets through dct dataset's filter (held-out judge)

Measured (2 CPU cores, defaults, seeds 0,1,2): real 26.0 +- 3.0, +plain 68.3 +- 3.8, +tokens 71.1 +- 1.7 top-1.
The tokens lift the classes whose prompt word is shared (toy kite 36 -> 83) but only 4 of the 10 classes have
one, and the world's held-out classifier agrees with the label of 74% of the plain images and 82% of the token
images: the head-room for a whole-dataset gain is small.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dct_core.config import DEFAULT_PRESET  # noqa: E402
from dct_core.formats.tokens import sanitize_name  # noqa: E402
from dct_core.jobs.dataset import plan_classes, write_dataset  # noqa: E402
from dct_core.jobs.dataset_filter import KeepFilter  # noqa: E402
from dct_core.jobs.demo import demo_config  # noqa: E402
from dct_core.jobs.run import TrainJob, run_training  # noqa: E402
from dct_core.world import SAMPLING, load_world_backend, load_world_classifier, variety_reader  # noqa: E402
from dct_core.world.classifier_training import _normalize, fit_classifier  # noqa: E402
from dct_core.world.classifier_zoo import CLASSIFIERS  # noqa: E402
from dct_core.world.scenes import CLASSES, LABELS, render  # noqa: E402

TEST_SEED = 400_000  # the fresh real renders the classifiers are judged on
REAL_SEED = 500_000  # + training seed: the K real renders per class
CONDITIONS = ("real", "+plain", "+tokens")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def train_library(folder: Path, backend, steps: int | None, recipe: str) -> None:
    """One token per world class (the recipe, the world's prompts with the class's coarse word), cached."""
    guide = load_world_classifier("guide")
    for cls in CLASSES:
        out = folder / f"{sanitize_name(cls.label)}.safetensors"
        if out.exists():
            continue
        started = time.perf_counter()
        config = replace(demo_config(steps, recipe=recipe), init_word=cls.noun)
        outcome = run_training(TrainJob(backend, guide, guide.class_index(cls.label), config,
                                        name=sanitize_name(cls.label), prompt_label=cls.noun, out=out,
                                        recipe=recipe, base_model="dct demo world"))
        if outcome.save_error:
            raise SystemExit(outcome.save_error)
        r = outcome.result
        log(f"token {cls.label!r}: {len(r.history)} steps ({r.stopped}), {time.perf_counter() - started:.0f} s")


def load_folder(root: Path, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``count`` PNGs per class of a dct dataset tree, with their world class indices."""
    import numpy as np
    from PIL import Image

    manifest = [json.loads(line) for line in (root / "manifest.jsonl").read_text().splitlines()]
    per_class: dict[str, int] = {}
    images, labels = [], []
    for rec in manifest:
        if per_class.get(rec["folder"], 0) >= count:
            continue
        per_class[rec["folder"]] = per_class.get(rec["folder"], 0) + 1
        array = np.asarray(Image.open(root / rec["file"]).convert("RGB"), dtype=np.float32) / 255
        images.append(torch.from_numpy(array).permute(2, 0, 1))
        labels.append(rec["class_index"])  # the guide's class index (its label may be shortened: "kite")
    return torch.stack(images), torch.tensor(labels)


def real_renders(per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.arange(len(LABELS)).repeat_interleave(per_class)
    images, _ = render(labels, torch.Generator().manual_seed(seed))
    return images, labels


def train_on(images: torch.Tensor, labels: torch.Tensor, *, steps: int, seed: int, batch: int):
    """The world's classifier recipe (``fit_classifier``) with batches drawn from a fixed set."""

    def draw(g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        pick = torch.randint(len(labels), (batch,), generator=g)
        return images[pick], labels[pick]

    return fit_classifier(CLASSIFIERS["held-out"], draw, steps=steps, seed=seed)


@torch.no_grad()
def generated_sets(generated: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, dict[str, list[float]]]:
    """Per condition and class: how many generated images the world's held-out classifier gives their label, and
    the colour / all-attribute entropy (bits) of the set: what a classifier trained on them can learn."""
    held_out, entropy = load_world_classifier("held-out"), variety_reader()
    out: dict[str, dict[str, list[float]]] = {}
    for cond, (images, labels) in generated.items():
        agree, colour, total = [], [], []
        for c in range(len(LABELS)):
            mine = images[labels == c]
            agree.append(float((held_out(mine).argmax(-1) == c).float().mean()))
            bits = entropy(mine)
            colour.append(bits["color"])
            total.append(bits["total"])
        out[cond] = {"agree": agree, "colour_bits": colour, "total_bits": total}
    return out


@torch.no_grad()
def top1(model, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, list[float]]:
    pred = torch.cat([model(_normalize(images[i:i + 250])).argmax(-1) for i in range(0, len(images), 250)])
    right = (pred == labels).float()
    return float(right.mean()), [float(right[labels == c].mean()) for c in range(len(LABELS))]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench/results/augmentation", help="working folder (tokens, datasets, results)")
    p.add_argument("--library", help="folder of the ten world tokens (default OUT/tokens-RECIPE; trained if missing)")
    p.add_argument("--recipe", default=DEFAULT_PRESET, help=f"token recipe (default {DEFAULT_PRESET})")
    p.add_argument("--token-steps", type=int, help="token training steps (default: the recipe's)")
    p.add_argument("--real-per-class", type=int, default=5, help="K real renders per class (default 5)")
    p.add_argument("--generated-per-class", type=int, default=96, help="N generated images per class (default 96)")
    p.add_argument("--filter-prob", type=float, default=0.0,
                   help="dct dataset's filter: keep only images the --filter-by classifier gives their label this "
                        "probability, drawing on until N pass (at most 4N seeds), for plain prompts and tokens "
                        "alike (default 0: off)")
    p.add_argument("--filter-by", default="held-out", choices=("held-out", "guide"),
                   help="the world classifier that filters (default held-out: a second judge, another architecture "
                        "than the guide the tokens were trained against)")
    p.add_argument("--test-images", type=int, default=1000, help="fresh real test renders (default 1000)")
    p.add_argument("--steps", type=int, default=800, help="classifier training steps (default 800)")
    p.add_argument("--batch", type=int, default=64, help="classifier batch size (default 64)")
    p.add_argument("--seeds", default="0,1,2", help="training seeds (default 0,1,2)")
    p.add_argument("--json", help="also write the results as JSON here")
    args = p.parse_args(argv)
    started = time.perf_counter()
    out = Path(args.out)
    library = Path(args.library) if args.library else out / f"tokens-{args.recipe}"
    backend = load_world_backend()
    train_library(library, backend, args.token_steps, args.recipe)
    missing = set(range(len(LABELS))) - {plan.class_index for plan in plan_classes(library)}
    if missing:
        raise SystemExit(f"{library} lacks tokens for: {', '.join(LABELS[i] for i in sorted(missing))}")
    generated = {}
    wanted = args.generated_per_class
    keep = None
    if args.filter_prob:
        keep = KeepFilter(load_world_classifier(args.filter_by), args.filter_prob, 4 * wanted,
                          f"world:{args.filter_by}")
    suffix = f"-{args.filter_by}-{args.filter_prob:g}" if keep else ""
    for name, without in (("+plain", True), ("+tokens", False)):
        root = out / (("plain" if without else f"dataset-{library.name}") + suffix)
        t = time.perf_counter()
        summary = write_dataset(backend, library, root, wanted, without_tokens=without, sampling=SAMPLING,
                                model="world", batch=64, keep=keep)
        generated[name] = load_folder(root, wanted)
        for folder, (kept, drawn) in summary.kept.items():
            log(f"{name} {folder}: {kept} kept of {drawn} drawn")
        log(f"{name}: {len(generated[name][1])} generated images ({time.perf_counter() - t:.0f} s)")
    sets = generated_sets(generated)
    per_class_test = -(-args.test_images // len(LABELS))
    test = real_renders(per_class_test, TEST_SEED)
    results: dict[str, list[dict]] = {c: [] for c in CONDITIONS}
    seeds = [int(s) for s in args.seeds.split(",")]
    for seed in seeds:
        real = real_renders(args.real_per_class, REAL_SEED + seed)
        for cond in CONDITIONS:
            t = time.perf_counter()
            images, labels = real
            if cond in generated:
                images, labels = torch.cat([images, generated[cond][0]]), torch.cat([labels, generated[cond][1]])
            model = train_on(images, labels, steps=args.steps, seed=seed, batch=args.batch)
            acc, per_class = top1(model, *test)
            results[cond].append({"seed": seed, "top1": acc, "per_class": per_class})
            log(f"seed {seed} {cond:<8} top-1 {100 * acc:.1f}%  ({time.perf_counter() - t:.0f} s)")
    minutes = (time.perf_counter() - started) / 60
    print(f"held-out architecture ({CLASSIFIERS['held-out'].architecture}) from scratch, {args.steps} steps of "
          f"{args.batch}; K={args.real_per_class} real + N={args.generated_per_class} generated per class; top-1 on "
          f"{len(test[1])} fresh real renders; seeds {args.seeds}; tokens: {library} ({args.recipe}); "
          f"{minutes:.1f} min\n")
    print("| condition | train images / class | top-1 mean | spread (min-max) | std |")
    print("|---|---|---|---|---|")
    for cond in CONDITIONS:
        accs = [100 * r["top1"] for r in results[cond]]
        n = args.real_per_class + (args.generated_per_class if cond != "real" else 0)
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        print(f"| {cond} | {n} | {statistics.mean(accs):.1f} | {min(accs):.1f}-{max(accs):.1f} | {std:.1f} |")
    print("\nper class: top-1 of the trained classifiers, mean over seeds (%); the generated sets: images the "
          "held-out world classifier gives their label (%), colour and all-attribute entropy (bits), plain / tokens")
    print("| class | " + " | ".join(CONDITIONS) + " | label agrees | colour bits | all bits |")
    print("|---|" + "---|" * (len(CONDITIONS) + 3))
    for c, label in enumerate(LABELS):
        cells = [f"{100 * statistics.mean(r['per_class'][c] for r in results[cond]):.0f}" for cond in CONDITIONS]
        plain, tokens = sets["+plain"], sets["+tokens"]
        cells += [f"{100 * plain['agree'][c]:.0f} / {100 * tokens['agree'][c]:.0f}",
                  f"{plain['colour_bits'][c]:.2f} / {tokens['colour_bits'][c]:.2f}",
                  f"{plain['total_bits'][c]:.2f} / {tokens['total_bits'][c]:.2f}"]
        print(f"| {label} | " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "minutes": minutes, "results": results,
                                               "generated": sets}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
