"""Tests against a real ComfyUI: found through $COMFYUI_PATH, else ~/comfy/ComfyUI (comfy-cli's default).

Skipped, with the reason printed, when no host is found or its requirements are not installed. The host's
code is never copied into this repository; a random-weight SD1.5-layout checkpoint (full SD1.5 widths, as
the host's model detection demands, everything else shrunk; TAESD-layout VAE) is built here from the
host's own modules.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
PACK_NAME = "dct_pack"


def comfyui_path() -> Path | None:
    for candidate in (os.environ.get("COMFYUI_PATH"), str(Path.home() / "comfy" / "ComfyUI")):
        if candidate and (Path(candidate) / "comfy" / "sd.py").is_file():
            return Path(candidate)
    return None


def _skip_reason() -> str | None:
    path = comfyui_path()
    if path is None:
        return "ComfyUI host not found (set COMFYUI_PATH or put it at ~/comfy/ComfyUI): host tests skipped"
    missing = [m for m in ("einops", "torchsde", "aiohttp", "spandrel", "kornia", "av", "yaml")
               if importlib.util.find_spec(m) is None]
    if missing:
        return (f"ComfyUI at {path} found but its requirements are missing ({', '.join(missing)}); "
                f"pip install -r {path}/requirements.txt: host tests skipped")
    return None


def pytest_collection_modifyitems(config, items):
    reason = _skip_reason()
    if reason is None:
        return
    marker = pytest.mark.skip(reason=reason)
    for item in items:
        if Path(str(item.fspath)).is_relative_to(Path(__file__).parent):
            item.add_marker(marker)


def pytest_report_header(config):
    return _skip_reason() or f"ComfyUI host: {comfyui_path()}"


@pytest.fixture(scope="session")
def host(tmp_path_factory):
    """The host imported in-process (CPU), with model folders in a temp dir, and this pack loaded as the
    host loads a custom node (a package named after its folder)."""
    root = comfyui_path()
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    import comfy.cli_args

    comfy.cli_args.args.cpu = True  # before comfy.model_management is imported
    import comfy.model_management  # noqa: F401
    import folder_paths

    models = tmp_path_factory.mktemp("models")
    for name in ("checkpoints", "embeddings", "classifiers", "vae_approx"):
        (models / name).mkdir()
        exts = folder_paths.folder_names_and_paths.get(name, ([], set()))[1]
        folder_paths.folder_names_and_paths[name] = ([str(models / name)], exts)
    spec = importlib.util.spec_from_file_location(PACK_NAME, REPO / "__init__.py",
                                                  submodule_search_locations=[str(REPO)])
    pack = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = pack
    spec.loader.exec_module(pack)
    pack.comfy_entrypoint()  # registers the classifiers folder like the host does
    return {"root": root, "models": models, "pack": pack}


def _random_init_(module: torch.nn.Module, seed: int) -> None:
    """The host's ops skip weight init; use torch's own reset_parameters everywhere (seeded)."""
    torch.manual_seed(seed)
    covered = set()
    for m in module.modules():
        for cls in type(m).__mro__:
            if cls.__module__.startswith("torch.nn") and "reset_parameters" in cls.__dict__:
                cls.reset_parameters(m)
                covered.update(id(p) for p in m.parameters(recurse=False))
                break
    with torch.no_grad():
        for p in module.parameters():
            if id(p) not in covered and p.ndim:
                p.normal_(0.0, 0.02)


@pytest.fixture(scope="session")
def sd15_checkpoint(host) -> Path:
    """A ~280 MB random-weight checkpoint the host detects as SD1.5."""
    import comfy.supported_models
    import comfy.taesd.taesd
    import comfy.utils

    unet_config = {
        "use_checkpoint": False, "image_size": 32, "use_spatial_transformer": True, "legacy": False,
        "adm_in_channels": None, "in_channels": 4, "out_channels": 4, "model_channels": 320,
        "num_res_blocks": [1], "transformer_depth": [1], "transformer_depth_output": [1, 1], "channel_mult": [1],
        "transformer_depth_middle": -2, "use_linear_in_transformer": False, "context_dim": 768,
        "use_temporal_resblock": False, "use_temporal_attention": False,
    }
    config = comfy.supported_models.SD15(unet_config)
    config.set_inference_dtype(torch.float32, None)
    base = config.get_model({}, "", device=torch.device("cpu"))
    _random_init_(base.diffusion_model, 0)
    clip = config.clip_target().clip(device="cpu", dtype=torch.float32)
    _random_init_(clip, 1)
    taesd = comfy.taesd.taesd.TAESD(latent_channels=4)
    _random_init_(taesd, 2)
    vae_sd = taesd.state_dict()
    vae_sd["vae_scale"], vae_sd["vae_shift"] = torch.tensor(0.18215), torch.tensor(0.0)
    sd = base.state_dict_for_saving(clip.state_dict(), vae_sd)
    sd = {k: (v.to(torch.int64) if k.endswith("position_ids") else v.detach().half()).contiguous()
          for k, v in sd.items()}
    path = host["models"] / "checkpoints" / "tiny_sd15_random.safetensors"
    comfy.utils.save_torch_file(sd, str(path))
    return path


@pytest.fixture(scope="session")
def loaded(host, sd15_checkpoint):
    """MODEL, CLIP, VAE as CheckpointLoaderSimple gives them (loaded under inference mode)."""
    import nodes as host_nodes

    with torch.inference_mode():
        model, clip, vae = host_nodes.CheckpointLoaderSimple().load_checkpoint(sd15_checkpoint.name)[:3]
    return model, clip, vae


@pytest.fixture(scope="session")
def server(host, sd15_checkpoint, tmp_path_factory):
    """The real ComfyUI server with this pack, the tiny checkpoint and a tiny timm classifier."""
    import timm
    from safetensors.torch import save_file

    from dct_core.tiny import TINY_LABELS

    from .server import ComfyServer

    srv = ComfyServer(host["root"], tmp_path_factory.mktemp("comfy-base"))
    (srv.models / "checkpoints" / sd15_checkpoint.name).symlink_to(sd15_checkpoint)
    torch.manual_seed(0)
    clf = timm.create_model("test_resnet", pretrained=False, num_classes=len(TINY_LABELS), zero_init_last=False)
    save_file(clf.state_dict(), str(srv.models / "classifiers" / "tiny-resnet.safetensors"))
    (srv.models / "classifiers" / "tiny-labels.txt").write_text("\n".join(TINY_LABELS) + "\n")
    srv.start()
    yield srv
    srv.stop()
