"""The pack's nodes run in the real ComfyUI, in-process, under the host's inference mode, on its own loaded
MODEL / CLIP / VAE (random-weight SD1.5 layout) and host sampler."""

from __future__ import annotations

import pytest
import torch

from dct_core.formats.tokens import ClassToken, load_class_token

SAMPLING = dict(cfg=7.0, sampler_name="euler", scheduler="normal", sampling_steps=3, resolution=64)
# The legacy node's frozen widget names that the settings table (the Train node, the Options node) spells otherwise.
TABLE_NAMES = {"steps": "max_steps", "learning_rate": "lr", "cfg": "guidance"}


def _table_names(widgets: dict) -> dict:
    """Legacy widget values under the settings table's names (the Options node's inputs)."""
    return {TABLE_NAMES.get(k, k): v for k, v in widgets.items()}


def _train_inputs(model, clip, vae, classifier, **over):
    """The legacy DCTTrainClassToken node's inputs (its frozen widget names)."""
    inputs = dict(model=model, clip=clip, vae=vae, classifier=classifier, target_class="tiger cat", init_word="a",
                  templates="A photo of {token} {label}", steps=4, learning_rate=0.1, batch_size=2, micro_batch=0,
                  seed=0, accuracy_threshold=1.0, patience=50, backprop_depth=3, decoder="checkpoint VAE",
                  save_name="tiger-cat-host", overwrite=True, preview_every=1, **SAMPLING)
    inputs.update(over)
    return inputs


def _node(host, module, name):
    import importlib

    return getattr(importlib.import_module(f"dct_pack.nodes.{module}"), name)


def _run(node, **inputs):
    """As the host executes a node: inside torch.inference_mode()."""
    with torch.inference_mode():
        return node.execute(**inputs)


def _fingerprint(model, clip, vae):
    out = {}
    for tag, module in (("unet", model.model), ("clip", clip.cond_stage_model), ("vae", vae.first_stage_model)):
        for name, t in list(module.state_dict().items()):
            out[f"{tag}.{name}"] = t.clone()
    return out


def _stock_image(host, model, clip, vae, text="a photo of a tiger cat", seed=3):
    import nodes as host_nodes

    with torch.inference_mode():
        pos = host_nodes.CLIPTextEncode().encode(clip, text)[0]
        neg = host_nodes.CLIPTextEncode().encode(clip, "")[0]
        latent = host_nodes.EmptyLatentImage().generate(64, 64, 1)[0]
        out = host_nodes.common_ksampler(model, seed, 3, 7.0, "euler", "normal", pos, neg, latent)[0]
        return host_nodes.VAEDecode().decode(vae, out)[0].clone()


@pytest.fixture(scope="module")
def trained(host, loaded, classifier):
    """One training by the legacy node, run as the host runs a node and saved, with what the host was before it and
    every step's record: the tests of what it saves, learns and leaves behind share it (one costly run)."""
    import comfy.clip_model

    import dct_core.jobs.run as run_mod
    from dct_core.method.training import train_class_token

    model, clip, vae = loaded
    before = dict(weights=_fingerprint(model, clip, vae), image=_stock_image(host, model, clip, vae),
                  clip_forward=comfy.clip_model.CLIPLayer.forward)
    records: list = []

    def spy(*args, **kwargs):
        result = train_class_token(*args, **kwargs)
        records.extend(result.history)
        return result

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(run_mod, "train_class_token", spy)  # the node trains through the shared run layer
        out = _run(_node(host, "legacy_train_node", "TrainClassToken"),
                   **_train_inputs(model, clip, vae, classifier, steps=3))
    return dict(before, out=out, records=records)


def test_training_in_the_host_learns_saves_and_leaves_the_host_as_found(host, loaded, trained):
    import comfy.clip_model

    model, clip, vae = loaded
    token, plot, grid = trained["out"].result
    assert isinstance(token, ClassToken) and token.widths() == {"clip_l": 768}
    assert plot.shape[0] == 1 and plot.shape[-1] == 3 and grid.shape[-1] == 3
    saved = host["models"] / "embeddings" / "tiger-cat-host.safetensors"
    meta = load_class_token(saved).metadata
    assert meta["class_label"] == "tiger cat"
    from dct_core.jobs.run import METADATA_KEYS  # the node writes the same schema as the CLI and the demo

    assert set(METADATA_KEYS) <= set(meta) and meta["sampler"] == "euler/normal" and meta["recipe"] == "paper"

    # the host is exactly as before: weights, the CLIP layer code, the tokenizer, and the images it draws
    after = _fingerprint(model, clip, vae)
    weights_before = trained["weights"]
    assert all(torch.equal(weights_before[k], after[k]) for k in weights_before)
    assert comfy.clip_model.CLIPLayer.forward is trained["clip_forward"]
    assert "_try_get_embedding" not in vars(clip.tokenizer.clip_l)
    assert torch.equal(_stock_image(host, model, clip, vae), trained["image"])


