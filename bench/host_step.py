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

GPU figures for the README (``--gpu-table``): full-size random SD1.5 (its real UNet, CLIP-L, KL VAE) at 512 px and
full-size random SDXL (its real UNet, CLIP-L + CLIP-G, KL VAE) at 1024 px, built from the host's own classes by
bench/full_checkpoints.py into a cache folder on the measuring machine (fp16: 2 + 6.5 GB; nothing is downloaded).
For each: a plain KSampler + VAE Decode (the baseline) and one Train-node training step with the checkpoint VAE and
with TAESD as the training signal's decoder, checkpointing on and off; batch 1, 30 sampling steps; each row in its
own process; peak VRAM is ``torch.cuda.max_memory_allocated``; a row that runs out of memory says 'did not fit'.
On a fresh CUDA machine that holds this repo and a ComfyUI checkout (0.3.64 tested), from the repo root:

    COMFYUI_PATH=/path/to/ComfyUI python3 bench/host_step.py --gpu-table --out gpu_table.md

or, to keep each command under 10 minutes, as two (the checkpoints are built once, into $DCT_BENCH_CACHE, default
/tmp/dct-bench-cache, and reused by later runs):

    COMFYUI_PATH=/path/to/ComfyUI python3 bench/host_step.py --gpu-table --only sd15 --out sd15.md
    COMFYUI_PATH=/path/to/ComfyUI python3 bench/host_step.py --gpu-table --only sdxl --out sdxl.md

Python needs torch (CUDA), timm, transformers, safetensors, einops, scipy, psutil, pyyaml, pillow, numpy, tqdm
(all in the device image); PyAV and torchsde, which the host imports for video and SDE samplers only, get stand-ins
where missing. ``--smoke`` runs the same at tiny size (64 px, 2 steps) on whatever device: a check of a minute or
two before spending GPU time. Without CUDA, ``--gpu-table`` says so in one line and runs ``--cpu-smoke``: tests/host's
small SD1.5 and an SDXL-family (KOALA-layout) tiny UNet with the full text encoders, each model's rows in one
process, SDXL's cut to three; about 7 minutes on two shared cores; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.util
import json
import os
import re
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
    "train x0, TAESD, no ckpt": dict(op="train", decoder="taesd", point="x0", ckpt=False),
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


# Packages the host imports at start-up for code these benchmarks never run: PyAV (a 35 MB wheel) for its video
# types, torchsde for its SDE samplers (the benchmarks sample with euler). Where one is missing (a bare GPU machine
# that has only torch's stack), a stand-in module takes its place; using anything from it raises.
UNUSED_HOST_IMPORTS = ("av", "torchsde")


class _Unavailable:
    def __init__(self, *args, **kwargs):
        raise RuntimeError("this package is a stand-in (bench/host_step.py): install it to use this")


