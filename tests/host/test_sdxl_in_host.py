"""SDXL in the real host: a random-weight checkpoint that 0.3.64's CheckpointLoaderSimple detects as SDXL (clip_l +
clip_g, pooled output, size conditioning; see sdxl_checkpoint.py), the Train node run for 2 steps at 64 px, the
token saved as clip_l + clip_g and used through ``embedding:`` in a stock CLIPTextEncode / KSampler, and the host
bit-identical afterwards.

Marked slow (the full 695 M-parameter clip_g is what the host demands): run with ``--run-slow`` or DCT_SLOW=1.
The checkpoint (1.9 GB) is built once and cached (sdxl_checkpoint.cached_sdxl_checkpoint, $DCT_TEST_CACHE).
"""

from __future__ import annotations

import ast
import logging

import pytest
import torch

from .test_nodes_in_host import _fingerprint, _node, _options_node_defaults, _run

pytestmark = pytest.mark.slow

NAME = "tiny_sdxl_random.safetensors"
TOKEN = "sdxl-host-token"
PROMPT = "a photo of tiger cat"
HOST_NEVER_LOADS = {"clip_l.logit_scale", "clip_l.transformer.text_projection.weight"}
SAMPLE = dict(steps=2, cfg=7.0, sampler_name="euler", scheduler="normal", size=64)


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def sdxl(host):
    """MODEL, CLIP, VAE of the cached SDXL-layout checkpoint as CheckpointLoaderSimple gives them, and what the
    host logged while loading it."""
    import nodes as host_nodes

    from .sdxl_checkpoint import cached_sdxl_checkpoint

    link = host["models"] / "checkpoints" / NAME
    if not link.exists():
        link.symlink_to(cached_sdxl_checkpoint(host["root"]))
    records, root = _Records(), logging.getLogger()
    root.addHandler(records)
    level = root.level
    root.setLevel(logging.DEBUG)
    try:
        with torch.inference_mode():
            model, clip, vae = host_nodes.CheckpointLoaderSimple().load_checkpoint(NAME)[:3]
    finally:
        root.removeHandler(records)
        root.setLevel(level)
    return model, clip, vae, records.messages


