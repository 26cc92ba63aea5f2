"""Cost of test-time adaptive conditioning (DATE) against plain sampling, by update frequency.

Each measurement runs in its own process (peak RSS is per process); prints a Markdown table. Usage:

    python bench/adaptive_cost.py                      # tiny + SD1.5-shaped at 64 px, 10 steps
    python bench/adaptive_cost.py --sizes sd15-256     # slower

SD1.5-shaped models have random weights built in-process (cost does not depend on the values).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

SIZES = {"tiny": ("tiny", 32, 10), "sd15-64": ("sd15", 64, 10), "sd15-256": ("sd15", 256, 10)}
EVERY = ["off", "10", "5", "2", "1"]  # update at every k-th step; "off" = plain sampling


def measure(size: str, every: str, threads: int) -> dict:
    import timm
    import torch

    from dct_core.backends.diffusers_backend import DiffusersBackend
    from dct_core.classifiers import ImageClassifier, Preprocess
    from dct_core.config import SamplingConfig
    from dct_core.method.adaptive import AdaptiveConfig, adaptive_generate, class_score
    from dct_core.method.generation import generate_images
    from dct_core.testing.tiny import tiny_pipeline

    torch.set_num_threads(threads)
    model, res, steps = SIZES[size]
    if model == "tiny":
        pipe = tiny_pipeline("sd1")
        net = timm.create_model("test_resnet", pretrained=False, num_classes=10)
        classifier = ImageClassifier(net.eval(), [str(i) for i in range(10)], Preprocess((32, 32), 1.0))
    else:
        from train_step import sd15_pipeline

        pipe = sd15_pipeline()
        net = timm.create_model("resnet50", pretrained=False)
        classifier = ImageClassifier(net.eval(), [str(i) for i in range(1000)], Preprocess.from_timm(net))
    classifier.module.requires_grad_(False)
    backend = DiffusersBackend(pipe)
    sampling = SamplingConfig(resolution=res, sampling_steps=steps, guidance=7.0)
    prompts, seeds = ["a photo of a tiger cat"], [0]

    def run():
        if every == "off":
            generate_images(backend, prompts, seeds, sampling)
        else:
            adaptive_generate(backend, prompts, seeds, sampling, class_score(classifier, 1),
                              AdaptiveConfig(rho=0.2, every=int(every)))

    if model == "tiny":
        run()  # warm-up
    start = time.perf_counter()
    run()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "updates": 0 if every == "off" else len(range(0, steps, int(every))), "steps": steps, "res": res}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="tiny,sd15-64")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(*args.one, args.threads)))
        return
    print("| model | res | steps | updates | s / image | x plain | peak RSS MB | x plain |")
    print("|---|---|---|---|---|---|---|---|")
    for size in args.sizes.split(","):
        base = None
        for every in EVERY:
            proc = subprocess.run([sys.executable, __file__, "--one", size, every, "--threads", str(args.threads)],
                                  capture_output=True, text=True)
            if proc.returncode:
                print(proc.stderr[-2000:], file=sys.stderr)
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            base = base or r
            print(f"| {size} | {r['res']} | {r['steps']} | {r['updates']} | {r['seconds']:.2f} | "
                  f"{r['seconds'] / base['seconds']:.2f}x | {r['peak_rss_mb']:.0f} | "
                  f"{r['peak_rss_mb'] / base['peak_rss_mb']:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
