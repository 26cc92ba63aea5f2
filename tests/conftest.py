import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(1)  # two 2-thread processes on 2 cores collapse throughput: tests run beside other jobs

from dct_core.backends.diffusers_backend import DiffusersBackend  # noqa: E402
from dct_core.config import SamplingConfig  # noqa: E402
from dct_core.method.generation import generate_images  # noqa: E402
from dct_core.testing.tiny import TINY_LABELS, tiny_classifier, tiny_pipeline  # noqa: E402

TINY_SAMPLING = SamplingConfig(resolution=32, sampling_steps=4, guidance=7.0)

SLOW_HOW = "slow test (minutes): run with --run-slow or DCT_SLOW=1"


def pytest_addoption(parser):
    # here, not in tests/host/conftest.py: a plain `pytest` from the root loads only this conftest before it
    # parses the command line
    parser.addoption("--run-slow", action="store_true", default=False,
                     help="also run the tests marked slow (or set DCT_SLOW=1)")


def pytest_configure(config):
    config.addinivalue_line("markers", f"slow: {SLOW_HOW}; skipped otherwise")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow") or os.environ.get("DCT_SLOW", "") not in ("", "0"):
        return
    skip = pytest.mark.skip(reason=SLOW_HOW)
    for item in items:
        if item.get_closest_marker("slow") is not None:
            item.add_marker(skip)


def calibrated_classifier(backend, seed: int = 0):
    prompts = [f"a photo of a {label.split(',')[0]}" for label in TINY_LABELS] * 2
    images = generate_images(backend, prompts, range(1000, 1000 + len(prompts)), TINY_SAMPLING)
    return tiny_classifier(images, seed=seed)


@pytest.fixture
def sd1_backend():
    return DiffusersBackend(tiny_pipeline("sd1"))


@pytest.fixture(scope="session")
def _sd1_world_built():
    """sd1_world built from scratch once (its calibration samples 20 images: ~2 s a test), with the global torch
    RNG state building it leaves behind."""
    backend = DiffusersBackend(tiny_pipeline("sd1"))
    world = backend, calibrated_classifier(backend)
    return world, torch.get_rng_state()


@pytest.fixture
def sd1_world(_sd1_world_built):
    """(backend, calibrated classifier): a deep copy per test, as built from scratch (weights, scheduler state,
    classifier) with the global torch RNG where building it leaves it; tests may change it freely. Its backend is
    its own, not the sd1_backend fixture's."""
    import copy

    world, rng_state = _sd1_world_built
    fresh = copy.deepcopy(world)
    torch.set_rng_state(rng_state)
    return fresh


def state_fingerprint(*modules):
    """Every parameter and buffer, cloned, with its requires_grad flag, plus each module's training flag."""
    out = {}
    for i, m in enumerate(modules):
        for name, t in list(m.named_parameters()) + list(m.named_buffers()):
            out[f"{i}.{name}"] = (t.detach().clone(), t.requires_grad)
        out[f"{i}.modes"] = [s.training for s in m.modules()]
    return out


def assert_same_state(before, after):
    assert before.keys() == after.keys()
    for key, value in before.items():
        if key.endswith(".modes"):
            assert value == after[key], f"training flags of {key} changed"
            continue
        tensor, flag = value
        assert torch.equal(tensor, after[key][0]), f"{key} changed"
        assert flag == after[key][1], f"requires_grad of {key} changed"


class EvilPickle:
    """Unpickling this creates ``marker``: a stand-in for a checkpoint that would run code when loaded."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def tiny_clip_model(layers: int = 2):
    """A random-weight transformers CLIPModel (width 32, the CLIP vocabulary, 32 px images), seeded with 0."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    tower = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=layers, num_attention_heads=4)
    config = CLIPConfig(text_config=dict(tower, vocab_size=49408, max_position_embeddings=77),
                        vision_config=dict(tower, image_size=32, patch_size=8), projection_dim=16)
    return CLIPModel(config).eval()
