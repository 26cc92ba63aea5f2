"""The diffusers backend reproduces the pipeline's own sampling, so a token trained here means the same there."""

import pytest
import torch

from conftest import TINY_SAMPLING
from dct_core.diffusers_backend import DiffusersBackend
from dct_core.generation import generate_images
from dct_core.tiny import tiny_pipeline


@pytest.mark.parametrize("kind,prediction", [("sd1", "epsilon"), ("sd1", "v_prediction"), ("sdxl", "epsilon")])
def test_generation_matches_the_diffusers_pipeline(kind, prediction):
    pipe = tiny_pipeline(kind, prediction_type=prediction)
    backend = DiffusersBackend(pipe)
    prompt, seed = "a photo of a tiger cat", 7
    ours = generate_images(backend, [prompt], [seed], TINY_SAMPLING)
    traj = backend.start([seed], TINY_SAMPLING)
    kwargs = dict(height=32, width=32, num_inference_steps=TINY_SAMPLING.steps, guidance_scale=TINY_SAMPLING.guidance,
                  latents=traj.latents / traj.state["scheduler"].init_noise_sigma, output_type="pt")
    theirs = pipe(prompt, **kwargs).images
    torch.testing.assert_close(ours, theirs.float(), rtol=0, atol=2e-5)


def test_the_token_changes_the_conditioning_only_at_its_position_and_after():
    backend = DiffusersBackend(tiny_pipeline("sd1"))
    base = backend.encode(["a photo of {token} tiger cat"], {"clip_l": backend.init_vectors("a", 1)["clip_l"]})
    moved = backend.encode(["a photo of {token} tiger cat"], {"clip_l": torch.randn(1, 32)})
    diff = (base.hidden - moved.hidden).abs().sum(-1)[0]
    # causal text encoder: positions before the token (bos, a, photo, of) are unaffected
    assert diff[:4].max() == 0 and diff[4] > 0 and diff[5:].max() > 0