class _StandIns(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, names: tuple[str, ...]):
        self.names = names

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in self.names:
            return importlib.util.spec_from_loader(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        module.__getattr__ = lambda name: type(name, (_Unavailable,), {})


def stand_in_unused_host_imports() -> list[str]:
    """Stand-ins for the UNUSED_HOST_IMPORTS that are not installed; returns their names."""
    missing = [n for n in UNUSED_HOST_IMPORTS if n not in sys.modules and importlib.util.find_spec(n) is None]
    if missing and not any(isinstance(f, _StandIns) for f in sys.meta_path):
        sys.meta_path.append(_StandIns(tuple(missing)))
        print(f"note: {', '.join(missing)} not installed: stand-ins for the host's imports (unused here)",
              file=sys.stderr)
    return missing


def start_host(models: Path, cuda: bool, pack: bool = True):
    """The host in-process, its model folders in ``models``, this pack loaded as the host loads a custom node."""
    root = comfyui_path()
    sys.path.insert(0, str(root))
    stand_in_unused_host_imports()
    import comfy.cli_args

    comfy.cli_args.args.cpu = not cuda
    import comfy.model_management  # noqa: F401
    import folder_paths

    for name in ("checkpoints", "embeddings", "classifiers", "vae_approx"):
        exts = folder_paths.folder_names_and_paths.get(name, ([], set()))[1]
        folder_paths.folder_names_and_paths[name] = ([str(models / name)], exts)
    if not pack:
        return None
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


_LOADED: dict = {}  # the host, the checkpoint and the classifier, loaded by this process's first measure()


def measure(setting: str, args) -> dict:
    import timm
    import torch

    cuda = torch.cuda.is_available() and not args.cpu
    if not _LOADED:  # once per process (the smoke measures all of a model's settings in one)
        torch.set_num_threads(args.threads)
        start_host(Path(args.models), cuda)
        import nodes as host_nodes

        _LOADED["base_rss"] = rss_mb()
        with torch.inference_mode():  # as the host runs every node: loaded weights are inference tensors
            _LOADED["models"] = host_nodes.CheckpointLoaderSimple().load_checkpoint(args.ckpt)[:3]
            _LOADED["net"] = timm.create_model("resnet50", pretrained=False, num_classes=1000).eval()
    import nodes as host_nodes
    from dct_core.classifiers import ImageClassifier, Preprocess
    from dct_core.config import SamplingConfig, preset_config
    from dct_core.method.training import _gradient_steps, train_class_token

    s = SETTINGS[setting]
    batch = args.batch * s.get("mult", 1)
    base_rss = _LOADED["base_rss"]
    model, clip, vae = _LOADED["models"]
    net = _LOADED["net"]
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
            sync()
            t3 = time.perf_counter()
        seconds.update(encode=t1 - t0, sampler=t2 - t1, decode=t3 - t2)

    def make_config(seed: int):
        return preset_config("balanced" if s.get("point") == "x0" else "paper", batch_size=batch,
                             micro_batch=s.get("micro"), max_steps=1, sampling=sampling, backprop_depth=s.get("k"),
                             checkpointing=s.get("ckpt", True), templates=("A photo of a {token} {label}",),
                             seed=seed)

    config = make_config(mean_pick_seed(make_config, _gradient_steps) if args.mean_pick else 0)
    no_grad_steps = 0
    if s["op"] == "train":
        picks = _gradient_steps(config, torch.Generator().manual_seed(config.seed))
        no_grad_steps = picks[-1] if picks else args.steps - config.backprop_depth

    def train():
        autograd = importlib.import_module("dct_pack.nodes.adapters.autograd")
        backend_mod = importlib.import_module("dct_pack.nodes.adapters.comfy_backend")
        train_node = importlib.import_module("dct_pack.nodes.train_node")
        choice = args.taesd if s["decoder"] == "taesd" else train_node.CHECKPOINT_VAE
        with torch.inference_mode():  # as the node runs: in the host's inference mode, left for the training
            with autograd.autograd_enabled(), autograd.out_of_place_clip(), \
                    autograd.trainable_weights([classifier.module]):
                decoder = node_decoder(train_node, choice, model, vae)
                backend = backend_mod.ComfyBackend(model, clip, vae, decoder=decoder)
                t0 = time.perf_counter()
                train_class_token(backend, classifier, 1, "tiger cat", config)
                sync()
                seconds.update(step=time.perf_counter() - t0)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    run = sample if s["op"] == "sample" else train
    if args.warmup:
        run()  # warm-up: first-call costs (allocations, kernel choice) out of the timing
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    else:
        reset_peak_rss()
    run()
    peak = (torch.cuda.max_memory_allocated() / 2**20) if cuda else rss_mb("VmHWM") - base_rss
    return {"seconds": seconds, "peak_mb": peak, "batch": batch, "no_grad_steps": no_grad_steps,
            "device": "cuda" if cuda else "cpu"}


def node_decoder(train_node, choice: str, model, vae):
    """The training signal's decoder as the Train node picks it (None: the checkpoint VAE)."""
    return train_node._decoder(choice, model, vae)[0]


def mean_pick_seed(make_config, gradient_steps) -> int:
    """The first seed whose x0 gradient point is the recipe's mean one (the trajectory of a training step stops
    there), so that one measured step is the recipe's average step; 0 for gradient points that are not drawn."""
    import torch

    picks = {seed: gradient_steps(make_config(seed), torch.Generator().manual_seed(seed)) for seed in range(200)}
    if not all(picks.values()):
        return 0
    mean = round(sum(p[-1] for p in picks.values()) / len(picks))
    return min(picks, key=lambda seed: (abs(picks[seed][-1] - mean), seed))


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
    parser.add_argument("--batch", type=int, help="images per step (default 2; --gpu-table: 1)")
    parser.add_argument("--steps", type=int, help="sampling steps (default 10; --gpu-table: 30, smoke: 2)")
    parser.add_argument("--threads", type=int, help="CPU threads per process (default 2; 8 with CUDA)")
    parser.add_argument("--repeat", type=int, help="processes per setting; the least figure is kept (default 3; "
                                                   "--gpu-table: 1)")
    parser.add_argument("--settings", default="|".join(SETTINGS), help="names from the table, separated by |")
    parser.add_argument("--full-unet", action="store_true", help="SD1.5's real UNet instead of the tiny one")
    parser.add_argument("--cpu", action="store_true", help="stay on the CPU even where CUDA is present")
    parser.add_argument("--json", help="also write the raw results here")
    parser.add_argument("--gpu-table", action="store_true",
                        help="the README's GPU table: full-size SD1.5 at 512 px and SDXL at 1024 px (see above)")
    parser.add_argument("--smoke", action="store_true", help="--gpu-table's code at tiny size (64 px, 2 steps)")
    parser.add_argument("--cpu-smoke", action="store_true", help="--smoke on the CPU")
    parser.add_argument("--only", default="sd15,sdxl", help="--gpu-table's models, comma-separated: sd15, sdxl")
    parser.add_argument("--cache", default=os.environ.get("DCT_BENCH_CACHE", "/tmp/dct-bench-cache"),
                        help="--gpu-table's folder for the built checkpoints (default $DCT_BENCH_CACHE or "
                             "/tmp/dct-bench-cache)")
    parser.add_argument("--out", help="--gpu-table: also write the markdown table to this file")
    parser.add_argument("--models", help=argparse.SUPPRESS)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--build", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--build-model", help=argparse.SUPPRESS)
    parser.add_argument("--ckpt", default="bench.safetensors", help=argparse.SUPPRESS)
    parser.add_argument("--taesd", default="taesd_decoder.safetensors", help=argparse.SUPPRESS)
    parser.add_argument("--mean-pick", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-warmup", dest="warmup", action="store_false", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build:
        models = Path(args.models)
        for name in ("checkpoints", "embeddings", "classifiers", "vae_approx"):
            (models / name).mkdir(parents=True, exist_ok=True)
        start_host(models, cuda=False)
        build_models(models, args.full_unet)
        return
    if args.build_model:
        build_model(args)
        return
    if args.one:  # one setting (or several, separated by |, in this one process), one JSON line each
        args.threads = args.threads or 2
        for name in args.one.split("|"):
            try:
                result = measure(name, args)
            except Exception as exc:  # a setting that runs out of memory is a result ('did not fit')
                if not is_oom(exc):
                    raise
                result = {"oom": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
            print(json.dumps({"setting": name, **result}), flush=True)
        return
    if args.gpu_table or args.smoke or args.cpu_smoke:
        gpu_table(args)
        return
    args.batch, args.steps = args.batch or 2, args.steps or 10
    args.threads, args.repeat = args.threads or 2, args.repeat or 3
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
            if len(results) < args.repeat or any("oom" in r for r in results):
                continue
            result = dict(results[0])  # the least of each figure over the repeats (noise only adds)
            result["peak_mb"] = min(r["peak_mb"] for r in results)
            result["seconds"] = {k: min(r["seconds"][k] for r in results) for k in results[0]["seconds"]}
            rows.append((name, result))
            print(f"... {name}: {result['seconds']} {result['peak_mb']:.0f} MB", file=sys.stderr, flush=True)
    print_table(rows, args)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


def is_oom(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or what it was raised from) is the GPU, or the host's memory, running out."""
    while exc is not None:
        text = str(exc).lower()
        if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError" or "out of memory" in text:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


# --gpu-table: what each row runs (a name of SETTINGS) and how the table calls it
GPU_ROWS = [
    ("KSampler + VAE Decode", "KSampler + VAE Decode (baseline)"),
    ("train x0 (default), VAE", "Train step, VAE decoder, checkpointing on"),
    ("train x0, VAE, no ckpt", "Train step, VAE decoder, checkpointing off"),
    ("train x0 (default), TAESD", "Train step, TAESD decoder, checkpointing on"),
    ("train x0, TAESD, no ckpt", "Train step, TAESD decoder, checkpointing off"),
]
# model -> (label, bench/full_checkpoints.py name, tiny stand-in for the smoke, TAESD decoder file, resolution)
GPU_MODELS = {
    "sd15": ("SD1.5", "sd15", "sd15-tiny", "taesd_decoder.safetensors", 512),
    "sdxl": ("SDXL", "sdxl", "sdxl-tiny", "taesdxl_decoder.safetensors", 1024),
}
SMOKE_RES, SMOKE_STEPS = 64, 2
SMOKE_SKIP = {"sdxl": ("train x0, VAE, no ckpt", "train x0 (default), TAESD")}  # the smoke's SDXL cross-section


def build_model(args) -> None:
    """Child process: checkpoint ``args.build_model`` (a bench/full_checkpoints.py name) and the TAESD decoders
    into ``args.models``, built on the GPU where there is one (SDXL in seconds instead of minutes)."""
    import torch

    cuda = torch.cuda.is_available() and not args.cpu
    models = Path(args.models)
    start_host(models, cuda, pack=False)
    sys.path.insert(0, str(ROOT / "bench"))
    sys.path.insert(0, str(ROOT / "tests" / "host"))
    from full_checkpoints import build_checkpoint
    from sd15_checkpoint import write_taesd_decoder

    for seed, file in enumerate(m[3] for m in GPU_MODELS.values()):
        if not (models / "vae_approx" / file).is_file():
            write_taesd_decoder(models / "vae_approx" / file, seed=4 + seed)
    build_checkpoint(models / "checkpoints" / f"{args.build_model}.safetensors", args.build_model,
                     "cuda" if cuda else "cpu")


def host_version() -> str:
    text = (comfyui_path() / "comfyui_version.py")
    found = re.search(r"__version__\s*=\s*[\"']([^\"']+)", text.read_text()) if text.is_file() else None
    return found.group(1) if found else "unknown"


def gpu_table(args) -> None:
    import torch

    cuda = torch.cuda.is_available() and not args.cpu and not args.cpu_smoke
    smoke = args.smoke or args.cpu_smoke or not cuda
    if not cuda and not (args.smoke or args.cpu_smoke):
        print("No CUDA device here: running the CPU smoke test instead (the same code at tiny size, 64 px; its "
              "figures are not the GPU table).", flush=True)
    args.batch = args.batch or 1
    args.steps = args.steps or (SMOKE_STEPS if smoke else 30)
    args.repeat = args.repeat or 1
    args.threads = args.threads or (min(8, os.cpu_count() or 2) if cuda else 2)
    keys = [k.strip() for k in args.only.split(",") if k.strip()]
    unknown = [k for k in keys if k not in GPU_MODELS]
    if unknown:
        sys.exit(f"--only: unknown model {', '.join(unknown)}; use {', '.join(GPU_MODELS)}")
    cache = Path(args.cache)
    for name in ("checkpoints", "embeddings", "classifiers", "vae_approx"):
        (cache / name).mkdir(parents=True, exist_ok=True)
    if cuda:
        props = torch.cuda.get_device_properties(0)
        device = f"{props.name} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}"
    else:
        device = "CPU (smoke test: tiny models, figures mean nothing)"
    meta = {"device": device, "torch": torch.__version__, "comfyui": host_version(), "batch": args.batch,
            "steps": args.steps, "smoke": smoke, "cuda": cuda}
    print(f"device: {device}; torch {torch.__version__}; ComfyUI {meta['comfyui']} at {comfyui_path()}", flush=True)
    results: dict[str, dict] = {}
    for key in keys:
        label, full, tiny, taesd, res = GPU_MODELS[key]
        ckpt = tiny if smoke else full
        res = SMOKE_RES if smoke else res
        results[key] = {"label": f"{label} {res} px" + (" (tiny)" if smoke else ""), "rows": {}}
        path = cache / "checkpoints" / f"{ckpt}.safetensors"
        if not path.is_file() or not all((cache / "vae_approx" / m[3]).is_file() for m in GPU_MODELS.values()):
            print(f"... building {ckpt} in {cache}", file=sys.stderr, flush=True)
            proc = subprocess.run([sys.executable, __file__, "--build-model", ckpt, "--models", str(cache)]
                                  + ([] if cuda else ["--cpu"]), stderr=subprocess.PIPE, text=True)
            sys.stderr.write(proc.stderr[-3000:])
            if proc.returncode:
                oom = "out of memory" in proc.stderr.lower() or proc.returncode in (-9, 137)
                results[key]["error"] = "did not fit (building it)" if oom else "build failed"
                continue
        cmd = [sys.executable, __file__, "--models", str(cache), "--ckpt", path.name, "--taesd", taesd, "--res",
               str(res), "--batch", str(args.batch), "--steps", str(args.steps), "--threads", str(args.threads),
               "--mean-pick"] + ([] if cuda else ["--cpu"])
        names = [name for name, _ in GPU_ROWS]
        if smoke:  # one process for all of a model's rows, SDXL's cut to a cross-section (its text encoders are
            # full size, slow on a CPU): the same code, in a few minutes
            names = [n for n in names if n not in SMOKE_SKIP.get(key, ())]
            groups = [names]
            cmd += ["--no-warmup"]
        else:  # each setting in its own process: its peak memory is its own
            groups = [[name] for name in names]
        for group in groups:
            results[key]["rows"].update(run_settings(cmd, group, args.repeat))
            for name in group:
                print(f"... {results[key]['label']}, {name}: {json.dumps(results[key]['rows'][name])}",
                      file=sys.stderr, flush=True)
        for name in SMOKE_SKIP.get(key, ()) if smoke else ():
            results[key]["rows"][name] = {"error": "not run in the smoke test"}
    table = gpu_markdown(results, meta)
    print("\n" + table)
    if args.out:
        Path(args.out).write_text(table)
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=2))


