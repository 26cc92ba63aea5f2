"""Dynamic VRAM (2026 cores on NVIDIA, by default): every branch of nodes/adapters/static_models.py, on fakes shaped
like the newest core classes (a patcher whose ``is_dynamic()`` is True, ``get_non_dynamic_delegate()`` that reloads
or raises, ``CLIP.clone(disable_dynamic=...)`` whose static clone holds a freshly loaded encoder while its
``cond_stage_model`` is still the dynamic one), built over the real 0.3.64 host's loaded models. No test here can
reach a real dynamic host: dynamic VRAM never engages on a CPU."""

from __future__ import annotations

import copy

import pytest
import torch

from dct_core.formats.tokens import load_class_token

from .test_nodes_in_host import _node, _run, _train_inputs

GGUF_ERROR = "Cannot create non-dynamic delegate: cached_patcher_init is not initialized."


def _static_models(host):
    return _node(host, "adapters.static_models", "is_dynamic").__globals__


def _mark_dynamic(patcher):
    patcher.is_dynamic = lambda: True  # ModelPatcherDynamic.is_dynamic(); 0.3.64's ModelPatcher has no such method
    return patcher


def dynamic_model(model, delegate=None, error: str | None = None):
    """A MODEL as a 2026 host loads it: dynamic; its delegate reloads a static copy (``delegate``) or raises."""
    fake = _mark_dynamic(model.clone())
    asked = []

    def get_non_dynamic_delegate():
        asked.append(1)
        if error is not None:
            raise RuntimeError(error)
        return delegate

    fake.get_non_dynamic_delegate = get_non_dynamic_delegate
    fake.asked = asked
    return fake


class _DynamicEncoder(torch.nn.Module):
    """What a 0.38 static CLIP clone still holds as cond_stage_model: the dynamic encoder (never to be run)."""

    def forward(self, *args, **kwargs):
        raise AssertionError("encoded with the dynamic text encoder")


def dynamic_clip(clip, clone_takes_flag: bool = True, error: str | None = None):
    """A CLIP as a 2026 host loads it: its patcher dynamic; ``clone(disable_dynamic=True)`` as in core 0.38 (a
    static patcher over a freshly loaded encoder, here the real one, while cond_stage_model is the dynamic one)."""
    base = type(clip)
    calls: list = []

    class NewerClip(base):
        def clone(self, disable_dynamic=False):
            calls.append(disable_dynamic)
            if error is not None:
                raise RuntimeError(error)
            n = base.clone(self)
            n.__class__ = NewerClip
            if disable_dynamic:
                n.patcher = clip.patcher.clone()  # static, over the "reloaded" encoder
                n.cond_stage_model = _DynamicEncoder()
            else:
                n.patcher = _mark_dynamic(clip.patcher.clone())
            return n

    class OlderClip(base):  # a host whose CLIP.clone has no such flag
        def clone(self):
            return base.clone(self)

    fake = copy.copy(clip)
    fake.__class__ = NewerClip if clone_takes_flag else OlderClip
    fake.patcher = _mark_dynamic(clip.patcher.clone())
    fake.calls = calls
    return fake


def dynamic_vae(vae):
    fake = copy.copy(vae)
    fake.patcher = _mark_dynamic(vae.patcher.clone())
    return fake


@pytest.fixture(scope="module")
def taesd_installed(host):
    import comfy.taesd.taesd
    from safetensors.torch import save_file

    from .conftest import _random_init_

    path = host["models"] / "vae_approx" / "taesd_decoder.safetensors"
    if not path.exists():
        decoder = comfy.taesd.taesd.TAESD(latent_channels=4).taesd_decoder
        _random_init_(decoder, 5)
        save_file({k: v.contiguous() for k, v in decoder.state_dict().items()}, str(path))
    return path.name


def test_a_dynamic_model_gives_its_static_delegate_and_a_loader_without_one_is_one_line(host, loaded):
    sm = _static_models(host)
    model, _, _ = loaded
    assert sm["static_model"](model) is model  # 0.3.64: nothing is dynamic
    fake = dynamic_model(model, delegate=model)
    assert sm["static_model"](fake) is model and fake.asked == [1]
    for broken in (dynamic_model(model, error=GGUF_ERROR), dynamic_model(model, delegate=None),
                   dynamic_model(model, delegate=dynamic_model(model))):
        with pytest.raises(sm["host"].HostMismatch) as err:
            sm["static_model"](broken)
        text = str(err.value)
        assert "\n" not in text and "--disable-dynamic-vram" in text and "dynamic VRAM" in text
    with pytest.raises(sm["host"].HostMismatch, match="cached_patcher_init is not initialized.*GGUF"):
        sm["static_model"](dynamic_model(model, error=GGUF_ERROR))


