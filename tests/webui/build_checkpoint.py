"""Write a random-weight SD1.5-layout checkpoint that Forge Classic detects as SD15 and loads.

Run it with the webui's own Python (not the repository's venv): it builds every part with the webui's
``ldm_patched`` modules and checks the result with the webui's own detection and loader::

    WEBUI_PATH=~/forge/classic ~/forge/venv/bin/python tests/webui/build_checkpoint.py OUT.safetensors

What it holds (an original SD1 checkpoint's key layout):
- ``model.diffusion_model.*``: a UNet with model_channels 320 and context_dim 768 (what ``SD15.matches``
  asks for) but one resolution level, one res block with one transformer block, and ONE middle res block
  (no middle transformer): the smallest UNet Classic's detection still calls SD15.
- ``cond_stage_model.transformer.text_model.*``: the full CLIP-L text encoder, from the webui's bundled
  ``ldm_patched/modules/sd1_clip_config.json``.
- ``first_stage_model.*``: a TAESD-layout VAE (``taesd_encoder`` / ``taesd_decoder``). Classic's ``VAE`` picks
  the architecture from the keys and its ldm ``AutoencoderKL`` has a fixed 84M-parameter config, so TAESD is
  the only small VAE it loads.

Floats are stored in fp16 (about 283 MB). Deterministic: the same webui and torch give the same bytes.
Exit status 0 only after the checks pass; it prints one JSON line with what detection said.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import time
from pathlib import Path

SEED = 20240601
PROBE_KEYS = ("unet missing:", "unet unexpected:", "left over keys:", "Missing VAE keys", "Leftover VAE keys")


def webui_path() -> Path:
    path = Path(os.environ.get("WEBUI_PATH", "~/forge/classic")).expanduser().resolve()
    if not (path / "ldm_patched").is_dir():
        sys.exit(f"no webui at {path} (set WEBUI_PATH to Forge Classic's folder)")
    return path


def import_webui(path: Path):
    # the webui's modules parse sys.argv when imported (modules.shared -> cmd_args): hide ours
    sys.argv = [sys.argv[0]]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    sys.path.insert(0, str(path))
    os.chdir(path)
    from ldm_patched.modules import args_parser

    args_parser.args.always_cpu = True  # before model_management is imported anywhere


def init_unet(module) -> None:
    """ldm_patched's ops skip weight init (weights are torch.empty): initialise like torch's own layers,
    including the zero_module()-ed output layers, so conditioning reaches the output and gradients flow."""
    import torch

    for p in module.parameters():
        p.data.fill_(float("nan"))
    for m in module.modules():
        for base in (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.GroupNorm, torch.nn.LayerNorm):
            if isinstance(m, base):
                base.reset_parameters(m)
                break
    bad = [name for name, p in module.named_parameters() if torch.isnan(p).any()]
    if bad:
        raise RuntimeError(f"UNet parameters left uninitialised: {bad[:5]}")


def build_state_dict() -> dict:
    import ldm_patched.taesd.taesd
    import torch
    from ldm_patched.ldm.modules.diffusionmodules.openaimodel import UNetModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(SEED)
    unet = UNetModel(
        image_size=32,
        in_channels=4,
        out_channels=4,
        model_channels=320,
        num_res_blocks=[1],
        channel_mult=[1],
        transformer_depth=[1],
        transformer_depth_output=[1, 1],
        transformer_depth_middle=-1,  # middle block: one res block, no transformer
        context_dim=768,
        num_heads=8,
        num_head_channels=-1,
        use_linear_in_transformer=False,
        use_spatial_transformer=True,
        legacy=False,
        adm_in_channels=None,
        use_checkpoint=False,
        dtype=torch.float32,
        device="cpu",
    )
    init_unet(unet)

    torch.manual_seed(SEED + 1)
    config = CLIPTextConfig.from_json_file(str(Path("ldm_patched/modules/sd1_clip_config.json").resolve()))
    text = CLIPTextModel(config)

    torch.manual_seed(SEED + 2)
    taesd = ldm_patched.taesd.taesd.TAESD()

    sd = {}
    for prefix, module in (
        ("model.diffusion_model.", unet),
        ("cond_stage_model.transformer.", text),
        ("first_stage_model.", taesd),
    ):
        for key, tensor in module.state_dict().items():
            tensor = tensor.detach()
            if tensor.is_floating_point():
                tensor = tensor.to(torch.float16)
            sd[prefix + key] = tensor.contiguous().clone()
    return sd


def verify(path: Path) -> dict:
    import ldm_patched.modules.sd
    import safetensors.torch
    import torch
    from ldm_patched.modules import model_detection, model_management

    sd = safetensors.torch.load_file(str(path))
    unet_config = model_detection.detect_unet_config(sd, "model.diffusion_model.", torch.float32)
    model_config = model_detection.model_config_from_unet(sd, "model.diffusion_model.", torch.float32)
    if model_config is None or type(model_config).__name__ != "SD15":
        raise RuntimeError(f"detected as {type(model_config).__name__}, not SD15: {unet_config}")

    # the UNet keys, checked directly: none missing, none unexpected
    model = model_config.get_model(sd, "model.diffusion_model.", device="cpu")
    unet_sd = {k[len("model.diffusion_model."):]: v for k, v in sd.items() if k.startswith("model.diffusion_model.")}
    missing, unexpected = model.diffusion_model.load_state_dict(unet_sd, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"UNet keys: missing {missing[:5]}, unexpected {unexpected[:5]}")

    # the whole loader, as the webui calls it; it reports problems by printing
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        patcher, clip, vae, _ = ldm_patched.modules.sd.load_checkpoint_guess_config(str(path))
    problems = [line for line in printed.getvalue().splitlines() if line.startswith(PROBE_KEYS)]
    # SDClipModel adds text_projection and logit_scale, which no SD1 checkpoint has: "extra {...}" is expected
    if problems:
        raise RuntimeError("loader reported: " + " | ".join(problems))

    # one UNet step, one text encode, one decode: finite
    with torch.no_grad():
        tokens = clip.tokenize("a photo of a cat")
        cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
        x = torch.randn(1, 4, 8, 8)
        sigma = torch.tensor([1.0])
        out = patcher.model.apply_model(x, sigma, c_crossattn=cond)
        image = vae.decode(out)
    for name, t in (("cond", cond), ("unet", out), ("image", image)):
        if not torch.isfinite(t).all():
            raise RuntimeError(f"{name} output is not finite")
    return {
        "detected": type(model_config).__name__,
        "vae": type(vae.first_stage_model).__name__,
        "unet_config": {k: unet_config[k] for k in ("model_channels", "context_dim", "num_res_blocks",
                                                    "channel_mult", "transformer_depth",
                                                    "transformer_depth_output", "transformer_depth_middle")},
        "unet_params": sum(p.numel() for p in model.diffusion_model.parameters()),
        "cpu": model_management.get_torch_device().type,
        "cond_shape": list(cond.shape),
        "image_shape": list(image.shape),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the .safetensors file to write")
    parser.add_argument("--no-verify", action="store_true", help="skip the load check")
    opts = parser.parse_args()
    out = opts.out.expanduser().resolve()

    start = time.monotonic()
    import_webui(webui_path())
    import safetensors.torch
    import torch

    torch.set_num_threads(min(2, torch.get_num_threads()))
    sd = build_state_dict()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.stem}.tmp{os.getpid()}.safetensors")  # the loader goes by the suffix
    # one metadata entry: safetensors writes several in a random order, and the file's bytes would differ
    safetensors.torch.save_file(sd, str(tmp), metadata={"format": "pt"})
    del sd
    built = time.monotonic() - start
    try:
        report = {} if opts.no_verify else verify(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, out)
    report.update(path=str(out), bytes=out.stat().st_size, build_s=round(built, 1),
                  total_s=round(time.monotonic() - start, 1))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
