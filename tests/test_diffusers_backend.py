"""The diffusers backend reproduces the pipeline's own sampling, so a token trained here means the same there."""

import pytest
import torch

from conftest import TINY_SAMPLING
from dct_core.backends.diffusers_backend import DiffusersBackend
from dct_core.method.generation import generate_images
from dct_core.testing.tiny import tiny_pipeline


@pytest.mark.parametrize("kind,prediction", [("sd1", "epsilon"), ("sd1", "v_prediction"), ("sdxl", "epsilon")])
def test_generation_matches_the_diffusers_pipeline(kind, prediction):
    pipe = tiny_pipeline(kind, prediction_type=prediction)
    backend = DiffusersBackend(pipe)
    prompt, seed = "a photo of a tiger cat", 7
    ours = generate_images(backend, [prompt], [seed], TINY_SAMPLING)
    traj = backend.start([seed], TINY_SAMPLING)
    kwargs = dict(height=32, width=32, num_inference_steps=TINY_SAMPLING.sampling_steps,
                  guidance_scale=TINY_SAMPLING.guidance,
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


@pytest.mark.parametrize("depth", [1, 2])
def test_memory_savers_leave_the_gradient_unchanged(depth):
    """Unconditional branch without autograd, block checkpointing in UNet and decoder: the same gradient."""
    backend = DiffusersBackend(tiny_pipeline("sd1"))
    backend.pipe.unet.requires_grad_(False), backend.pipe.vae.requires_grad_(False)
    backend.pipe.text_encoder.requires_grad_(False)
    with torch.no_grad():
        uncond = backend.negative("", 2)
    prompts = ["a {token} cat"] * 2
    flags_before = [(type(m), dict(vars(m))) for model in (backend.unet, backend.vae) for m in model.modules()]

    def grad(checkpoint: bool, force_batched_cfg: bool):
        vec = torch.nn.Parameter(backend.init_vectors("a", 1)["clip_l"].clone())
        traj = backend.start([0, 1], TINY_SAMPLING)
        with torch.no_grad():
            backend.denoise(traj, backend.encode(prompts, {"clip_l": vec}), uncond, traj.remaining - depth)
        if force_batched_cfg:  # latents that require grad take the one-call CFG path
            traj.latents = traj.latents.clone().requires_grad_(True)
        cond = backend.encode(prompts, {"clip_l": vec})
        latents = backend.denoise(traj, cond, uncond, depth, checkpoint=checkpoint)
        backend.decode(latents, checkpoint=checkpoint).square().mean().backward()
        return vec.grad

    reference = grad(False, True)
    assert reference.abs().sum() > 0
    torch.testing.assert_close(grad(False, False), reference, rtol=1e-4, atol=1e-9)
    torch.testing.assert_close(grad(True, False), reference, rtol=1e-4, atol=1e-9)
    flags_after = [(type(m), dict(vars(m))) for model in (backend.unet, backend.vae) for m in model.modules()]
    assert flags_after == flags_before  # every checkpointing switch and function restored


@pytest.mark.parametrize("kind", ["sd1", "sdxl"])
def test_the_negative_prompt_is_encoded_once_per_run(kind, monkeypatch):
    """A training asks for the negative at every micro-batch size and preview: one text-encoder pass per prompt,
    the same values as encoding the batch (SDXL's pooled embedding included)."""
    backend = DiffusersBackend(tiny_pipeline(kind))
    expected = backend.encode(["blurry"] * 3, None)
    calls = []
    real = backend.encode
    monkeypatch.setattr(backend, "encode", lambda prompts, vectors: calls.append(prompts) or real(prompts, vectors))
    for batch in (3, 1, 3):
        got = backend.negative("blurry", batch)
        assert got.hidden.shape[0] == batch and not got.hidden.requires_grad
        torch.testing.assert_close(got.hidden, expected.hidden[:batch], rtol=0, atol=0)
        if kind == "sdxl":
            torch.testing.assert_close(got.pooled, expected.pooled[:batch], rtol=0, atol=1e-5)  # matmul batching
    backend.negative("", 2)
    assert calls == [["blurry"], [""]]
