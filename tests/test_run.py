"""The one run layer: presets, the token metadata schema, checks before training, the DATE step, the
registry of built-in models and classifier sources."""

import json

import pytest
import torch

from conftest import TINY_SAMPLING
from dct_core.config import DEFAULT_PRESET, PAPER_TEMPLATES, PRESETS, SamplingConfig, TrainConfig, preset_config
from dct_core.errors import DCTError
from dct_core.formats.tokens import load_class_token
from dct_core.jobs.run import METADATA_FORMAT, METADATA_KEYS, TrainJob, run_training
from dct_core.method.adaptive import AdaptiveConfig, adapt_conditioning, class_score, date_update
from dct_core.registry import classifier_source, named_model


def test_the_paper_preset_is_the_dataclass_defaults_and_unset_overrides_keep_them():
    assert "paper" in PRESETS and DEFAULT_PRESET in PRESETS
    default = preset_config()
    assert default.gradient_point == "x0" and default.fresh_seeds  # the measured default (README, "Recipes")
    assert preset_config("paper") == TrainConfig()
    config = preset_config("paper", lr=0.1, templates=None, batch_size=None, sampling={"sampling_steps": 4})
    assert config.lr == 0.1 and config.templates == PAPER_TEMPLATES and config.batch_size == TrainConfig().batch_size
    assert config.sampling == SamplingConfig(sampling_steps=4)
    assert preset_config("paper", templates=["a {token} {label}"]).templates == ("a {token} {label}",)


@pytest.mark.parametrize("call, message", [
    (lambda: preset_config("nope"), "unknown recipe 'nope'"),
    (lambda: preset_config("paper", learning_rate=0.1), "unknown training setting(s) learning_rate"),
    (lambda: preset_config("paper", backprop_depth=99), "backprop depth 99"),
])
def test_bad_presets_and_settings_are_one_line_errors(call, message):
    with pytest.raises(DCTError, match=message.replace("(", r"\(").replace(")", r"\)")):
        call()


class _NoTraining:
    """A backend that fails the test if training starts."""

    device, dtype, encoders = torch.device("cpu"), torch.float32, {"clip_l": 32}

    def __getattr__(self, name):
        raise AssertionError(f"the backend was used ({name}) although the save target was bad")


def test_a_bad_save_target_stops_the_run_before_any_training(sd1_world, tmp_path):
    _, classifier = sd1_world
    (tmp_path / "tok.safetensors").write_bytes(b"x")
    (tmp_path / "folder.safetensors").mkdir()
    for out, message in ((tmp_path / "tok", "already exists"), (tmp_path / "folder.safetensors", "folder")):
        job = TrainJob(_NoTraining(), classifier, 1, preset_config(sampling=TINY_SAMPLING), out=out)  # type: ignore[arg-type]
        with pytest.raises(DCTError, match=message):
            run_training(job)


def test_run_saves_one_metadata_schema_and_the_trigger_is_the_file_name(sd1_world, tmp_path):
    backend, classifier = sd1_world
    config = preset_config("paper", max_steps=2, batch_size=2, lr=0.1, sampling=TINY_SAMPLING)
    job = TrainJob(backend, classifier, 1, config, name="tc", prompt_label="cat", out=tmp_path / "tc",
                   base_model="tiny", recipe="paper")
    outcome = run_training(job)
    assert outcome.path == tmp_path / "tc.safetensors" and outcome.save_error is None
    token = load_class_token(outcome.path)
    meta = token.metadata
    assert set(METADATA_KEYS) <= set(meta), set(METADATA_KEYS) - set(meta)
    assert meta["format"] == METADATA_FORMAT and meta["recipe"] == "paper" and meta["trigger"] == "tc"
    assert meta["prompt_label"] == "cat" and meta["class_label"] == classifier.class_name(1)
    assert json.loads(meta["templates"]) == list(PAPER_TEMPLATES)
    assert meta["trained_steps"] in ("1", "2") and meta["stopped"] in ("max_steps", "threshold")
    assert token.name == "tc"


