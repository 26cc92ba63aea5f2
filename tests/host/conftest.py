"""Tests against a real ComfyUI: found through $COMFYUI_PATH, else ~/comfy/ComfyUI (comfy-cli's default).

Skipped, with the reason printed, when no host is found or its requirements are not installed. The host's
code is never copied into this repository; a random-weight SD1.5-layout checkpoint (full SD1.5 widths, as
the host's model detection demands, everything else shrunk; TAESD-layout VAE) is built here from the
host's own modules. An SDXL-layout one (sdxl_checkpoint.py, 1.9 GB: the host demands the full clip_g) is built
once into a cache for the slow tests/host/test_sdxl_in_host.py.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

from .sd15_checkpoint import random_init_ as _random_init_  # noqa: F401  (tests import it from here)

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


@pytest.fixture(scope="session")
def sd15_checkpoint(host) -> Path:
    """A ~280 MB random-weight checkpoint the host detects as SD1.5, linked into the models folder from the test
    cache (sdxl_checkpoint.cached_build), where it is built first when missing. The build is seeded, so a cached file
    is the one a build would write; the key changes with sd15_checkpoint.py, the host version and torch."""
    import hashlib

    from . import sd15_checkpoint as builder
    from .sdxl_checkpoint import cached_build

    version = host["root"] / "comfyui_version.py"
    blob = Path(builder.__file__).read_bytes() + (version.read_bytes() if version.is_file() else b"")
    key = hashlib.sha256(blob + torch.__version__.encode()).hexdigest()[:16]
    cached = cached_build("tiny_sd15_random", key, builder.build_sd15_checkpoint)
    link = host["models"] / "checkpoints" / "tiny_sd15_random.safetensors"
    link.symlink_to(cached)
    return link


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

    from dct_core.testing.tiny import TINY_LABELS

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


@pytest.fixture(scope="session")
def classifier(host, loaded):
    """A tiny random classifier calibrated on images the host model draws (see dct_core.testing.tiny)."""
    import importlib

    from dct_core.config import SamplingConfig
    from dct_core.method.generation import generate_images
    from dct_core.testing.tiny import TINY_LABELS, tiny_classifier

    backend_cls = importlib.import_module(f"{PACK_NAME}.nodes.adapters.comfy_backend").ComfyBackend
    autograd = importlib.import_module(f"{PACK_NAME}.nodes.adapters.autograd").autograd_enabled
    model, clip, vae = loaded
    with torch.inference_mode(), autograd():
        backend = backend_cls(model, clip, vae)
        prompts = [f"a photo of a {label.split(',')[0]}" for label in TINY_LABELS]
        images = generate_images(backend, prompts, range(100, 100 + len(prompts)),
                                 SamplingConfig(resolution=64, sampling_steps=3, guidance=7.0))
    return tiny_classifier(images, seed=0)
