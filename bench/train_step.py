"""Cost of one training step against plain generation of the same batch: time and peak memory.

Each measurement runs in its own process (peak RSS is per process). Prints a Markdown table; measured ratios
come from one run on the same machine. Usage:

    python bench/train_step.py                  # tiny + SD1.5-shaped at 64 px (a few minutes on 2 cores)
    python bench/train_step.py --sizes sd15-512  # SD1.5-shaped at 512 px (slow on a CPU)

SD1.5-shaped models have random weights built in-process (no download): the cost does not depend on the values.
At 512 px on a CPU the full 30-step trajectory is too slow to measure, so it runs fewer sampling steps and also
prints the projection to 30 steps from the measured per-step UNet time (the extra cost of training is fixed
per step, so its share shrinks as the trajectory grows).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# name -> (model, resolution, batch, sampling steps)
SIZES = {
    "tiny": ("tiny", 32, 5, 10),
    "sd15-64": ("sd15", 64, 1, 10),
    "sd15-256": ("sd15", 256, 1, 4),
    "sd15-512": ("sd15", 512, 1, 2),
}
# mode -> (train?, K, gradient checkpointing in UNet and decoder)
MODES = {
    "generate": (False, 0, False),
    "train K=1 no ckpt": (True, 1, False),
    "train K=1": (True, 1, True),
    "train K=3": (True, 3, True),
    "train K=S": (True, -1, True),
}


def sd15_pipeline():
    """Stable Diffusion 1.5's architecture (UNet 860 M, VAE 84 M, CLIP-L 123 M) with random weights."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from dct_core.backends.model_loading import clip_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8, sample_size=64)
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512), latent_channels=4, layers_per_block=2,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512,
    )
    text = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                        num_attention_heads=12, vocab_size=49408, max_position_embeddings=77,
                                        hidden_act="quick_gelu", eos_token_id=49407, bos_token_id=49406))
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                          set_alpha_to_one=False, steps_offset=1)
    return StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=clip_tokenizer(), unet=unet, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def measure(size: str, mode: str, threads: int) -> dict:
    """One measurement in this process: build, warm up (small models only), time one step, report phases."""
    import timm
    import torch

    from dct_core.backends.diffusers_backend import DiffusersBackend
    from dct_core.classifiers import ImageClassifier, Preprocess
    from dct_core.config import SamplingConfig, TrainConfig
    from dct_core.method.generation import generate_images
    from dct_core.method.training import train_class_token
    from dct_core.testing.tiny import tiny_pipeline

    torch.set_num_threads(threads)
    model, res, batch, steps = SIZES[size]
    pipe = tiny_pipeline("sd1") if model == "tiny" else sd15_pipeline()
    backend = DiffusersBackend(pipe)
    clf_name = "test_resnet" if model == "tiny" else "resnet50"
    net = timm.create_model(clf_name, pretrained=False, num_classes=10 if model == "tiny" else 1000)
    classifier = ImageClassifier(net.eval(), [str(i) for i in range(net.num_classes)], Preprocess.from_timm(net))
    if model == "tiny":
        classifier = ImageClassifier(net.eval(), classifier.labels, Preprocess(input_size=(32, 32), crop_pct=1.0))
    sampling = SamplingConfig(resolution=res, sampling_steps=steps, guidance=7.0)
    train, depth, ckpt = MODES[mode]
    depth = steps if depth == -1 else depth
    if depth > steps:
        return {"skipped": True}

    phases = {"denoise (no grad)": 0.0, "denoise (grad)": 0.0, "decode": 0.0}

    def timed(name_of, fn):
        def wrapper(*a, **k):
            t = time.perf_counter()
            out = fn(*a, **k)
            phases[name_of(a, k)] += time.perf_counter() - t
            return out
        return wrapper

    backend.denoise = timed(lambda a, k: "denoise (grad)" if torch.is_grad_enabled() else "denoise (no grad)",
                            backend.denoise)
    backend.decode = timed(lambda a, k: "decode", backend.decode)
    rss_weights = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def run_once():
        if train:
            config = TrainConfig(batch_size=batch, max_steps=1, backprop_depth=depth, sampling=sampling,
                                 checkpointing=ckpt)
            train_class_token(backend, classifier, 0, "tiger cat", config)
        else:
            images = generate_images(backend, ["A photo of a tiger cat"] * batch, list(range(batch)), sampling,
                                     chunk=batch)
            with torch.no_grad():
                classifier(images)

    if model == "tiny":
        run_once()
    for k in phases:
        phases[k] = 0.0
    start = time.perf_counter()
    run_once()
    total = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": total, "phases": phases, "peak_rss_mb": peak,
            "weights_rss_mb": rss_weights, "steps": steps, "batch": batch, "res": res, "depth": depth if train else 0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="tiny,sd15-64")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--one", nargs=2, metavar=("SIZE", "MODE"), help=argparse.SUPPRESS)
    parser.add_argument("--json", help="also write the raw results here")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(*args.one, args.threads)))
        return
    rows = []
    for size in args.sizes.split(","):
        for mode in args.modes.split(","):
            cmd = [sys.executable, __file__, "--one", size, mode, "--threads", str(args.threads)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                print(proc.stderr[-2000:], file=sys.stderr)
                continue
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            if not result.get("skipped"):
                rows.append((size, mode, result))
                print(f"... {size} {mode}: {result['seconds']:.2f}s", file=sys.stderr, flush=True)
    print(f"\n| model | res | B x S | mode | step s | x generate | peak RSS MB | x generate | unet step s | decode s "
          f"| projected x generate at S=30 |\n|{'---|' * 11}")
    base = {size: r for size, mode, r in rows if mode == "generate"}
    for size, mode, r in rows:
        g = base.get(size)
        no_grad_steps = r["steps"] - r["depth"]
        unet_step = r["phases"]["denoise (no grad)"] / no_grad_steps if no_grad_steps else float("nan")
        proj = ""
        if g:
            gen_unet = g["phases"]["denoise (no grad)"] / g["steps"]
            extra = (30 - r["steps"]) * gen_unet
            proj = f"{(r['seconds'] + extra) / (g['seconds'] + extra):.2f}x"
        print(f"| {size} | {r['res']} | {r['batch']} x {r['steps']} | {mode} | {r['seconds']:.2f} | "
              f"{r['seconds'] / g['seconds']:.2f}x | {r['peak_rss_mb']:.0f} | "
              f"{r['peak_rss_mb'] / g['peak_rss_mb']:.2f}x "
              f"| {unet_step:.2f} | {r['phases']['decode']:.2f} | {proj} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
