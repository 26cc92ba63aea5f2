"""The host-facing layer on the real ComfyUI: every internal behind one feature check, weights made trainable
without a copy, block-level gradient checkpointing through the host's own UNet and decoder, internals whose shape
changed in 2026 hosts (dynamic VRAM: test_dynamic_vram.py)."""

from __future__ import annotations

import importlib

import pytest
import torch


def _mod(name):
    return importlib.import_module(f"dct_pack.nodes.{name}")


def test_every_host_internal_the_pack_uses_is_there_on_the_tested_host(host):
    assert _mod("adapters.host_internals").missing() == []


def test_a_missing_internal_is_one_clear_error_naming_the_supported_versions(host, monkeypatch):
    h = _mod("adapters.host_internals")
    monkeypatch.setitem(h.INTERNALS, "Sampler", ("comfy.samplers", "NoSuchSampler", "the training step"))
    with pytest.raises(h.HostMismatch) as err:
        h.require("Sampler")
    text = str(err.value)
    assert "comfy.samplers.NoSuchSampler" in text and "ComfyUI 0.3.64" in text and h.SUPPORTED_HOSTS in text
    assert h.missing() == ["comfy.samplers.NoSuchSampler"]


def test_no_node_module_imports_a_host_internal_directly():
    """comfy.* is reached through nodes/adapters/host_internals.py only (the public folder_paths / server /
    comfy_api aside)."""
    import re
    from pathlib import Path

    nodes_dir = Path(__file__).resolve().parents[2] / "nodes"
    offenders = [f"{path.name}: {line.strip()}" for path in nodes_dir.rglob("*.py") if path.name != "host_internals.py"
                 for line in path.read_text().splitlines()
                 if re.match(r"(import|from) comfy(\.|\s|$)", line.strip())]
    assert offenders == []


def test_trainable_weights_alias_the_hosts_tensors_without_a_copy_and_restore_them(host):
    autograd = _mod("adapters.autograd")
    with torch.inference_mode():
        layer = torch.nn.Linear(3, 4)
    weight, bias = layer.weight, layer.bias
    with torch.inference_mode(False):
        x = torch.randn(2, 3, requires_grad=True)
        with autograd.trainable_weights([layer]):
            assert not layer.weight.is_inference()
            assert layer.weight.data_ptr() == weight.data_ptr()  # the same memory: nothing copied
            y = layer(x).sum()
        y.backward()  # after the aliases are gone: autograd kept them alive
    assert layer.weight is weight and layer.bias is bias
    assert torch.allclose(x.grad, weight.sum(0).expand(2, 3))


def _x0_grad(backend_cls, autograd, loaded, checkpoint: bool, decoder=None):
    from dct_core.config import SamplingConfig
    from dct_core.method.prompts import TOKEN_MARK

    prompts = [f"a photo of a {TOKEN_MARK} cat"] * 2
    model, clip, vae = loaded
    with torch.inference_mode(), autograd.autograd_enabled(), autograd.out_of_place_clip():
        backend = backend_cls(model, clip, vae, decoder=decoder)
        vectors = {k: v.clone().requires_grad_(True) for k, v in backend.init_vectors("cat", 1).items()}
        traj = backend.start([0, 1], SamplingConfig(resolution=64, sampling_steps=4, guidance=7.0))
        negative = backend.negative("", 2)
        with torch.no_grad():
            backend.denoise(traj, backend.encode(prompts, vectors), negative, 2)
        x0 = backend.predict_x0(traj, backend.encode(prompts, vectors), negative, checkpoint=checkpoint)
        images = backend.decode(x0, checkpoint=checkpoint)
        (grad,) = torch.autograd.grad(images.square().mean(), [vectors["clip_l"]])
    return grad


def test_gradient_checkpointing_gives_the_same_gradient_and_restores_every_forward(host, loaded, monkeypatch):
    backend_cls = _mod("adapters.comfy_backend").ComfyBackend
    autograd, h = _mod("adapters.autograd"), _mod("adapters.host_internals")
    model, clip, vae = loaded
    units = autograd.checkpoint_units(model.model.diffusion_model)
    assert len(units) > 5 and not any("forward" in u.__dict__ for u in units)
    plain = _x0_grad(backend_cls, autograd, loaded, checkpoint=False)
    in_backward: list = []  # models made sure of during backward, before their blocks are recomputed
    load = h.load_models
    monkeypatch.setattr(h, "load_models", lambda ps: (in_backward.extend(ps) if autograd.backward_pass() != -1
                                                      else None, load(ps))[1])
    ckpt = _x0_grad(backend_cls, autograd, loaded, checkpoint=True)
    assert plain.abs().sum() > 0
    torch.testing.assert_close(ckpt, plain, rtol=1e-4, atol=1e-6)
    assert in_backward == [vae.patcher, model]  # once per backward pass each: the decoder's, then the UNet's
    for module in (model.model.diffusion_model, vae.first_stage_model):
        assert not any("forward" in m.__dict__ for m in module.modules())  # every patched forward undone


def test_the_clip_forward_is_swapped_only_where_its_signature_is_the_one_the_twin_copies(host, monkeypatch):
    autograd, h = _mod("adapters.autograd"), _mod("adapters.host_internals")
    layer = h.clip_layer_class()
    assert autograd.clip_forward_plan(layer.forward) == "swap"  # 0.3.64

    def newer_in_place(self, x, mask=None, optimized_attention=None, attention_bias=None):
        x += self.mlp(x)
        return x

    def newer_out_of_place(self, x, mask=None, optimized_attention=None, attention_bias=None):
        return x + self.mlp(x)

    assert autograd.clip_forward_plan(newer_out_of_place) == "keep"
    with pytest.raises(h.HostMismatch, match=r"CLIPLayer.forward to \(self, x, mask, optimized_attention, "
                                             r"attention_bias\).*update the pack"):
        autograd.clip_forward_plan(newer_in_place)
    original = layer.forward
    monkeypatch.setattr(layer, "forward", newer_out_of_place)
    with autograd.out_of_place_clip():
        assert layer.forward is newer_out_of_place  # already autograd-safe: the host's own forward runs
    monkeypatch.setattr(layer, "forward", newer_in_place)
    with pytest.raises(h.HostMismatch):
        with autograd.out_of_place_clip():
            pass
    assert layer.forward is newer_in_place
    monkeypatch.setattr(layer, "forward", original)
    with autograd.out_of_place_clip():
        assert layer.forward is not original
    assert layer.forward is original


def test_search_aliases_reach_hosts_whose_schema_has_them_and_older_hosts_never_see_them(host, monkeypatch):
    import dataclasses

    api = _mod("adapters.node_api")
    train = _mod("train_node").TrainToken
    assert api.schema_fields(search_aliases=["x"]) == {}  # 0.3.64's io.Schema has no such field
    assert "search_aliases" not in vars(train.define_schema())

    @dataclasses.dataclass
    class NewerSchema(api.io.Schema):
        search_aliases: list | None = None

    monkeypatch.setattr(api.io, "Schema", NewerSchema)
    assert "textual inversion" in train.define_schema().search_aliases
    legacy = _mod("legacy_train_node").TrainClassToken.define_schema()
    assert legacy.is_deprecated and legacy.search_aliases is None  # deprecated nodes stay out of the search