def test_training_raises_the_target_probability_on_the_training_seeds(trained):
    records = trained["records"]
    first, best = records[0], max(records, key=lambda r: r.target_prob)
    assert best.target_prob > 1.5 * first.target_prob
    assert max(r.accuracy for r in records) >= first.accuracy


def _engine_configs(monkeypatch) -> list:
    """The TrainConfig of every training the node starts, recorded where the run layer calls the engine."""
    import dct_core.jobs.run as run_mod
    from dct_core.method.training import train_class_token

    configs: list = []

    def spy(*args, **kwargs):
        configs.append(args[4])
        return train_class_token(*args, **kwargs)

    monkeypatch.setattr(run_mod, "train_class_token", spy)
    return configs


def test_fresh_seeds_reach_the_engine(host, loaded, classifier, monkeypatch):
    legacy = _node(host, "legacy_train_node", "TrainClassToken")
    seen = _configs_only(monkeypatch)
    model, clip, vae = loaded
    for fresh in (True, None):  # None: a workflow saved before the input existed
        over = {"fresh_seeds": fresh} if fresh is not None else {}
        with pytest.raises(_Stop):
            _run(legacy, **_train_inputs(model, clip, vae, classifier, steps=1, save_name="", **over))
    assert [c.fresh_seeds for c, _ in seen] == [True, False]


def test_the_file_loads_through_embedding_syntax_like_apply_class_token(host, loaded):
    import nodes as host_nodes

    model, clip, vae = loaded
    g = torch.Generator().manual_seed(0)
    token = ClassToken({"clip_l": torch.randn(1, 768, generator=g) * 0.02}, name="dct-file-test")
    from dct_core.formats.tokens import save_class_token

    save_class_token(token, host["models"] / "embeddings" / "dct-file-test.safetensors", overwrite=True)
    apply = _node(host, "token_nodes", "ApplyClassToken")
    with torch.inference_mode():
        stock = host_nodes.CLIPTextEncode().encode(clip, "a photo of embedding:dct-file-test tiger cat")[0]
        plain = host_nodes.CLIPTextEncode().encode(clip, "a photo of tiger cat")[0]
    ours = _run(apply, clip=clip, class_token=token, text="a photo of {token} tiger cat").result[0]
    torch.testing.assert_close(ours[0][0], stock[0][0])
    assert not torch.allclose(stock[0][0], plain[0][0])
    # and the image changes when the token is in the prompt
    assert not torch.equal(_stock_image(host, model, clip, vae, "a photo of embedding:dct-file-test tiger cat"),
                           _stock_image(host, model, clip, vae, "a photo of tiger cat"))


def test_apply_class_token_changes_the_conditioning_only_from_the_trigger_on(host, loaded):
    import nodes as host_nodes

    _, clip, _ = loaded
    token = ClassToken({"clip_l": torch.randn(2, 768) * 0.02}, name="my-cat")
    apply = _node(host, "token_nodes", "ApplyClassToken")
    ours = _run(apply, clip=clip, class_token=token, text="a photo of my-cat tiger cat").result[0][0][0]
    with torch.inference_mode():
        base = host_nodes.CLIPTextEncode().encode(clip, "a photo of a a tiger cat")[0][0][0]
    diff = (ours - base).abs().sum(-1)[0]
    assert diff[:4].max() == 0  # <bos> a photo of: before the token, a causal encoder is unchanged
    assert diff[4] > 0 and diff[5] > 0  # the two token vectors
    assert "_try_get_embedding" not in vars(clip.tokenizer.clip_l)


def test_class_token_clip_teaches_a_stock_clip_text_encode_the_trigger_word(host, loaded):
    import nodes as host_nodes

    _, clip, _ = loaded
    token = ClassToken({"clip_l": torch.randn(1, 768) * 0.02}, name="my-bird")
    clip_node = _node(host, "token_nodes", "ClassTokenClip")
    apply = _node(host, "token_nodes", "ApplyClassToken")
    taught = _run(clip_node, clip=clip, class_token=token).result[0]
    with torch.inference_mode():
        stock = host_nodes.CLIPTextEncode().encode(taught, "a photo of my-bird warbler")[0][0][0]
        untouched = host_nodes.CLIPTextEncode().encode(clip, "a photo of my-bird warbler")[0][0][0]
    ours = _run(apply, clip=clip, class_token=token, text="a photo of my-bird warbler").result[0][0][0]
    torch.testing.assert_close(stock, ours)
    assert not torch.allclose(untouched, ours)  # the original CLIP does not know the word


