"""Backprop depth K on the demo world: the same demo (classes, training seeds, fresh evaluation seeds) at each K.

Prints a Markdown table of top-1 accuracy without / with the token under the guiding and the held-out
classifier, and seconds per training step; writes bench/results/demo_depth.json. Usage:

    python bench/demo_depth.py                 # K = 1 and K = 3, both demo classes (about 5 min on 2 CPU cores)
    python bench/demo_depth.py --depths 1,2,3,5 --steps 30
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _value(text: str):
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def main() -> int:
    import torch

    from dct_core.jobs.demo import run_demo
    from dct_core.method.evaluation import WITH, WITHOUT

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--depths", default="1,3")
    p.add_argument("--steps", type=int, help="default: the recipe's")
    p.add_argument("--num-images", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--world", help="another world folder (default: the shipped weights)")
    p.add_argument("--classes", action="append", help="demo class (repeatable; default both)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a demo training setting, e.g. --set lr=0.01 --set fresh_seeds=true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    overrides: dict = {"gradient_point": "last"}  # K is the depth of the last-steps gradient
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = _value(value)
    rows = []
    for k in [int(x) for x in args.depths.split(",")]:
        with tempfile.TemporaryDirectory() as tmp:
            report = run_demo(tmp, steps=args.steps, backprop_depth=k, num_images=args.num_images,
                              overrides=overrides, world_dir=args.world, classes=args.classes)
        for row in report.rows:
            entry = {"K": k, "class": row.target.label, "steps": row.train_steps,
                     "s_per_step": row.train_seconds / max(1, row.train_steps)}
            for role, name in report.classifiers.items():
                acc = row.accuracy[name]
                entry[role] = {"without": acc[WITHOUT]["top1"], "with": acc[WITH]["top1"]}
            rows.append(entry)
    print("| K | class | steps | s/step | guide top-1 without -> with | held-out top-1 without -> with | "
          "held-out gain |\n|---|---|---|---|---|---|---|")
    for r in rows:
        g, h = r["guiding"], r["held_out"]
        print(f"| {r['K']} | {r['class']} | {r['steps']} | {r['s_per_step']:.2f} | {100 * g['without']:.1f}% -> "
              f"{100 * g['with']:.1f}% | {100 * h['without']:.1f}% -> {100 * h['with']:.1f}% | "
              f"{100 * (h['with'] - h['without']):+.1f} |")
    out = Path(__file__).parent / "results" / "demo_depth.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"overrides": overrides, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