def run_settings(cmd: list[str], names: list[str], repeat: int) -> dict[str, dict]:
    """Settings ``names`` measured in one process (``repeat`` times): per setting, the least figures over the
    repeats, or {"error": "did not fit" | "failed"}."""
    runs: dict[str, list[dict]] = {name: [] for name in names}
    errors: dict[str, str] = {}
    for _ in range(repeat):
        proc = subprocess.run(cmd + ["--one", "|".join(names)], capture_output=True, text=True)
        for line in proc.stdout.splitlines():
            if line.startswith("{"):
                result = json.loads(line)
                if "oom" in result:
                    print(f"{result['setting']}: {result['oom']}", file=sys.stderr)
                    errors[result["setting"]] = "did not fit"
                else:
                    runs[result["setting"]].append(result)
        if proc.returncode:
            killed = proc.returncode in (-9, 137) or is_oom_text(proc.stderr)
            if not killed:
                print(f"{'|'.join(names)}: failed (exit {proc.returncode})\n{proc.stderr[-3000:]}", file=sys.stderr)
            for name in names:  # the one that broke the process, and any after it
                if len(runs[name]) < repeat:
                    errors.setdefault(name, "did not fit" if killed else "failed")
            break
    out = {}
    for name in names:
        if name in errors or not runs[name]:
            out[name] = {"error": errors.get(name, "failed")}
            continue
        best = dict(runs[name][0])  # the least of each figure over the repeats (noise only adds)
        best["peak_mb"] = min(r["peak_mb"] for r in runs[name])
        best["seconds"] = {k: min(r["seconds"][k] for r in runs[name]) for k in best["seconds"]}
        out[name] = best
    return out