def test_date_update_moves_each_image_by_rho_whatever_the_others_gradients():
    value = torch.zeros(3, 4, 8)
    grad = torch.randn(3, 4, 8) * torch.tensor([1e-3, 1.0, 1e3]).view(3, 1, 1)
    moved = date_update(value, grad, 0.25)
    torch.testing.assert_close((moved - value).flatten(1).norm(dim=1), torch.full((3,), 0.25))
    mask = torch.zeros(3, 4, dtype=torch.bool)
    mask[:, 2] = True
    masked = date_update(value, grad, 0.25, mask=mask)
    assert torch.equal((masked - value).abs().sum(-1) > 0, mask)
    # The prior pulls toward the original: with no score gradient the step points straight at it.
    original = torch.ones(1, 4, 8)
    pulled = date_update(value, torch.zeros_like(value), 0.5, original=original, prior=1.0)
    assert torch.allclose(pulled, torch.full_like(value, 0.5 / (32 ** 0.5)))


def test_the_engine_update_is_date_update_per_image(sd1_world, monkeypatch):
    import dct_core.method.adaptive as adaptive

    backend, classifier = sd1_world
    seen = []

    def spy(value, grad, rho, **kw):
        out = date_update(value, grad, rho, **kw)
        seen.append((value.detach().clone(), out))
        return out

    monkeypatch.setattr(adaptive, "date_update", spy)
    cond = backend.encode(["a photo of a cat", "a photo of a dog"], None)
    uncond = backend.negative("", 2)
    traj = backend.start([0, 1], TINY_SAMPLING)
    config = AdaptiveConfig(rho=0.3)
    moved = adapt_conditioning(backend, traj, cond, uncond, cond, class_score(classifier, 1), config)
    assert len(seen) == 1
    steps = (moved.hidden - cond.hidden).float().flatten(1).norm(dim=1)
    torch.testing.assert_close(steps, torch.full((2,), 0.3), rtol=1e-4, atol=1e-4)


def test_the_world_registers_its_model_and_classifiers():
    world = named_model("world")
    assert world is not None and world.sampling.resolution == 32
    assert named_model("./some/folder") is None
    source = classifier_source("world")
    assert source is not None and source.load("guide").name == "world:guide"
    with pytest.raises(DCTError, match="no classifier 'nope'"):
        source.load("nope")


def _diverging(classifier, after: int):
    """The classifier's loss turns NaN from its ``after``-th call on (a run that diverges midway)."""
    calls = {"n": 0}
    real = classifier.loss

    def loss(logits, target, on=True):
        calls["n"] += 1
        out = real(logits, target, on)
        return out * float("nan") if calls["n"] > after else out

    return loss


@pytest.mark.parametrize("keep", [True, False])
def test_a_run_that_diverges_keeps_its_best_finite_token_unless_the_job_retries(sd1_world, tmp_path, monkeypatch,
                                                                                 keep):
    backend, classifier = sd1_world
    config = preset_config("paper", max_steps=4, batch_size=1, lr=0.1, accuracy_threshold=1.0, patience=4,
                           sampling=TINY_SAMPLING)
    monkeypatch.setattr(classifier, "loss", _diverging(classifier, after=2))
    outcome = run_training(TrainJob(backend, classifier, 1, config, name="tc", out=tmp_path / "tc",
                                    keep_diverged=keep))
    assert outcome.diverged and len(outcome.result.history) == 2
    if keep:  # the CLI, the node and the demo: nothing lost
        assert outcome.path is not None and outcome.error() is None
        assert load_class_token(outcome.path).metadata["stopped"] == "non-finite"
    else:  # the library: no file, so the class is trained again on the next run
        assert outcome.path is None and not (tmp_path / "tc.safetensors").exists()
    assert "diverged" in outcome.diverged_message() and "\n" not in outcome.diverged_message()


def test_a_run_that_diverges_at_its_first_step_is_a_one_line_error(sd1_world, tmp_path, monkeypatch):
    backend, classifier = sd1_world
    monkeypatch.setattr(classifier, "loss", _diverging(classifier, after=0))
    config = preset_config("paper", max_steps=2, batch_size=1, sampling=TINY_SAMPLING)
    outcome = run_training(TrainJob(backend, classifier, 1, config, out=tmp_path / "tc"))
    assert outcome.path is None and "diverged" in (outcome.error() or "")
