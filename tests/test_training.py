"""The optimization itself, on the tiny world (tests/conftest.py explains why it is text-sensitive)."""

from dataclasses import replace

import pytest
import torch

from conftest import TINY_SAMPLING, assert_same_state, calibrated_classifier, state_fingerprint
from dct_core.backends.diffusers_backend import DiffusersBackend
from dct_core.config import TrainConfig
from dct_core.errors import DCTError
from dct_core.method.generation import generate_images, topk_accuracy
from dct_core.method.prompts import prompts_for_batch
from dct_core.method.training import train_class_token
from dct_core.testing.tiny import tiny_pipeline

FAST = dict(batch_size=2, lr=0.1, sampling=TINY_SAMPLING, accuracy_threshold=1.0)


def _modules(backend, classifier):
    return [*backend.modules(), classifier.module]


def test_only_the_token_changes_and_the_host_is_handed_back_as_found(sd1_world):
    backend, classifier = sd1_world
    for m in backend.modules():  # a user's pipeline usually has trainable flags on and some module in train mode
        m.requires_grad_(True)
    backend.unet.train()
    before = state_fingerprint(*_modules(backend, classifier))
    result = train_class_token(backend, classifier, 1, "tiger cat", TrainConfig(max_steps=3, backprop_depth=2, **FAST))
    assert len(result.history) == 3
    assert_same_state(before, state_fingerprint(*_modules(backend, classifier)))
    assert all(p.grad is None for m in _modules(backend, classifier) for p in m.parameters())
    init = backend.init_vectors("a", 1)["clip_l"]
    assert not torch.equal(result.token.vectors["clip_l"], init.cpu()) or result.best_step == 0


def test_the_host_is_restored_after_a_failure(sd1_world):
    backend, classifier = sd1_world
    before = state_fingerprint(*_modules(backend, classifier))

    def boom(record, images):
        raise RuntimeError("callback failed")

    with pytest.raises(RuntimeError, match="callback failed"):
        train_class_token(backend, classifier, 1, "tiger cat", TrainConfig(max_steps=3, **FAST), on_step=boom)
    assert_same_state(before, state_fingerprint(*_modules(backend, classifier)))


@pytest.mark.parametrize("depth", [1, 2])
def test_gradient_flows_through_the_last_k_steps_only(sd1_world, depth):
    backend, classifier = sd1_world
    calls = []
    handle = backend.unet.register_forward_pre_hook(lambda m, a: calls.append(torch.is_grad_enabled()))
    records = []
    try:
        train_class_token(backend, classifier, 1, "tiger cat", TrainConfig(max_steps=1, backprop_depth=depth, **FAST),
                          on_step=lambda r, i: records.append(r))
    finally:
        handle.remove()
    steps = TINY_SAMPLING.sampling_steps
    # The trajectory before the last K steps runs without grad (one CFG call per step). In the first grad step
    # the latents carry no gradient, so its unconditional branch runs without grad too; later grad steps are
    # one CFG call with grad. Block-level checkpointing (K > 1) recomputes inside the UNet, not its forward.
    assert calls.count(True) == depth
    assert calls.count(False) == steps - depth + 1
    assert calls[: steps - depth + 1] == [False] * (steps - depth + 1)
    assert 0 < records[0].grad_norm < float("inf")


def test_training_raises_the_target_probability_and_returns_the_best_token(sd1_world):
    backend, classifier = sd1_world
    target = classifier.class_index("tiger cat")
    config = TrainConfig(max_steps=20, backprop_depth=TINY_SAMPLING.sampling_steps, patience=20, **FAST)
    result = train_class_token(backend, classifier, target, "tiger cat", config)
    first, best = result.history[0], result.best
    assert first.accuracy == 0.0 and first.target_prob < 0.05  # the untrained token misses the class
    assert best.accuracy >= 0.5
    assert max(r.target_prob for r in result.history) > 5 * first.target_prob
    # the returned token is the one that produced the best batch, not the last one
    prompts = prompts_for_batch(config.templates, "tiger cat", config.batch_size)
    vectors = {k: v.to(backend.device) for k, v in result.token.vectors.items()}
    images = generate_images(backend, prompts, [0, 1], TINY_SAMPLING, vectors)
    with torch.no_grad():
        assert topk_accuracy(classifier(images), target)[1] == best.accuracy


