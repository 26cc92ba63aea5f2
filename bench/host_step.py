"""One training step of the Train node against a stock KSampler + VAE Decode run on the real ComfyUI host.

In-process host (CPU here; CUDA when present), the random SD1.5-layout checkpoint the host tests build (with the
real SD KL VAE, so the checkpoint VAE can be measured as the training signal) and a random TAESD decoder in
models/vae_approx; a random timm resnet50 as the classifier. Each setting runs in its own process (peak memory is
per process): on CPU the peak RSS of the second of two runs (the peak reset after the first) over the process's
RSS before the checkpoint was loaded, i.e. weights + activations + the host's per-layer weight casts, like
``torch.cuda.max_memory_allocated`` on a GPU, which is what is reported there. Time: the second run. Usage:

    python bench/host_step.py                              # 128 px, batch 2, 10 sampling steps (CPU: ~15 min)
    python bench/host_step.py --res 512 --batch 1 --steps 4 --full-unet   # GPU: SD1.5's real UNet at 512 px

Time at 30 sampling steps is projected from the measured per-step cost of the host's sampler (a training step
runs the trajectory only up to its gradient point; its extra cost is fixed per step), like bench/train_step.py.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# name -> what runs: op, decoder for the training signal, gradient point, K, checkpointing, micro batch, batch mult
SETTINGS: dict[str, dict] = {
    "KSampler + VAE Decode": dict(op="sample"),
    "train x0 (default), VAE": dict(op="train", decoder="vae", point="x0"),
    "train x0 (default), TAESD": dict(op="train", decoder="taesd", point="x0"),
    "train x0, VAE, no ckpt": dict(op="train", decoder="vae", point="x0", ckpt=False),
    "train last K=1 (paper), VAE": dict(op="train", decoder="vae", point="last", k=1),
    "train last K=1 (paper), TAESD": dict(op="train", decoder="taesd", point="last", k=1),
    "train last K=3, VAE": dict(op="train", decoder="vae", point="last", k=3),
    "train last K=3, TAESD": dict(op="train", decoder="taesd", point="last", k=3),
    "train x0, TAESD, 2x batch in micro 1": dict(op="train", decoder="taesd", point="x0", micro=1, mult=2),
    "train x0, TAESD, 4x batch in micro 1": dict(op="train", decoder="taesd", point="x0", micro=1, mult=4),
}
FULL_UNET = {  # SD1.5's real UNet (860 M parameters)
    "use_checkpoint": False, "image_size": 32, "use_spatial_transformer": True, "legacy": False,
    "adm_in_channels": None, "in_channels": 4, "out_channels": 4, "model_channels": 320,
    "num_res_blocks": [2, 2, 2, 2], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], "channel_mult": [1, 2, 4, 4],
    "transformer_depth_middle": 1, "use_linear_in_transformer": False, "context_dim": 768, "num_heads": 8,
    "use_temporal_resblock": False, "use_temporal_attention": False,
}


def comfyui_path() -> Path:
    for candidate in (os.environ.get("COMFYUI_PATH"), str(Path.home() / "comfy" / "ComfyUI")):
        if candidate and (Path(candidate) / "comfy" / "sd.py").is_file():
            return Path(candidate)
    sys.exit("ComfyUI not found: set COMFYUI_PATH (or install it at ~/comfy/ComfyUI).")


def rss_mb(field: str = "VmRSS") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak_rss() -> None:
    """Start the process's peak RSS (VmHWM) afresh (Linux >= 4.0), so the checkpoint load's transient peak
    does not count: what is measured is the operation, over weights already in memory."""
    Path("/proc/self/clear_refs").write_text("5")


def start_host(models: Path, cuda: bool):
    """The host in-process, its model folders in ``models``, this pack loaded as the host loads a custom node."""
    root = comfyui_path()
    sys.path.insert(0, str(root))
    import comfy.cli_args

    comfy.cli_args.args.cpu = not cuda
    import comfy.model_management  # noqa: F401
    import folder_paths

    for name in ("checkpoints", "embeddings", "classifiers", "vae_approx"):
        exts = folder_paths.folder_names_and_paths.get(name, ([], set()))[1]
        folder_paths.folder_names_and_paths[name] = ([str(models / name)], exts)
    spec = importlib.util.spec_from_file_location("dct_pack", ROOT / "__init__.py",
                                                  submodule_search_locations=[str(ROOT)])
    pack = importlib.util.module_from_spec(spec)
    sys.modules["dct_pack"] = pack
    spec.loader.exec_module(pack)
    return pack


def build_models(models: Path, full_unet: bool) -> None:
    sys.path.insert(0, str(ROOT / "tests" / "host"))
    from sd15_checkpoint import build_sd15_checkpoint, write_taesd_decoder

    build_sd15_checkpoint(models / "checkpoints" / "bench.safetensors", vae="kl",
                          unet=FULL_UNET if full_unet else None)
    write_taesd_decoder(models / "vae_approx" / "taesd_decoder.safetensors")


def measure(setting: str, args) -> dict:
    import timm
    import torch

    cuda = torch.cuda.is_available() and not args.cpu
    torch.set_num_threads(args.threads)
    start_host(Path(args.models), cuda)
    import nodes as host_nodes
    from dct_core.classifiers import ImageClassifier, Preprocess
    from dct_core.config import SamplingConfig, preset_config
    from dct_core.method.training import _gradient_steps, train_class_token

    s = SETTINGS[setting]
    batch = args.batch * s.get("mult", 1)
    base_rss = rss_mb()
    with torch.inference_mode():  # as the host runs every node: loaded weights are inference tensors
        model, clip, vae = host_nodes.CheckpointLoaderSimple().load_checkpoint("bench.safetensors")[:3]
        net = timm.create_model("resnet50", pretrained=False, num_classes=1000).eval()
    classifier = ImageClassifier(net, [str(i) for i in range(1000)], Preprocess.from_timm(net))
    sampling = SamplingConfig(resolution=args.res, sampling_steps=args.steps, guidance=7.5)
    seconds: dict[str, float] = {}

    def sample():
        with torch.inference_mode():
            t0 = time.perf_counter()
            pos = host_nodes.CLIPTextEncode().encode(clip, "A photo of a tiger cat")[0]
            neg = host_nodes.CLIPTextEncode().encode(clip, "")[0]
            latent = host_nodes.EmptyLatentImage().generate(args.res, args.res, batch)[0]
            t1 = time.perf_counter()
            out = host_nodes.common_ksampler(model, 0, args.steps, 7.5, "euler", "normal", pos, neg, latent)[0]
            t2 = time.perf_counter()
            host_nodes.VAEDecode().decode(vae, out)
            t3 = time.perf_counter()
        seconds.update(encode=t1 - t0, sampler=t2 - t1, decode=t3 - t2)

    config = preset_config("balanced" if s.get("point") == "x0" else "paper", batch_size=batch,
                           micro_batch=s.get("micro"), max_steps=1, sampling=sampling, backprop_depth=s.get("k"),
                           checkpointing=s.get("ckpt", True), templates=("A photo of a {token} {label}",))
    no_grad_steps = 0
    if s["op"] == "train":
        picks = _gradient_steps(config, torch.Generator().manual_seed(config.seed))
        no_grad_steps = picks[-1] if picks else args.steps - config.backprop_depth

    def train():
        autograd = importlib.import_module("dct_pack.nodes.adapters.autograd")
        backend_mod = importlib.import_module("dct_pack.nodes.adapters.comfy_backend")
        train_node = importlib.import_module("dct_pack.nodes.train_node")
        decoder = train_node._load_decoder(
            "taesd_decoder.safetensors" if s["decoder"] == "taesd" else train_node.CHECKPOINT_VAE, model)
        with torch.inference_mode():
            with autograd.autograd_enabled(), autograd.out_of_place_clip(), \
                    autograd.trainable_weights([classifier.module]):
                backend = backend_mod.ComfyBackend(model, clip, vae, decoder=decoder)
                t0 = time.perf_counter()
                train_class_token(backend, classifier, 1, "tiger cat", config)
                seconds.update(step=time.perf_counter() - t0)

    run = sample if s["op"] == "sample" else train
    run()  # warm-up: first-call costs (allocations, kernel choice) out of the timing
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    else:
        reset_peak_rss()
    run()
    peak = (torch.cuda.max_memory_allocated() / 2**20) if cuda else rss_mb("VmHWM") - base_rss
    return {"seconds": seconds, "peak_mb": peak, "batch": batch, "no_grad_steps": no_grad_steps,
            "device": "cuda" if cuda else "cpu"}


def expected_no_grad_steps(s: dict, steps: int) -> float:
    """Sampling steps a training step runs without gradient at ``steps`` (x0: the mean of its random pick)."""
    if s.get("point") == "x0":
        from dct_core.config import preset_config

        lo, hi = preset_config("balanced").x0_interval
        first, last = int(lo * steps), int(hi * steps)
        return (first + last) / 2
    return steps - s.get("k", 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--res", type=int, default=128)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3, help="processes per setting; the least figure is kept")
    parser.add_argument("--settings", default="|".join(SETTINGS), help="names from the table, separated by |")
    parser.add_argument("--full-unet", action="store_true", help="SD1.5's real UNet instead of the tiny one")
    parser.add_argument("--cpu", action="store_true", help="stay on the CPU even where CUDA is present")
    parser.add_argument("--json", help="also write the raw results here")
    parser.add_argument("--models", help=argparse.SUPPRESS)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--build", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build:
        models = Path(args.models)
        for name in ("checkpoints", "embeddings", "classifiers", "vae_approx"):
            (models / name).mkdir(parents=True, exist_ok=True)
        start_host(models, cuda=False)
        build_models(models, args.full_unet)
        return
    if args.one:
        print(json.dumps(measure(args.one, args)))
        return
    rows = []
    with tempfile.TemporaryDirectory(prefix="dct-host-bench-") as tmp:
        models = Path(tmp)
        subprocess.run([sys.executable, __file__, "--build", "--models", tmp]
                       + (["--full-unet"] if args.full_unet else []), check=True)
        for name in args.settings.split("|"):
            cmd = [sys.executable, __file__, "--one", name, "--models", tmp, "--res", str(args.res),
                   "--batch", str(args.batch), "--steps", str(args.steps), "--threads", str(args.threads)]
            cmd += ["--cpu"] if args.cpu else []
            results = []
            for _ in range(args.repeat):
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode:
                    print(f"{name}: failed\n{proc.stderr[-3000:]}", file=sys.stderr)
                    break
                results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            if len(results) < args.repeat:
                continue
            result = dict(results[0])  # the least of each figure over the repeats (noise only adds)
            result["peak_mb"] = min(r["peak_mb"] for r in results)
            result["seconds"] = {k: min(r["seconds"][k] for r in results) for k in results[0]["seconds"]}
            rows.append((name, result))
            print(f"... {name}: {result['seconds']} {result['peak_mb']:.0f} MB", file=sys.stderr, flush=True)
    print_table(rows, args)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


def print_table(rows: list[tuple[str, dict]], args) -> None:
    base = dict(rows).get("KSampler + VAE Decode")
    device = rows[0][1]["device"] if rows else "?"
    memory = "peak VRAM MB" if device == "cuda" else "peak RSS over start MB"
    print(f"\n{device}, {args.res} px, batch {args.batch}, {args.steps} sampling steps "
          f"({'SD1.5 UNet' if args.full_unet else 'SD1.5-width tiny UNet'}, SD KL VAE, resnet50 classifier)\n")
    print(f"| setting | batch | s | {memory} | memory x plain | no-grad steps | time x plain at 30 steps |")
    print("|---|---|---|---|---|---|---|")
    per_step = base["seconds"]["sampler"] / args.steps if base else float("nan")
    for name, r in rows:
        s = SETTINGS[name]
        total = sum(r["seconds"].values())
        plain30 = (base["seconds"]["sampler"] + base["seconds"]["decode"] + base["seconds"]["encode"]
                   + (30 - args.steps) * per_step) if base else float("nan")
        if s["op"] == "sample":
            t30 = plain30
        else:  # the measured step, with its no-grad trajectory re-sized to what 30 sampling steps run
            t30 = total + (expected_no_grad_steps(s, 30) - r["no_grad_steps"]) * per_step
        mem_ratio = r["peak_mb"] / base["peak_mb"] if base else float("nan")
        same_batch = base is not None and r["batch"] == base["batch"]
        print(f"| {name} | {r['batch']} | {total:.2f} | {r['peak_mb']:.0f} | {mem_ratio:.2f}x | "
              f"{r['no_grad_steps'] if s['op'] == 'train' else '-'} | "
              f"{(t30 / plain30) if same_batch else float('nan'):.2f}x |")


if __name__ == "__main__":
    main()