def test_cancel_mid_training_keeps_a_usable_token(host, loaded, classifier, monkeypatch):
    import comfy.model_management as mm

    model, clip, vae = loaded
    train_mod = __import__("dct_pack.nodes.train_node", fromlist=["x"])  # where both Train nodes train
    legacy = _node(host, "legacy_train_node", "TrainClassToken")
    seen = []

    def cancel_after_two(node_id, record, label):
        seen.append(record.step)
        if record.step == 1:
            mm.interrupt_current_processing(True)  # what the Cancel button does

    monkeypatch.setattr(train_mod, "_send_progress", cancel_after_two)
    events: list = []
    monkeypatch.setattr(train_mod, "_send_event", lambda event, node, data: events.append((event, data)))
    try:
        with pytest.raises(mm.InterruptProcessingException):
            _run(legacy, **_train_inputs(model, clip, vae, classifier, steps=20, backprop_depth=1, batch_size=1,
                                         save_name="cancelled-token"))
    finally:
        mm.interrupt_current_processing(False)
    assert seen == [0, 1]
    # the node says what the Cancel kept (web/dct.js shows it on the node): steps counted from 1, the file named
    stopped = [data for event, data in events if event == train_mod.STOPPED_EVENT]
    assert [e for e, _ in events] == [train_mod.STARTED_EVENT, train_mod.SAVED_EVENT, train_mod.STOPPED_EVENT]
    assert stopped[0]["steps"] == 2 and stopped[0]["best_step"] in (1, 2)
    assert "cancelled at step 3 (2 steps finished)" in stopped[0]["text"]
    assert stopped[0]["text"].endswith("cancelled-token.safetensors")
    token = load_class_token(host["models"] / "embeddings" / "cancelled-token.safetensors")
    assert token.metadata["trained_steps"] == "2" and torch.isfinite(token.vectors["clip_l"]).all()
    assert "_try_get_embedding" not in vars(clip.tokenizer.clip_l)


def test_bad_inputs_are_clear_node_errors(host, loaded, classifier):
    model, clip, vae = loaded
    train = _node(host, "legacy_train_node", "TrainClassToken")
    with pytest.raises(ValueError, match="no class named 'tigre cat'.*'tiger cat'"):
        _run(train, **_train_inputs(model, clip, vae, classifier, target_class="tigre cat"))
    sdxl = ClassToken({"clip_l": torch.full((1, 768), 0.1), "clip_g": torch.full((1, 1280), 0.1)}, name="xl")
    apply = _node(host, "token_nodes", "ApplyClassToken")
    with pytest.raises(ValueError, match="need \\(clip_l: 768\\)"):
        _run(apply, clip=clip, class_token=sdxl, text="a photo of {token} cat")
    one = ClassToken({"clip_l": torch.full((1, 768), 0.1)}, name="one")
    with pytest.raises(ValueError, match="neither \\{token\\} nor the trigger word"):
        _run(apply, clip=clip, class_token=one, text="a photo of a cat")
    for bad, why in ((torch.zeros(1, 768), "all zeros"), (torch.full((1, 768), float("nan")), "NaN")):
        with pytest.raises(ValueError, match=why):  # would silently give black images or nothing
            _run(apply, clip=clip, class_token=ClassToken({"clip_l": bad}, name="bad"), text="a {token} cat")


def test_a_taesd_decoder_from_vae_approx_gives_the_training_signal(host, loaded, classifier):
    import comfy.taesd.taesd
    from safetensors.torch import save_file

    from .conftest import _random_init_

    decoder = comfy.taesd.taesd.TAESD(latent_channels=4).taesd_decoder
    _random_init_(decoder, 5)
    save_file({k: v.contiguous() for k, v in decoder.state_dict().items()},
              str(host["models"] / "vae_approx" / "taesd_decoder.safetensors"))
    train = _node(host, "legacy_train_node", "TrainClassToken")
    schema = train.define_schema()
    options = next(i for i in schema.inputs if i.id == "decoder").options
    assert "taesd_decoder.safetensors" in options
    model, clip, vae = loaded
    # the legacy node's choice reaches the training as this file's decoder (the run itself: the Train node's below;
    # test_dynamic_vram.py trains the legacy node on an installed TAESD)
    import dct_core.jobs.run as run_mod

    backends: list = []

    def spy(*args, **kwargs):
        backends.append(args[0])
        raise _Stop

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(run_mod, "train_class_token", spy)
        with pytest.raises(_Stop):
            _run(train, **_train_inputs(model, clip, vae, classifier, steps=1, decoder="taesd_decoder.safetensors",
                                        backprop_depth=1, save_name=""))
    (backend,) = backends
    chosen = backend.decoder.taesd_decoder.state_dict()
    assert all(torch.equal(chosen[k], v) for k, v in decoder.state_dict().items())
    options_node = _node(host, "training_options", "TrainingOptionsNode")
    assert "taesd_decoder.safetensors" in next(i for i in options_node.define_schema().inputs
                                               if i.id == "decoder").options
    widgets = {**_options_node_defaults(host), **_table_names(SAMPLING), "batch_size": 1,
               "decoder": "taesd_decoder.safetensors", "backprop_depth": 1}
    options = _run(options_node, **widgets).result[0]
    out = _run(_node(host, "train_node", "TrainToken"), **_simple(model, clip, vae, classifier, max_steps=2,
                                                                  recipe="paper", options=options))
    token, plot, grid = out.result
    assert torch.isfinite(token.vectors["clip_l"]).all() and grid.shape[-1] == 3
    assert "tiger cat (1): stopped by" in out.ui.as_dict()["text"][0]