def test_early_stopping_threshold_patience_and_cancel(sd1_world):
    backend, classifier = sd1_world
    target = classifier.class_index("tiger cat")
    depth = TINY_SAMPLING.sampling_steps
    reached = train_class_token(backend, classifier, target, "tiger cat",
                                TrainConfig(max_steps=20, backprop_depth=depth, **{**FAST, "accuracy_threshold": 0.5}))
    assert reached.stopped == "threshold" and reached.history[-1].accuracy >= 0.5
    assert len(reached.history) < 20
    stalled = train_class_token(backend, classifier, target, "tiger cat",
                                TrainConfig(max_steps=20, patience=2, **{**FAST, "lr": 1e-12}))
    assert stalled.stopped == "patience" and len(stalled.history) == 3
    polls = iter([False, False, True])
    cancelled = train_class_token(backend, classifier, target, "tiger cat", TrainConfig(max_steps=20, **FAST),
                                  should_cancel=lambda: next(polls))
    assert cancelled.stopped == "cancelled" and len(cancelled.history) == 2
    assert cancelled.token is not None and cancelled.best_step in (0, 1)


def test_runs_are_deterministic_on_cpu_and_micro_batches_match(sd1_world):
    backend, classifier = sd1_world
    config = TrainConfig(max_steps=2, **{**FAST, "batch_size": 4, "accuracy_threshold": 1.0})
    a = train_class_token(backend, classifier, 1, "tiger cat", config)
    b = train_class_token(backend, classifier, 1, "tiger cat", config)
    assert torch.equal(a.token.vectors["clip_l"], b.token.vectors["clip_l"])
    assert [r.loss for r in a.history] == [r.loss for r in b.history]
    micro = train_class_token(backend, classifier, 1, "tiger cat", TrainConfig(**{**config.__dict__, "micro_batch": 1}))
    assert micro.history[0].loss == pytest.approx(a.history[0].loss, rel=1e-4)
    assert micro.history[0].accuracy == a.history[0].accuracy


@pytest.mark.parametrize("kind,prediction", [("sdxl", "epsilon"), ("sd1", "v_prediction")])
def test_sdxl_and_v_prediction_paths_train(kind, prediction):
    backend = DiffusersBackend(tiny_pipeline(kind, prediction_type=prediction))
    classifier = calibrated_classifier(backend)
    result = train_class_token(backend, classifier, 1, "tiger cat",
                               TrainConfig(max_steps=2, backprop_depth=2, **FAST))
    widths = {k: v.shape for k, v in result.token.vectors.items()}
    assert widths == ({"clip_l": (1, 32), "clip_g": (1, 32)} if kind == "sdxl" else {"clip_l": (1, 32)})
    assert all(0 < r.grad_norm < float("inf") for r in result.history)
    assert all(r.loss == r.loss for r in result.history)


def test_bad_settings_are_refused_before_any_work(sd1_world):
    backend, classifier = sd1_world
    with pytest.raises(DCTError, match="\\{token\\}"):
        train_class_token(backend, classifier, 1, "x", TrainConfig(templates=("a photo of {label}",)))
    with pytest.raises(DCTError, match="backprop depth"):
        train_class_token(backend, classifier, 1, "x", TrainConfig(backprop_depth=99, sampling=TINY_SAMPLING))
    with pytest.raises(DCTError, match="outside the classifier"):
        train_class_token(backend, classifier, 10, "x", TrainConfig(sampling=TINY_SAMPLING))