def test_a_dynamic_text_encoder_is_cloned_static_and_encodes_with_the_static_copy(host, loaded):
    sm = _static_models(host)
    _, clip, _ = loaded
    assert sm["static_clip"](clip) is clip
    fake = dynamic_clip(clip)
    static = sm["static_clip"](fake)
    assert fake.calls == [True] and not sm["is_dynamic"](static.patcher)
    assert static.cond_stage_model is clip.cond_stage_model  # the static patcher's encoder, not the dynamic one
    assert isinstance(fake.cond_stage_model, torch.nn.Module) and fake.cond_stage_model is clip.cond_stage_model
    for refused, match in ((dynamic_clip(clip, clone_takes_flag=False), "CLIP.clone cannot make a static copy"),
                           (dynamic_clip(clip, error=GGUF_ERROR), "cached_patcher_init")):
        with pytest.raises(sm["host"].HostMismatch, match=match) as err:
            sm["static_clip"](refused)
        assert "--disable-dynamic-vram" in str(err.value) and "\n" not in str(err.value)


def test_a_dynamic_vae_gives_way_to_an_installed_taesd_or_both_ways_out_are_named(host, loaded):
    sm = _static_models(host)
    model, _, vae = loaded
    assert sm["taesd_in_place_of"](vae, model, ["taesd_decoder.safetensors"]) is None  # static: the VAE itself
    fake = dynamic_vae(vae)
    installed = ["taef1_decoder.pth", "sub/taesd_decoder.safetensors", "taesdxl_decoder.safetensors"]
    assert sm["taesd_in_place_of"](fake, model, installed) == "sub/taesd_decoder.safetensors"  # SD1.5's own
    with pytest.raises(sm["host"].HostMismatch) as err:
        sm["taesd_in_place_of"](fake, model, ["taesdxl_decoder.safetensors"])
    text = str(err.value)
    assert "taesd_decoder.safetensors" in text and "models/vae_approx" in text and "--disable-dynamic-vram" in text
    backend_cls = _node(host, "adapters.comfy_backend", "ComfyBackend")
    with pytest.raises(sm["host"].HostMismatch, match="VAE"):
        backend_cls(model, loaded[1], fake)  # the backend never takes a gradient through a dynamic VAE


def test_a_dynamic_vram_host_trains_without_a_restart_flag(host, loaded, classifier, taesd_installed):
    """MODEL through its delegate, text encoder through clone(disable_dynamic=True), the training signal from the
    installed TAESD in place of the dynamic VAE (said in the output); the user's objects are left as they were."""
    model, clip, vae = loaded
    fake_model, fake_clip, fake_vae = dynamic_model(model, delegate=model), dynamic_clip(clip), dynamic_vae(vae)
    train = _node(host, "legacy_train_node", "TrainClassToken")
    out = _run(train, **_train_inputs(fake_model, fake_clip, fake_vae, classifier, steps=2, backprop_depth=1,
                                      batch_size=1, save_name="dynamic-host"))
    token = load_class_token(host["models"] / "embeddings" / "dynamic-host.safetensors")
    assert token.metadata["trained_steps"] == "2" and torch.isfinite(token.vectors["clip_l"]).all()
    assert fake_model.asked and fake_clip.calls and all(fake_clip.calls)
    text = out.ui.as_dict()["text"][0]
    assert f"training signal: {taesd_installed}" in text and "dynamic VRAM" in text
    assert sm_is_dynamic(host, fake_clip.patcher) and isinstance(fake_clip.cond_stage_model, torch.nn.Module)
    assert "_try_get_embedding" not in vars(clip.tokenizer.clip_l)


def sm_is_dynamic(host, patcher) -> bool:
    return _static_models(host)["is_dynamic"](patcher)


def test_the_date_node_patches_the_static_copy_and_decodes_with_taesd_on_a_dynamic_host(host, loaded, classifier,
                                                                                        taesd_installed):
    import nodes as host_nodes

    sm = _static_models(host)
    model, clip, vae = loaded
    adaptive = _node(host, "adaptive_node", "AdaptiveClassGuidance")
    settings = dict(classifier=classifier, target_class="tiger cat", rho=0.5, every=1, start=0.0, end=1.0,
                    updates_per_step=1, reset=False, prior=0.0, score="log_prob")
    with pytest.raises(sm["host"].HostMismatch, match="--disable-dynamic-vram"):
        _run(adaptive, model=dynamic_model(model, error=GGUF_ERROR), vae=vae, **settings)
    fake_model, fake_vae = dynamic_model(model, delegate=model), dynamic_vae(vae)
    patched = _run(adaptive, model=fake_model, vae=fake_vae, **settings).result[0]
    assert fake_model.asked == [1] and patched.model is model.model and not sm["is_dynamic"](patched)
    decoded = []
    taesd_cls = _node(host, "adapters.host_internals", "require")("TAESD")
    original_decode = taesd_cls.decode
    with torch.inference_mode():
        pos = host_nodes.CLIPTextEncode().encode(clip, "a photo of a tiger cat")[0]
        neg = host_nodes.CLIPTextEncode().encode(clip, "")[0]
        latent = host_nodes.EmptyLatentImage().generate(64, 64, 1)[0]
    try:
        taesd_cls.decode = lambda self, x: (decoded.append(x.shape), original_decode(self, x))[1]
        with torch.inference_mode():
            out = host_nodes.common_ksampler(patched, 7, 2, 7.0, "euler", "normal", pos, neg, latent)[0]
    finally:
        taesd_cls.decode = original_decode
    assert decoded and torch.isfinite(out["samples"]).all()  # the predicted images went through TAESD