def test_load_class_token_rereads_a_retrained_file_and_names_it_after_the_file(host):
    import os

    from dct_core.formats.tokens import save_class_token

    load = _node(host, "token_nodes", "LoadClassToken")
    path = host["models"] / "embeddings" / "renamed-file.safetensors"
    save_class_token(ClassToken({"clip_l": torch.full((1, 768), 0.5)}, name="original-name"), path, overwrite=True)
    first = load.fingerprint_inputs(token="renamed-file.safetensors")
    unknown = load.fingerprint_inputs()  # the name comes through a link: the host calls without it
    assert unknown != unknown  # NaN: the node runs again every time
    token = _run(load, token="renamed-file.safetensors").result[0]
    assert token.name == "renamed-file"  # the trigger is the file name, as embedding:<name> in every host
    save_class_token(ClassToken({"clip_l": torch.ones(1, 768)}, name="x"), path, overwrite=True)
    os.utime(path, ns=(1, 2_000_000_000_000_000_000))
    assert load.fingerprint_inputs(token="renamed-file.safetensors") != first
    assert torch.equal(_run(load, token="renamed-file.safetensors").result[0].vectors["clip_l"], torch.ones(1, 768))


def _sample(model, vae, pos, neg, seed, steps=3):
    import nodes as host_nodes

    with torch.inference_mode():
        latent = host_nodes.EmptyLatentImage().generate(64, 64, 1)[0]
        out = host_nodes.common_ksampler(model, seed, steps, 7.0, "euler", "normal", pos, neg, latent)[0]
        return host_nodes.VAEDecode().decode(vae, out)[0].clone()


def test_adaptive_class_guidance_patch_in_a_stock_ksampler(host, loaded, classifier):
    import nodes as host_nodes

    model, clip, vae = loaded
    adaptive = _node(host, "adaptive_node", "AdaptiveClassGuidance")
    settings = dict(vae=vae, classifier=classifier, target_class="tiger cat", every=1, start=0.0, end=1.0,
                    reset=False, prior=0.0, score="log_prob")
    with torch.inference_mode():
        pos = host_nodes.CLIPTextEncode().encode(clip, "a photo of a tiger cat")[0]
        neg = host_nodes.CLIPTextEncode().encode(clip, "")[0]
    pos_before = pos[0][0].clone()
    seeds = [7, 8, 9]
    plain = [_sample(model, vae, pos, neg, s) for s in seeds]
    off = _run(adaptive, model=model, rho=0.0, updates_per_step=1, **settings).result[0]
    assert torch.equal(_sample(off, vae, pos, neg, seeds[0]), plain[0])  # rho = 0: bit-identical
    patched = _run(adaptive, model=model, rho=0.5, updates_per_step=2, **settings).result[0]
    steered = [_sample(patched, vae, pos, neg, s) for s in seeds]
    target = classifier.class_index("tiger cat")

    def prob(images):
        with torch.no_grad():
            return classifier(torch.cat(images).permute(0, 3, 1, 2)).softmax(-1)[:, target].mean()

    assert prob(steered) > prob(plain)
    assert torch.equal(pos[0][0], pos_before)  # the user's CONDITIONING is never mutated
    assert model.model_options.get("transformer_options", {}).get("wrappers", {}).get("predict_noise") is None