def test_checkpointing_gives_the_same_step_and_is_switched_off_after(sd1_world):
    backend, classifier = sd1_world
    decoder = backend.vae.decoder
    attrs = dict(vars(decoder))
    plain = train_class_token(backend, classifier, 1, "tiger cat",
                              TrainConfig(max_steps=2, checkpointing=False, **FAST))
    ckpt = train_class_token(backend, classifier, 1, "tiger cat",
                             TrainConfig(max_steps=2, checkpointing=True, **FAST))
    assert [r.loss for r in ckpt.history] == pytest.approx([r.loss for r in plain.history], rel=1e-5)
    torch.testing.assert_close(ckpt.token.vectors["clip_l"], plain.token.vectors["clip_l"])
    assert dict(vars(decoder)).keys() == attrs.keys() and decoder.gradient_checkpointing is False


def test_half_precision_weights_train_an_fp32_token(sd1_world):
    """bf16 weights (as on a GPU with --dtype bf16) run the same loop; the token stays fp32."""
    backend, classifier = sd1_world
    half = DiffusersBackend(backend.pipe.to(torch.bfloat16))
    result = train_class_token(half, classifier, 1, "tiger cat", TrainConfig(max_steps=2, backprop_depth=2, **FAST))
    assert result.token.vectors["clip_l"].dtype == torch.float32
    assert all(r.loss == r.loss and 0 < r.grad_norm < float("inf") for r in result.history)
    assert backend.unet.dtype == torch.bfloat16  # weights untouched in their own dtype


def test_fresh_seeds_draw_new_images_each_step(sd1_world):
    backend, classifier = sd1_world

    def batches(fresh: bool) -> list[torch.Tensor]:
        seen = []
        config = TrainConfig(max_steps=2, fresh_seeds=fresh, **{**FAST, "lr": 1e-9})  # the token barely moves
        train_class_token(backend, classifier, 1, "tiger cat", config, on_step=lambda r, images: seen.append(images))
        return seen

    same, fresh = batches(False), batches(True)
    assert torch.allclose(same[0], same[1], atol=1e-4)  # the paper's fixed seeds: the same images
    assert torch.equal(fresh[0], same[0])  # step 0 uses seed, seed+1, ... either way
    assert (fresh[1] - fresh[0]).abs().max() > 0.05  # then seeds from seed + step * batch


class _Spy:
    """Wraps a backend and records how it is driven."""

    def __init__(self, backend):
        self.inner, self.calls = backend, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def denoise(self, traj, cond, uncond, num_steps, **kw):
        self.calls.append(("denoise", num_steps, torch.is_grad_enabled()))
        return self.inner.denoise(traj, cond, uncond, num_steps, **kw)

    def predict_x0(self, traj, cond, uncond, **kw):
        self.calls.append(("x0", traj.done, torch.is_grad_enabled()))
        return self.inner.predict_x0(traj, cond, uncond, **kw)


def test_the_x0_gradient_point_predicts_at_intermediate_steps_and_stops_the_trajectory_there(sd1_world):
    backend, classifier = sd1_world
    spy = _Spy(backend)
    config = TrainConfig(max_steps=3, gradient_point="x0", x0_points=2, x0_interval=(0.25, 0.75), **FAST)
    result = train_class_token(spy, classifier, 1, "tiger cat", config)
    assert len(result.history) == 3
    predictions = [c for c in spy.calls if c[0] == "x0"]
    assert predictions and all(c[2] for c in predictions)  # x0 carries the gradient
    assert all(1 <= c[1] <= 3 for c in predictions)  # within the interval of 4 sampling steps
    assert not any(c[2] for c in spy.calls if c[0] == "denoise")  # no sampling step with gradient
    walked = sum(c[1] for c in spy.calls if c[0] == "denoise")
    assert walked < 3 * TINY_SAMPLING.sampling_steps  # the trajectory stops at the last prediction, not the end