@pytest.fixture(scope="module")
def drawn(sdxl):
    """The prompt's and the empty prompt's conditioning (each clip_g encode costs seconds on CPU: both are reused),
    and the host tests' tiny random classifier calibrated on four images a stock KSampler draws with them (as
    test_nodes_in_host's classifier, on fewer prompts: images of random latents would not do, the classifier then
    saturates on what the model draws and gives no gradient)."""
    import nodes as host_nodes
    from dct_core.testing.tiny import tiny_classifier

    model, clip, vae, _ = sdxl
    neg, plain = _conditioning(clip, ""), _conditioning(clip, PROMPT)
    with torch.inference_mode():
        latent = host_nodes.EmptyLatentImage().generate(SAMPLE["size"], SAMPLE["size"], 4)[0]
        out = host_nodes.common_ksampler(model, 100, SAMPLE["steps"], SAMPLE["cfg"], SAMPLE["sampler_name"],
                                         SAMPLE["scheduler"], plain, neg, latent)[0]
        images = host_nodes.VAEDecode().decode(vae, out)[0].movedim(-1, 1).float().clone()
    return {"neg": neg, "plain": plain, "classifier": tiny_classifier(images, seed=0)}


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's raw bytes: NaN-safe (the host leaves clip_l's unused text_projection uninitialised in every
    SDXL checkpoint, so a plain torch.equal could see NaN != NaN) and exact (-0.0 is not 0.0)."""
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def _assert_bit_identical(before: dict, after: dict) -> None:
    assert before.keys() == after.keys()
    changed = [k for k in before if before[k].dtype != after[k].dtype or not torch.equal(_bits(before[k]),
                                                                                          _bits(after[k]))]
    assert not changed, f"host weights changed: {changed[:5]}"


def _conditioning(clip, text):
    import nodes as host_nodes

    with torch.inference_mode():
        return host_nodes.CLIPTextEncode().encode(clip, text)[0]


def _image(model, vae, pos, neg, seed=3):
    """A stock KSampler + VAEDecode at a fixed seed (each text encode costs seconds: conditionings are reused)."""
    import nodes as host_nodes

    with torch.inference_mode():
        latent = host_nodes.EmptyLatentImage().generate(SAMPLE["size"], SAMPLE["size"], 1)[0]
        out = host_nodes.common_ksampler(model, seed, SAMPLE["steps"], SAMPLE["cfg"], SAMPLE["sampler_name"],
                                         SAMPLE["scheduler"], pos, neg, latent)[0]
        return host_nodes.VAEDecode().decode(vae, out)[0].clone()


def test_the_checkpoint_is_detected_as_sdxl_with_both_text_encoders(host, sdxl):
    import comfy.latent_formats
    import comfy.model_base
    import comfy.sdxl_clip
    import comfy.supported_models

    model, clip, vae, logged = sdxl
    assert type(model.model.model_config) is comfy.supported_models.SDXL  # not a smaller SDXL-family variant
    assert type(model.model) is comfy.model_base.SDXL
    assert type(model.get_model_object("latent_format")) is comfy.latent_formats.SDXL
    assert isinstance(clip.cond_stage_model, comfy.sdxl_clip.SDXLClipModel)
    assert set(clip.tokenizer.__dict__) >= {"clip_l", "clip_g"}
    # every weight came from the file, but the two clip_l keys no SDXL checkpoint has (the host's own SDXL saving
    # drops them; its loader could not map them): clip_l's logit_scale and its unused text_projection
    missing = [m for m in logged if "missing" in m]
    assert all(m.startswith("clip missing: ") for m in missing), missing
    assert {k for m in missing for k in ast.literal_eval(m.removeprefix("clip missing: "))} <= HOST_NEVER_LOADS
    assert type(vae.first_stage_model).__name__ == "TAESD" and vae.latent_channels == 4
    # size conditioning: the UNet's adm vector is clip_g's pooled output plus six 256-wide size embeddings
    adm = model.model.encode_adm(pooled_output=torch.zeros(1, 1280), width=64, height=64)
    assert adm.shape == (1, 2816) and model.model.diffusion_model.label_emb[0][0].in_features == 2816


def test_sdxl_training_in_the_host_saves_both_encoders_changes_the_image_and_leaves_the_host_as_found(
        host, sdxl, drawn, monkeypatch):
    import comfy.clip_model
    import comfy.model_base
    from safetensors.torch import load_file

    model, clip, vae, _ = sdxl
    weights_before = _fingerprint(model, clip, vae)
    clip_forward = comfy.clip_model.CLIPLayer.forward
    neg, plain = drawn["neg"], drawn["plain"]
    assert plain[0][0].shape == (1, 77, 2048) and plain[0][1]["pooled_output"].shape == (1, 1280)
    plain_image = _image(model, vae, plain, neg)

    with torch.inference_mode():
        init = _node(host, "adapters.comfy_backend", "ComfyBackend")(model, clip, vae).init_vectors("a", 1)

    # threshold_window 3 > max_steps 2: the run takes its 2 steps whatever the random classifier says; keep "last"
    # without weight decay: the token saved is the one after the first update, moved by the gradient alone
    small = dict(resolution=SAMPLE["size"], sampling_steps=SAMPLE["steps"], batch_size=1, guidance=SAMPLE["cfg"],
                 templates="a photo of {token} {label}", threshold_window=3, keep="last", weight_decay=0.0)
    options = _run(_node(host, "training_options", "TrainingOptionsNode"),
                   **{**_options_node_defaults(host), **small}).result[0]
    adm_calls = []
    encode_adm = comfy.model_base.SDXL.encode_adm

    def spy(self, **kwargs):  # what reaches the UNet's y: clip_g's pooled output and the size conditioning
        adm_calls.append((kwargs.get("width"), kwargs.get("height"), tuple(kwargs["pooled_output"].shape)))
        return encode_adm(self, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(comfy.model_base.SDXL, "encode_adm", spy)
        out = _run(_node(host, "train_node", "TrainToken"), model=model, clip=clip, vae=vae,
                   classifier=drawn["classifier"], target_class="tiger cat", max_steps=2, save_name=TOKEN,
                   overwrite=True, recipe="balanced", options=options)
    assert adm_calls and set(adm_calls) == {(64, 64, (1, 1280))}, set(adm_calls)
    token, plot, grid = out.result
    assert token.widths() == {"clip_l": 768, "clip_g": 1280}
    for key in ("clip_l", "clip_g"):  # the gradient reached the token through both text encoders
        assert (token.vectors[key].float().cpu() - init[key].float().cpu()).abs().max() > 1e-3, key
    assert plot.shape[-1] == 3 and grid.shape[-1] == 3
    summary = out.ui.as_dict()["text"][0]
    assert "stopped by max_steps after 2 steps" in summary
    assert " resolution 64," in summary  # as set, not SDXL's native 1024

    saved = load_file(str(host["models"] / "embeddings" / f"{TOKEN}.safetensors"))
    assert saved["clip_l"].shape == (1, 768) and saved["clip_g"].shape == (1, 1280)
    assert all(torch.isfinite(saved[k]).all() for k in ("clip_l", "clip_g"))

    # embedding:<name> in a stock CLIPTextEncode reaches both encoders' halves of the conditioning and the pooled
    # output; a stock KSampler at the same seed then draws another image
    text = PROMPT.replace("tiger cat", f"embedding:{TOKEN} tiger cat")
    with torch.inference_mode():
        rows = clip.tokenize(text)  # the host's loader picks each encoder's own key from the file
    for row, key in (("l", "clip_l"), ("g", "clip_g")):
        spliced = [entry[0] for entry in rows[row][0] if not isinstance(entry[0], int)]
        assert len(spliced) == 1 and torch.equal(spliced[0].float(), saved[key][0].float()), key
    with_token = _conditioning(clip, text)
    assert with_token[0][0].shape == (1, 77, 2048)
    assert not torch.equal(with_token[0][0][..., :768], plain[0][0][..., :768])  # clip_l
    assert not torch.equal(with_token[0][0][..., 768:], plain[0][0][..., 768:])  # clip_g
    assert not torch.equal(with_token[0][1]["pooled_output"], plain[0][1]["pooled_output"])
    assert not torch.equal(_image(model, vae, with_token, neg), plain_image)

    # the host is exactly as before: every weight bit, the CLIP layer code, the tokenizers, what it encodes and draws
    _assert_bit_identical(weights_before, _fingerprint(model, clip, vae))
    assert comfy.clip_model.CLIPLayer.forward is clip_forward
    for sub in ("clip_l", "clip_g"):
        assert "_try_get_embedding" not in vars(getattr(clip.tokenizer, sub))
    plain_after = _conditioning(clip, PROMPT)
    assert torch.equal(plain_after[0][0], plain[0][0])
    assert torch.equal(_image(model, vae, plain_after, neg), plain_image)