def test_the_node_date_step_is_the_engines_and_moves_each_image_by_rho(host, loaded, classifier, monkeypatch):
    """The node runs the engine's DATE loop, whose step is dct_core.method.adaptive.date_update (per-image norm), not an
    update of its own."""
    import dct_core.method.adaptive as module
    import nodes as host_nodes

    adaptive_node = _node(host, "adaptive_node", "AdaptiveClassGuidance")
    from dct_core.method.adaptive import date_update

    moves = []

    def spy(value, grad, rho, **kw):
        out = date_update(value, grad, rho, **kw)
        moves.append((out - value.detach()).float().flatten(1).norm(dim=1))
        return out

    monkeypatch.setattr(module, "date_update", spy)
    model, clip, vae = loaded
    patched = _run(adaptive_node, model=model, vae=vae, classifier=classifier, target_class="tiger cat", rho=0.3,
                   every=1, start=0.0, end=0.4, updates_per_step=1, reset=True, prior=0.0, score="log_prob")
    with torch.inference_mode():
        pos = host_nodes.CLIPTextEncode().encode(clip, "a photo of a tiger cat")[0]
        neg = host_nodes.CLIPTextEncode().encode(clip, "")[0]
        latent = host_nodes.EmptyLatentImage().generate(64, 64, 2)[0]  # two images, one prompt
        host_nodes.common_ksampler(patched.result[0], 1, 3, 7.0, "euler", "normal", pos, neg, latent)
    assert moves, "the node never called the engine's date_update"
    for move in moves:
        assert move.shape == (2,)  # one embedding per image, each moved by rho
        torch.testing.assert_close(move, torch.full((2,), 0.3), rtol=1e-3, atol=1e-3)


def test_the_engines_adaptive_sampling_runs_on_the_host_backend(host, loaded, classifier):
    """ComfyBackend fulfils the whole Backend contract, predict_x0 included: DATE from the engine on the host."""
    from dct_core.config import SamplingConfig
    from dct_core.method.adaptive import AdaptiveConfig, adaptive_generate, class_score
    from dct_core.method.generation import generate_images

    backend_cls = _node(host, "adapters.comfy_backend", "ComfyBackend")
    autograd = _node(host, "adapters.autograd", "autograd_enabled")
    out_of_place = _node(host, "adapters.autograd", "out_of_place_clip")
    model, clip, vae = loaded
    sampling = SamplingConfig(resolution=64, sampling_steps=3, guidance=7.0)
    target = classifier.class_index("tiger cat")
    with torch.inference_mode(), autograd(), out_of_place():
        backend = backend_cls(model, clip, vae)
        prompts, seeds = ["a photo of a tiger cat"] * 2, [5, 6]
        plain = generate_images(backend, prompts, seeds, sampling)
        same = adaptive_generate(backend, prompts, seeds, sampling, class_score(classifier, target),
                                 AdaptiveConfig(rho=0.0))
        steered = adaptive_generate(backend, prompts, seeds, sampling, class_score(classifier, target),
                                    AdaptiveConfig(rho=0.5, at_steps=(0, 1)))
    torch.testing.assert_close(same, plain, rtol=0, atol=1e-4)  # step by step through the host sampler
    assert (steered - plain).abs().max() > 1e-3  # ten times what stepping alone changes


def test_the_recipe_combo_decides_what_is_left_at_zero(host, loaded, classifier, monkeypatch):
    """A new node (settings at 0 / empty) trains with the chosen recipe; a workflow saved before the recipe input
    existed runs the paper's recipe with its own values, as it did then."""
    legacy = _node(host, "legacy_train_node", "TrainClassToken")
    seen = _configs_only(monkeypatch)
    model, clip, vae = loaded
    fresh = dict(init_word="", templates="", learning_rate=0.0, batch_size=0, accuracy_threshold=0.0, patience=0,
                 backprop_depth=0, steps=1, save_name="")
    for inputs in (_train_inputs(model, clip, vae, classifier, recipe="balanced", **fresh),
                   _train_inputs(model, clip, vae, classifier, recipe="paper", **fresh),
                   _train_inputs(model, clip, vae, classifier, steps=1, save_name="")):
        with pytest.raises(_Stop):
            _run(legacy, **inputs)
    balanced, paper, old = (config for config, _ in seen)
    assert balanced.gradient_point == "x0" and balanced.lr == 0.05 and balanced.fresh_seeds
    assert paper.gradient_point == "last" and paper.lr == 0.00125 and paper.batch_size == 5
    assert old.gradient_point == "last" and old.lr == 0.1 and old.backprop_depth == 3  # its own values, paper's rest


class _Stop(Exception):
    """Raised by the config spy: the settings are what is under test, not a (slow, full-size) training run."""


def _configs_only(monkeypatch) -> list:
    """(TrainConfig, token metadata) of every training the node starts; the training itself is skipped."""
    import dct_core.jobs.run as run_mod

    seen: list = []

    def spy(*args, **kwargs):
        seen.append((args[4], kwargs["metadata"]))
        raise _Stop

    monkeypatch.setattr(run_mod, "train_class_token", spy)
    return seen


def _simple(model, clip, vae, classifier, **over):
    inputs = dict(model=model, clip=clip, vae=vae, classifier=classifier, target_class="tiger cat",
                  max_steps=0, save_name="", overwrite=False, recipe="balanced")
    inputs.update(over)
    return inputs