def test_validation_picks_the_returned_token_and_drives_the_stop(sd1_world):
    backend, classifier = sd1_world
    config = TrainConfig(max_steps=3, validation_images=3, **FAST)
    result = train_class_token(backend, classifier, 1, "tiger cat", config)
    assert all(r.val_accuracy is not None for r in result.history)
    best = max(result.history, key=lambda r: r.selection_key())
    assert result.best_step == best.step and result.token.metadata["steps"] == str(best.step)


def test_the_enough_prob_margin_leaves_confident_images_alone():
    from dct_core.method.training import _Judge

    class Flat:
        multi_label = False

        def loss(self, logits, target, on=True):
            return torch.nn.functional.cross_entropy(logits, torch.full((logits.shape[0],), target), reduction="none")

    logits = torch.tensor([[4.0, 0.0], [0.0, 0.0]])  # p(target 0) = 0.98 and 0.5
    plain, capped = _Judge(Flat(), 0, True), _Judge(Flat(), 0, True, enough_prob=0.9)
    assert capped.loss(logits)[0] == 0 and plain.loss(logits)[0] > 0
    torch.testing.assert_close(capped.loss(logits)[1], plain.loss(logits)[1] + torch.log(torch.tensor(0.9)))


def test_norm_cap_keeps_the_token_near_the_vocabulary_scale(sd1_world):
    backend, classifier = sd1_world
    result = train_class_token(backend, classifier, 1, "tiger cat",
                               TrainConfig(max_steps=3, norm_cap=1.01, **{**FAST, "lr": 1.0}))
    init = backend.init_vectors("a", 1)["clip_l"].cpu()
    assert float(result.token.vectors["clip_l"].norm()) <= 1.01 * float(init.norm()) + 1e-4


def test_the_threshold_counts_a_window_of_steps_not_one_lucky_batch(sd1_world, monkeypatch):
    backend, classifier = sd1_world
    import dct_core.method.training as training

    hits = iter([2, 0, 2, 2, 2, 2])  # accuracy per step: 1.0, 0.0, 1.0, 1.0, ...

    class Lucky(training._Judge):
        def hits(self, logits):
            return torch.tensor([1] * next(hits))

    monkeypatch.setattr(training, "_Judge", Lucky)
    one = train_class_token(backend, classifier, 1, "tiger cat", TrainConfig(max_steps=6, **FAST))
    assert one.stopped == "threshold" and len(one.history) == 1
    hits = iter([2, 0, 2, 2, 2, 2])
    window = train_class_token(backend, classifier, 1, "tiger cat",
                               TrainConfig(max_steps=6, threshold_window=2, **FAST))
    assert window.stopped == "threshold" and len(window.history) == 4  # (0 + 1) / 2 < 1 until steps 3 and 4


def test_preserve_compares_each_image_with_what_the_prompt_alone_makes(sd1_world):
    backend, classifier = sd1_world
    spy = _Spy(backend)
    config = TrainConfig(max_steps=1, gradient_point="x0", preserve=5.0, **FAST)
    records = []
    train_class_token(spy, classifier, 1, "tiger cat", config, on_step=lambda r, i: records.append(r))
    predictions = [c for c in spy.calls if c[0] == "x0"]
    assert [c[2] for c in predictions] == [False, True]  # the prompt alone (no grad), then with the token
    assert predictions[0][1] == predictions[1][1]  # at the same step of the same seeds
    plain = TrainConfig(max_steps=1, gradient_point="x0", **FAST)
    baseline = []
    train_class_token(backend, classifier, 1, "tiger cat", plain, on_step=lambda r, i: baseline.append(r))
    assert records[0].loss >= baseline[0].loss  # the drift term adds to the loss (the token starts as "a")