def is_oom_text(stderr: str) -> bool:
    tail = stderr[-4000:].lower()
    return "outofmemoryerror" in tail or "out of memory" in tail


def gpu_markdown(results: dict[str, dict], meta: dict) -> str:
    """The README's table: per model, the baseline and the four training settings; ratios to the baseline."""
    memory = "peak VRAM" if meta["cuda"] else "peak RSS over start"
    lines = [f"{meta['device']}; torch {meta['torch']}; ComfyUI {meta['comfyui']}. Random weights (full-size "
             f"models{', here tiny stand-ins' if meta['smoke'] else ''}), batch {meta['batch']}, "
             f"{meta['steps']} sampling steps (euler, normal, CFG 7.5), random resnet50 classifier.", "",
             f"| model | setting | {memory} GiB | memory x baseline | s / step | time x baseline |",
             "|---|---|---|---|---|---|"]
    picks = set()
    for model in results.values():
        rows = model["rows"]
        base = rows.get("KSampler + VAE Decode", {})
        for name, label in GPU_ROWS:
            r = rows.get(name) or {"error": model.get("error", "not run")}
            if "error" in r:
                lines.append(f"| {model['label']} | {label} | {r['error']} | - | - | - |")
                continue
            seconds = sum(r["seconds"].values())
            if SETTINGS[name]["op"] == "train":
                picks.add(r["no_grad_steps"])
            ok = "error" not in base and base
            mem_x = f"{r['peak_mb'] / base['peak_mb']:.2f}" if ok else "-"
            time_x = f"{seconds / sum(base['seconds'].values()):.2f}" if ok else "-"
            lines.append(f"| {model['label']} | {label} | {r['peak_mb'] / 1024:.2f} | {mem_x} | {seconds:.2f} | "
                         f"{time_x} |")
    unit = ("torch.cuda.max_memory_allocated over that run" if meta["cuda"]
            else "the process's peak RSS over that run less its RSS before loading")
    lines += ["", f"Each row in its own process, measured on its second run (the first warms up); memory: {unit}, "
              f"loaded weights included. Baseline: CLIP Text Encode x2 + KSampler + VAE Decode. "
              f"A training step (the balanced recipe's, gradient point x0) runs its trajectory without gradient "
              f"for {', '.join(map(str, sorted(picks))) or '-'} of {meta['steps']} steps (the recipe's mean "
              f"point), then one step, the decoder and the classifier with gradient, and the backward pass."]
    if meta["smoke"]:
        lines[-1] = lines[-1].replace("on its second run (the first warms up)", "on its only run (smoke: no "
                                      "warm-up)").replace("Each row in its own process", "Each model's rows in "
                                                          "one process (smoke)")
    return "\n".join(lines) + "\n"


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