def _options_node_defaults(host) -> dict:
    node = _node(host, "training_options", "TrainingOptionsNode")
    return {i.id: i.default for i in node.define_schema().inputs}


def _train_simple(host, *args, **over):
    with pytest.raises(_Stop):
        _run(_node(host, "train_node", "TrainToken"), **_simple(*args, **over))


def test_the_simple_node_without_options_trains_with_the_recipe(host, loaded, classifier, monkeypatch):
    """Target, steps, save name, overwrite, recipe: everything else is the recipe's (sampling included) with the
    node defaults euler/normal, the checkpoint VAE and a preview every step."""
    from dct_core.config import PRESETS, preset_config

    seen = _configs_only(monkeypatch)
    model, clip, vae = loaded
    for recipe in PRESETS:
        _train_simple(host, model, clip, vae, classifier, recipe=recipe)
        _train_simple(host, model, clip, vae, classifier, recipe=recipe, max_steps=3)
    for i, recipe in enumerate(PRESETS):
        (config, meta), (config3, _) = seen[2 * i], seen[2 * i + 1]
        assert config == preset_config(recipe)
        assert config3 == preset_config(recipe, max_steps=3)
        assert meta["recipe"] == recipe and meta["sampler"] == "euler/normal"
    balanced = seen[0][0]
    assert (balanced.gradient_point, balanced.lr, balanced.batch_size, balanced.fresh_seeds) == ("x0", 0.05, 8, True)
    sampling = balanced.sampling
    assert (sampling.resolution, sampling.sampling_steps, sampling.guidance) == (512, 30, 7.0)


def test_a_fresh_options_node_means_the_recipe_and_set_options_override_it(host, loaded, classifier, monkeypatch):
    from dct_core.config import PRESETS, preset_config

    options_node = _node(host, "training_options", "TrainingOptionsNode")
    seen = _configs_only(monkeypatch)
    model, clip, vae = loaded
    defaults = _options_node_defaults(host)
    fresh = _run(options_node, **defaults).result[0]
    for recipe in PRESETS:  # unset (0, empty, 'recipe') everywhere: exactly the recipe, whichever it is
        _train_simple(host, model, clip, vae, classifier, recipe=recipe, options=fresh)
        assert seen[-1][0] == preset_config(recipe)

    chosen = dict(init_word="bird", templates="a {token} {label}\n\n  a photo of {token} {label}  ",
                  lr=0.02, batch_size=3, micro_batch=1, guidance=5.5, sampling_steps=12, resolution=256,
                  seed=7, accuracy_threshold=0.6, patience=4, backprop_depth=2, fresh_seeds="off",
                  scheduler="karras")
    options = _run(options_node, **{**defaults, **chosen}).result[0]
    _train_simple(host, model, clip, vae, classifier, recipe="balanced", max_steps=5, options=options)
    config, meta = seen[-1]
    assert config.templates == ("a {token} {label}", "a photo of {token} {label}")
    assert (config.init_word, config.lr, config.batch_size, config.micro_batch, config.seed) == ("bird", 0.02, 3, 1, 7)
    assert (config.accuracy_threshold, config.patience, config.backprop_depth, config.fresh_seeds) == (0.6, 4, 2,
                                                                                                       False)
    assert (config.sampling.guidance, config.sampling.sampling_steps, config.sampling.resolution) == (5.5, 12, 256)
    assert config.max_steps == 5 and config.gradient_point == "x0"  # the rest stays the recipe's
    assert meta["sampler"] == "euler/karras"

    # one setting changed: only that one differs from the recipe; fresh_seeds "on" forces new seeds on paper
    one = _run(options_node, **{**defaults, "lr": 0.3, "fresh_seeds": "on"}).result[0]
    _train_simple(host, model, clip, vae, classifier, recipe="paper", options=one)
    assert seen[-1][0] == preset_config("paper", lr=0.3, fresh_seeds=True)