def test_spread_adds_a_variety_term_against_the_prompt_alone_batch(sd1_world):
    from dct_core.method.training import _Spread

    backend, classifier = sd1_world
    spread = _Spread(classifier, on=True)
    images = generate_images(backend, ["a photo of a tiger cat"] * 4, range(4), TINY_SAMPLING)
    with spread.features() as seen:
        classifier(images[:1].repeat(4, 1, 1, 1))  # a collapsed batch: four copies of one image
    collapsed = spread.loss(seen, [images])
    with spread.features() as seen:
        classifier(images)
    same = spread.loss(seen, [images])
    assert float(collapsed) == pytest.approx(1.0, abs=1e-5)  # no variety where the prompt alone has some
    assert float(same) == pytest.approx(0.0, abs=1e-5)  # as varied as the prompt alone: nothing to pay

    before = state_fingerprint(*_modules(backend, classifier))
    spy = _Spy(backend)
    config = TrainConfig(max_steps=2, gradient_point="x0", spread=20.0, **FAST)
    records = []
    result = train_class_token(spy, classifier, 1, "tiger cat", config, on_step=lambda r, i: records.append(r))
    predictions = [c for c in spy.calls if c[0] == "x0"]
    assert [c[2] for c in predictions[:2]] == [False, True]  # the prompt alone's batch (no grad), then the token's
    assert len(records) == 2 and all(r.grad_norm > 0 for r in records)
    assert_same_state(before, state_fingerprint(*_modules(backend, classifier)))
    assert not torch.equal(result.token.vectors["clip_l"], backend.init_vectors("a", 1)["clip_l"].cpu()) \
        or result.best_step == 0
    with pytest.raises(DCTError, match="spread"):  # only at the x0 gradient point
        train_class_token(backend, classifier, 1, "tiger cat", TrainConfig(max_steps=1, spread=1.0, **FAST))


def test_free_words_keep_the_token_off_their_directions(sd1_world):
    """free_words: the token's change from its init word has no part along the words' (centred) embeddings."""
    from dct_core.method.free_words import free_directions

    backend, classifier = sd1_world
    words = "red, green, blue, white"
    basis = free_directions(backend, words)["clip_l"]
    assert basis.shape[1] == 3  # four words, centred: three directions
    init = backend.init_vectors("a", 1)["clip_l"].cpu()
    moved = {}
    for free in ("", words):
        config = TrainConfig(max_steps=2, free_words=free, **FAST)
        token = train_class_token(backend, classifier, 1, "tiger cat", config).token.vectors["clip_l"]
        moved[free] = (token - init).float()
    along = {free: float((d @ basis).norm() / d.norm()) for free, d in moved.items()}
    assert along[""] > 0.05 and along[words] < 1e-4, along
    assert moved[words].norm() > 0.5 * moved[""].norm()  # it still moves, in the other directions


def test_free_penalty_keeps_the_free_words_out_of_the_tokens_conditioning(sd1_world):
    """free_penalty: the token's conditioning moves less inside the span the free words give the prompt than
    without it; the span has one direction fewer than the words (centred), per training prompt."""
    from dct_core.method.free_words import FreeConditioning

    backend, classifier = sd1_world
    words = "red, green, blue, white"
    config = TrainConfig(max_steps=3, keep="last", **FAST)
    prompts = prompts_for_batch(config.templates, "tiger cat", config.batch_size)
    init = {k: v.float() for k, v in backend.init_vectors("a", 1).items()}
    measure = FreeConditioning(backend, words, prompts, init, 1)
    assert [q.shape[1] for q in measure.basis] == [3] * len(set(prompts))
    with torch.no_grad():
        assert float(measure.penalty(init)) == 0.0
        colour = float(measure.penalty({k: v.float() for k, v in backend.init_vectors("red", 1).items()}))
    inside = {}
    for weight in (0.0, 100.0):
        token = train_class_token(backend, classifier, 1, "tiger cat",
                                  replace(config, free_words=words, free_penalty=weight)).token
        with torch.no_grad():
            vectors = {k: v.float() for k, v in token.for_encoders(backend.encoders).items()}
            inside[weight] = float(measure.penalty(vectors))
    assert colour > 0.1 and inside[0.0] > 0, (colour, inside)
    assert inside[100.0] < 0.5 * inside[0.0], inside

    # A word whose conditioning overflows (an untrained half-precision encoder) is left out, not a crash.
    green = backend.init_vectors("green", 1)["clip_l"].float()
    encode = backend.encode

    def overflowing(prompts, vectors):
        out = encode(prompts, vectors)
        if vectors is not None and torch.equal(next(iter(vectors.values())).float(), green):
            return out._replace(hidden=out.hidden * float("nan"))
        return out

    backend.encode = overflowing
    try:
        assert [q.shape[1] for q in FreeConditioning(backend, words, prompts, init, 1).basis] == [2] * len(set(prompts))
    finally:
        del backend.encode


