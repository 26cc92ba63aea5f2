"""Random-weight checkpoints of full-size SD1.5 and SDXL, built from the host's own model classes (no download).

``bench/host_step.py --gpu-table`` builds them at run time on the measuring machine (files of 2 and 7 GB cannot
travel with the repo). Each is written as one fp16 safetensors file that ``CheckpointLoaderSimple`` loads as it
loads a real one:

- ``sd15``: SD1.5's UNet exactly as the host detects a real SD1.5 checkpoint (860 M parameters, full depth), full
  CLIP-L, the SD KL VAE;
- ``sdxl``: SDXL base's UNet as the host detects it (2.6 G parameters), full CLIP-L and CLIP-G (bigG), the KL VAE;
- ``sd15-tiny`` / ``sdxl-tiny``: the same code at small size for the CPU smoke test: tests/host's one-level
  SD1.5 UNet, and a three-level, 320-wide SDXL-family UNet the host detects as KOALA-700M (an SDXL subclass: same
  model class, latent format and CLIP-L + CLIP-G encoders, which stay full size since the host builds them from
  its own config).

Before writing, the state dict is checked the way the loader will read it: the host's model detection must pick
the intended model config (exactly ``comfy.supported_models.SD15`` / ``SDXL`` for the full ones) with the UNet
config it was built from, and the loader's CLIP key mapping must give back every text-encoder weight.

Alone: ``python bench/full_checkpoints.py sdxl /tmp/sdxl.safetensors`` (the host at $COMFYUI_PATH or
~/comfy/ComfyUI).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

# comfy.model_detection's own dicts for the real checkpoints (unet_config_from_diffusers_unet), less "dtype".
SD15_UNET = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
    "adm_in_channels": None, "in_channels": 4, "model_channels": 320, "num_res_blocks": [2, 2, 2, 2],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "channel_mult": [1, 2, 4, 4], "transformer_depth_middle": 1,
    "use_linear_in_transformer": False, "context_dim": 768, "num_heads": 8,
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "use_temporal_attention": False, "use_temporal_resblock": False,
}
SDXL_UNET = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
    "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4, "model_channels": 320,
    "num_res_blocks": [2, 2, 2], "transformer_depth": [0, 0, 2, 2, 10, 10], "channel_mult": [1, 2, 4],
    "transformer_depth_middle": 10, "use_linear_in_transformer": True, "context_dim": 2048, "num_head_channels": 64,
    "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
    "use_temporal_attention": False, "use_temporal_resblock": False,
}
# The smallest UNet the host still files under SDXL's family: KOALA-700M's transformer depths, every level 320 wide,
# no middle block (106 M parameters).
SDXL_TINY_UNET = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
    "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4, "model_channels": 320,
    "num_res_blocks": [1, 1, 1], "transformer_depth": [0, 2, 5], "channel_mult": [1, 1, 1],
    "transformer_depth_middle": -2, "use_linear_in_transformer": True, "context_dim": 2048, "num_head_channels": 64,
    "transformer_depth_output": [0, 0, 2, 2, 5, 5],
    "use_temporal_attention": False, "use_temporal_resblock": False,
}

# name -> (host model config class, UNet config (None: tests/host's tiny SD1.5 one), detected class must be exact)
MODELS: dict[str, tuple[str, dict | None, bool]] = {
    "sd15": ("SD15", SD15_UNET, True),
    "sdxl": ("SDXL", SDXL_UNET, True),
    "sd15-tiny": ("SD15", None, True),
    "sdxl-tiny": ("SDXL", SDXL_TINY_UNET, False),
}


def _host_helpers():
    sys.path.insert(0, str(ROOT / "tests" / "host"))
    import sd15_checkpoint

    return sd15_checkpoint


def check_state_dict(sd: dict[str, torch.Tensor], config, exact: bool, clip_keys: set[str]) -> str:
    """What the host's loader will make of ``sd``: the detected model config's name; raises if it is not the
    intended one, its UNet config differs from the built one, or CLIP weights would be missing."""
    import comfy.model_detection

    detected = comfy.model_detection.model_config_from_unet(sd, "model.diffusion_model.")
    wanted = type(config)
    if detected is None or not (type(detected) is wanted if exact else isinstance(detected, wanted)):
        raise RuntimeError(f"the host detects {type(detected).__name__ if detected else 'nothing'}, "
                           f"not {wanted.__name__}")
    differ = {k: (v, detected.unet_config.get(k)) for k, v in config.unet_config.items()
              if k != "dtype" and detected.unet_config.get(k) != v}
    if differ:
        raise RuntimeError(f"the host detects another UNet config: {differ}")
    loaded = set(detected.process_clip_state_dict(dict(sd)))
    # the host's own saver drops these (SDXL's CLIP-L projection is unused): real checkpoints lack them too
    dropped = ("position_ids", "logit_scale", "clip_l.transformer.text_projection.weight")
    missing = sorted(k for k in clip_keys - loaded if not k.endswith(dropped))
    if missing:
        raise RuntimeError(f"the loader would miss {len(missing)} CLIP weights, e.g. {missing[:3]}")
    return type(detected).__name__


def build_checkpoint(path: Path, name: str, device: str = "cpu") -> Path:
    """Write random checkpoint ``name`` (a key of MODELS) to ``path`` as fp16 safetensors, built on ``device``
    (a GPU builds SDXL in seconds; on a CPU it takes minutes)."""
    import comfy.supported_models
    import comfy.utils

    helpers = _host_helpers()
    cls_name, unet, exact = MODELS[name]
    started = time.perf_counter()
    config = getattr(comfy.supported_models, cls_name)(dict(unet or helpers.TINY_UNET))
    config.set_inference_dtype(torch.float16, None)  # built in fp16 straight away: half the memory
    dev = torch.device(device)
    base = config.get_model({}, "", device=dev)
    helpers.random_init_(base.diffusion_model, 0)
    clip = config.clip_target().clip(device=dev, dtype=torch.float16)
    helpers.random_init_(clip, 1)
    clip_keys = set(clip.state_dict())  # before saving renames them (in place)
    sd = base.state_dict_for_saving(clip.state_dict(), helpers.kl_vae_state_dict())
    sd = {k: (v.to(torch.int64) if k.endswith("position_ids") else v.detach().half()).cpu().contiguous()
          for k, v in sd.items()}
    detected = check_state_dict(sd, config, exact, clip_keys)
    del base, clip
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    comfy.utils.save_torch_file(sd, str(tmp))
    tmp.replace(path)
    unet_params = sum(v.numel() for k, v in sd.items() if k.startswith("model.diffusion_model."))
    clip_params = sum(v.numel() for k, v in sd.items() if k.startswith(("cond_stage_model.", "conditioner.")))
    print(f"{name}: {path.stat().st_size / 2**30:.2f} GiB, detected as {detected}, UNet {unet_params / 1e6:.0f} M, "
          f"text encoders {clip_params / 1e6:.0f} M parameters, built in {time.perf_counter() - started:.0f} s",
          file=sys.stderr, flush=True)
    return path


def main() -> None:
    if len(sys.argv) != 3 or sys.argv[1] not in MODELS:
        sys.exit(f"usage: python {Path(__file__).name} {{{'|'.join(MODELS)}}} OUT.safetensors")
    sys.path.insert(0, str(ROOT / "bench"))
    from host_step import comfyui_path, stand_in_unused_host_imports

    sys.path.insert(0, str(comfyui_path()))
    stand_in_unused_host_imports()
    import comfy.cli_args

    comfy.cli_args.args.cpu = not torch.cuda.is_available()
    build_checkpoint(Path(sys.argv[2]), sys.argv[1], "cuda" if torch.cuda.is_available() else "cpu")


if __name__ == "__main__":
    main()