def test_settings_new_to_the_options_node_reach_the_engine_and_the_result_lists_them(host, loaded, classifier,
                                                                                      monkeypatch):
    """Settings that no node offered before the settings table (gradient point, preserve, keep, weight decay, ...)
    set on the Options node reach the engine's TrainConfig, and the Train node's result text lists every setting
    it trained with: the ones set and the recipe's."""
    from dct_core.config import config_values, preset_config

    options_node = _node(host, "training_options", "TrainingOptionsNode")
    configs = _engine_configs(monkeypatch)
    model, clip, vae = loaded
    small = dict(batch_size=1, sampling_steps=2, resolution=64, templates="A photo of {token} {label}")
    new = dict(gradient_point="x0", x0_interval="0.1-0.9", preserve=5.0, keep="last", weight_decay=0.0,
               num_vectors=2, negative_prompt="blurry", checkpointing="off", free_words="red, green, blue",
               free_penalty=1.0)  # the penalty runs the host's text encoder once more per step, with gradient
    options = _run(options_node, **{**_options_node_defaults(host), **small, **new}).result[0]
    out = _run(_node(host, "train_node", "TrainToken"), **_simple(model, clip, vae, classifier, recipe="paper",
                                                                  max_steps=1, options=options))
    (config,) = configs
    # the paper's recipe takes the gradient at the last step, keeps the best token, decays 0.01, checkpoints
    assert (config.gradient_point, config.x0_interval, config.preserve, config.keep) == ("x0", (0.1, 0.9), 5.0,
                                                                                         "last")
    assert (config.weight_decay, config.num_vectors, config.checkpointing) == (0.0, 2, False)
    assert config.sampling.negative_prompt == "blurry"
    assert (config.free_words, config.free_penalty) == ("red, green, blue", 1.0)
    assert config == preset_config("paper", max_steps=1, templates=("A photo of {token} {label}",), batch_size=1,
                                   sampling_steps=2, resolution=64, gradient_point="x0", x0_interval=(0.1, 0.9),
                                   preserve=5.0, keep="last", weight_decay=0.0, num_vectors=2,
                                   negative_prompt="blurry", checkpointing=False, free_words="red, green, blue",
                                   free_penalty=1.0)
    assert out.result[0].vectors["clip_l"].shape == (2, 768)  # the token trained has the two vectors asked for

    head, diversity, listed = out.ui.as_dict()["text"][0].split("\n")
    assert head.startswith("tiger cat (1): stopped by max_steps after 1 steps; best step 1 accuracy ")
    assert diversity.startswith("diversity with / without the token: x")  # on the before/after images
    assert listed.startswith("recipe paper; settings: ")
    for name in config_values(config):  # every setting, the recipe's included
        assert f" {name} " in listed, name
    for shown in ("gradient_point x0", "x0_interval [0.1, 0.9]", "preserve 5.0", "keep last", "weight_decay 0.0",
                  "num_vectors 2", "negative_prompt blurry", "checkpointing false",  # set on the Options node
                  "lr 0.00125", "accuracy_threshold 0.7", "patience 15", "fresh_seeds false",  # the recipe's
                  "max_steps 1", "batch_size 1", "sampling_steps 2", "resolution 64", "guidance 7.0"):
        assert shown in listed, (shown, listed)


def test_the_legacy_node_and_the_simple_node_share_one_training(host, loaded, classifier, monkeypatch):
    """The legacy node's widgets, given to the simple node through an options node (under the settings table's
    names), start the same training."""
    legacy_node = _node(host, "legacy_train_node", "TrainClassToken")
    options_node = _node(host, "training_options", "TrainingOptionsNode")
    seen = _configs_only(monkeypatch)
    model, clip, vae = loaded
    legacy = _train_inputs(model, clip, vae, classifier, recipe="balanced", save_name="")
    with pytest.raises(_Stop):
        _run(legacy_node, **legacy)
    widgets = {k: v for k, v in _table_names(legacy).items() if k in _options_node_defaults(host)}
    assert {"lr", "guidance"} <= set(widgets)
    options = _run(options_node, **{**widgets, "fresh_seeds": "recipe"}).result[0]
    _train_simple(host, model, clip, vae, classifier, recipe="balanced", max_steps=legacy["steps"],
                  options=options)
    (old, old_meta), (new, new_meta) = seen
    assert old == new and old_meta == new_meta


def test_unset_resolution_is_the_models_native_size(host):
    """The recipes' 512 suits SD1.x; an SDXL-family model (its latent format) trains at 1024 unless set."""
    import types

    import comfy.latent_formats

    train_mod = pytest.importorskip("dct_pack.nodes.train_node")
    options_mod = pytest.importorskip("dct_pack.nodes.training_options")
    native = train_mod._native_resolution
    assert native(types.SimpleNamespace(get_model_object=lambda name: comfy.latent_formats.SDXL())) == 1024
    assert native(types.SimpleNamespace(get_model_object=lambda name: comfy.latent_formats.SD15())) is None
    options = options_mod.TrainingOptions()
    assert options.train_config("balanced", default_resolution=1024).sampling.resolution == 1024
    assert options.train_config("balanced").sampling.resolution == 512
    set_res = options_mod.TrainingOptions.of(resolution=768)
    assert set_res.train_config("balanced", default_resolution=1024).sampling.resolution == 768