def test_words_of_the_class_name_are_not_free_for_its_token_and_settings_are_checked_up_front():
    from dct_core.config import COLOUR_WORDS
    from dct_core.method.free_words import not_in_class_name

    assert not_in_class_name(COLOUR_WORDS, "red-throated warbler", "bird") == COLOUR_WORDS.replace("red, ", "")
    assert not_in_class_name(COLOUR_WORDS, "Gray whale", "whale").count("grey") == 0  # one word, two spellings
    assert not_in_class_name("light blue, dark blue", "light blue jay") == "none"  # one word left: off
    assert not_in_class_name("rojo, marrón, azul", "oso marrón") == "rojo, azul"
    assert not_in_class_name(COLOUR_WORDS, "tiger cat") == COLOUR_WORDS
    with pytest.raises(DCTError, match="at least two words"):  # at plan time, before a model loads
        TrainConfig(free_words="red").validate()
    with pytest.raises(DCTError, match="free_penalty keeps the free words"):
        TrainConfig(free_penalty=1.0).validate()
    TrainConfig(free_words="none").validate()


def test_one_free_word_is_a_one_line_error_and_none_is_off(sd1_world):
    from dct_core.method.free_words import free_directions

    backend, classifier = sd1_world
    with pytest.raises(DCTError, match="at least two words"):
        train_class_token(backend, classifier, 1, "tiger cat", TrainConfig(max_steps=1, free_words="red", **FAST))
    assert free_directions(backend, "None") == {} and free_directions(backend, " , ") == {}


def test_keep_average_returns_the_mean_of_the_last_half_of_the_steps_tokens(sd1_world, monkeypatch):
    """keep="average": the tokens steps 3 and 4 of 4 were made with, averaged (Polyak), not any single one."""
    import dct_core.method.training as training

    backend, classifier = sd1_world
    averaged, real = [], training._mean
    monkeypatch.setattr(training, "_mean", lambda tokens: averaged.extend(tokens) or real(tokens))
    config = TrainConfig(max_steps=4, keep="average", threshold_window=4, fresh_seeds=True, **FAST)
    result = train_class_token(backend, classifier, 1, "tiger cat", config)
    assert len(result.history) == 4 and len(averaged) == 2
    mean = (averaged[0]["clip_l"] + averaged[1]["clip_l"]).cpu() / 2
    torch.testing.assert_close(result.token.vectors["clip_l"], mean)
    assert not torch.equal(averaged[0]["clip_l"], averaged[1]["clip_l"])  # two different tokens went into the mean
    assert not torch.equal(averaged[0]["clip_l"].cpu(), backend.init_vectors("a", 1)["clip_l"].cpu())  # not step 1's
    assert result.best_step == 3 and result.token.metadata["steps"] == "3"
    assert result.token_source() == "the mean of steps 3-4's tokens"  # what the result lines say
    from dct_core.jobs.run import RunOutcome

    assert "4 steps; token: the mean of steps 3-4's tokens (last batch accuracy " in RunOutcome(result).summary()