def test_a_bad_option_is_a_clear_node_error(host, loaded, classifier):
    options_node = _node(host, "training_options", "TrainingOptionsNode")
    model, clip, vae = loaded
    defaults = _options_node_defaults(host)
    options = _run(options_node, **{**defaults, "backprop_depth": 9, "sampling_steps": 4}).result[0]
    with pytest.raises(ValueError, match="backprop depth 9 must be between 1 and the 4 sampling steps"):
        _run(_node(host, "train_node", "TrainToken"), **_simple(model, clip, vae, classifier, recipe="paper",
                                                                options=options))
    with pytest.raises(ValueError, match="fresh_seeds must be one of recipe, on, off"):
        _run(options_node, **{**defaults, "fresh_seeds": "sometimes"})
    with pytest.raises(ValueError, match="x0_interval must look like 0.2-0.8, got 'late'"):
        _run(options_node, **{**defaults, "x0_interval": "late"})


@pytest.mark.parametrize("host_returns", [2, 3])
def test_the_trigger_lookup_answers_in_the_hosts_own_shape(host, host_returns):
    """0.3.64's _try_get_embedding returns (embed, leftover); 2026 hosts return (embed, name, leftover)."""
    registry = _node(host, "adapters.tokenizer_hook", "_install").__globals__

    class Sub:
        embedding_directory = None

        def _try_get_embedding(self, name):
            assert self.embedding_directory is not None  # the probe never searches a missing folder
            words = name.split()
            return (None, words[0], " ".join(words[1:])) if host_returns == 3 else (None, " ".join(words[1:]))

    sub, vectors = Sub(), torch.ones(1, 768)
    registry["_install"](sub, "tc", vectors)
    answer = sub._try_get_embedding("tc, a cat")
    assert len(answer) == host_returns and answer[0] is vectors and answer[-1] == ", a cat"
    assert len(sub._try_get_embedding("other thing")) == host_returns and sub.embedding_directory == []


def test_a_cancel_raised_mid_step_still_keeps_the_best_token(host, loaded, classifier, monkeypatch):
    """2026 hosts raise their interrupt inside any op (and clear the flag), and it is a BaseException there (an
    ``except Exception`` never swallows it): the best token so far is still saved and the interrupt reaches the
    host. 0.3.64's own (an Exception) is raised by the Cancel test above."""
    import comfy.model_management as mm

    class InterruptProcessingException(BaseException):  # shaped like 2026 cores'
        pass

    monkeypatch.setattr(mm, "InterruptProcessingException", InterruptProcessingException)
    model, clip, vae = loaded
    legacy = _node(host, "legacy_train_node", "TrainClassToken")
    calls = []
    forward = type(classifier).__call__

    def raising(self, images):
        calls.append(1)
        if len(calls) == 3:  # the third classification: inside the third optimization step
            raise InterruptProcessingException()
        return forward(self, images)

    monkeypatch.setattr(type(classifier), "__call__", raising)
    with pytest.raises(InterruptProcessingException):
        _run(legacy, **_train_inputs(model, clip, vae, classifier, steps=20, backprop_depth=1, batch_size=1,
                                     save_name="cancelled-mid-step"))
    token = load_class_token(host["models"] / "embeddings" / "cancelled-mid-step.safetensors")
    assert token.metadata["stopped"] == "cancelled" and token.metadata["trained_steps"] == "2"
    assert "_try_get_embedding" not in vars(clip.tokenizer.clip_l)  # the host's tokenizer is as it was


def test_the_host_training_flag_is_set_during_training_and_restored(host, loaded, classifier, monkeypatch):
    """2026 cores read comfy.model_management.in_training (autograd-safe kernels); 0.3.64 has no such flag and
    must not get one."""
    import comfy.model_management as mm

    import dct_core.jobs.run as run_mod

    model, clip, vae = loaded
    legacy = _node(host, "legacy_train_node", "TrainClassToken")
    seen: list = []

    def spy(*args, **kwargs):  # where the run layer starts the engine: the flag as the training sees it
        seen.append(getattr(mm, "in_training", "absent"))
        raise _Stop

    monkeypatch.setattr(run_mod, "train_class_token", spy)
    had_flag = hasattr(mm, "in_training")
    with pytest.raises(_Stop):
        _run(legacy, **_train_inputs(model, clip, vae, classifier, steps=1, save_name=""))
    assert hasattr(mm, "in_training") == had_flag and seen == ["absent"]  # nothing added to a host without it
    monkeypatch.setattr(mm, "in_training", False, raising=False)
    with pytest.raises(_Stop):  # stopped by an error mid-training: the flag is restored all the same
        _run(legacy, **_train_inputs(model, clip, vae, classifier, steps=2, save_name=""))
    assert seen == ["absent", True] and mm.in_training is False


def test_the_nodes_use_a_numbered_node_api(host):
    api = __import__("dct_pack.nodes.adapters.node_api", fromlist=["x"])
    assert api.API_VERSION == "comfy_api.v0_0_2" and api.io.ComfyNode is not None
