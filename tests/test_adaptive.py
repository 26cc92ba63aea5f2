"""Test-time adaptive conditioning (DATE) on the tiny world."""

import pytest
import torch

from conftest import TINY_SAMPLING
from dct_core.errors import DCTError
from dct_core.method.adaptive import AdaptiveConfig, adaptive_generate, class_score, date_adapt
from dct_core.method.freezing import frozen
from dct_core.method.generation import generate_images

PROMPTS = ["a photo of a tiger cat"] * 4
SEEDS = [20, 21, 22, 23]


def test_rho_zero_is_bit_identical_to_plain_sampling(sd1_world):
    backend, classifier = sd1_world
    plain = generate_images(backend, PROMPTS, SEEDS, TINY_SAMPLING)
    same = adaptive_generate(backend, PROMPTS, SEEDS, TINY_SAMPLING, class_score(classifier, 1),
                             AdaptiveConfig(rho=0.0))
    assert torch.equal(plain, same)


def test_updates_happen_only_at_the_chosen_steps():
    config = AdaptiveConfig(every=2, interval=(0.0, 1.0))
    assert config.update_steps(10) == [0, 2, 4, 6, 8]
    assert AdaptiveConfig(at_steps=(1, 3, 99)).update_steps(4) == [1, 3]
    assert AdaptiveConfig(interval=(0.5, 1.0)).update_steps(4) == [2, 3]
    assert AdaptiveConfig(rho=0.0, at_steps=(1, 3)).update_steps(4) == []  # rho 0: no step is updated
    with pytest.raises(DCTError):
        AdaptiveConfig(interval=(0.8, 0.2)).validate()


def test_the_shared_loop_moves_each_part_per_image_from_original_or_current():
    """date_adapt, the loop engine and node both run, on plain callables: x0 = a linear function of the parts."""
    original = [torch.zeros(2, 3, 4), torch.zeros(2, 5), torch.zeros(2, 6)]  # the third part is not used
    current = [torch.ones(2, 3, 4), torch.ones(2, 5), torch.ones(2, 6)]
    calls = []

    def predict_x0(values):
        calls.append(len(values))
        return values[0].sum((1, 2)) * torch.tensor([1.0, 100.0]) + values[1].sum(1)

    def run(**config):
        return date_adapt(original, current, predict_x0, lambda x0: x0 * 2, lambda images: images,
                          AdaptiveConfig(rho=0.3, **config))

    moved = run(updates_per_step=2)  # reset: from the original; the gradient is constant, so 2 steps of 0.3
    assert calls == [3, 3]
    for part, value in zip(original[:2], moved[:2]):
        torch.testing.assert_close((value - part).flatten(1).norm(dim=1), torch.full((2,), 0.6))
        assert bool((value > part).all())
    assert torch.equal(moved[2], original[2])  # no gradient: left as it is
    accumulated = run(reset=False)
    torch.testing.assert_close((accumulated[0] - current[0]).flatten(1).norm(dim=1), torch.full((2,), 0.3))
    assert torch.equal(accumulated[2], current[2])
    mask = torch.tensor([[True, False, False], [False, False, True]])
    masked = date_adapt(original, current, predict_x0, lambda x0: x0, lambda images: images, AdaptiveConfig(rho=0.3),
                        masks=[mask])
    assert torch.equal(masked[0].abs().sum(-1) > 0, mask) and bool((masked[1] != 0).all())


def test_adaptive_sampling_raises_the_target_probability(sd1_world):
    backend, classifier = sd1_world
    target = classifier.class_index("tiger cat")
    plain = generate_images(backend, PROMPTS, SEEDS, TINY_SAMPLING)
    updated = []
    adapted = adaptive_generate(backend, PROMPTS, SEEDS, TINY_SAMPLING, class_score(classifier, target),
                                AdaptiveConfig(rho=0.5, updates_per_step=2, reset=False), on_update=updated.append)
    assert updated == list(range(TINY_SAMPLING.sampling_steps))
    with torch.no_grad():
        before = classifier(plain).softmax(-1)[:, target].mean()
        after = classifier(adapted).softmax(-1)[:, target].mean()
    assert after > before * 1.5, (float(before), float(after))


def test_token_target_moves_only_the_class_token_positions(sd1_world):
    backend, classifier = sd1_world
    from dct_core.method.adaptive import adapt_conditioning

    vectors = backend.init_vectors("a", 1)
    prompts = ["a photo of {token} tiger cat"] * 2
    with frozen([*backend.modules(), classifier.module]), torch.no_grad():
        cond = backend.encode(prompts, vectors)
        uncond = backend.negative("", 2)
        traj = backend.start([0, 1], TINY_SAMPLING)
        backend.denoise(traj, cond, uncond, 2)
    with frozen([*backend.modules(), classifier.module]):
        moved = adapt_conditioning(backend, traj, cond, uncond, cond, class_score(classifier, 1),
                                   AdaptiveConfig(date_target="token"))
    changed = (moved.hidden - cond.hidden).abs().sum(-1) > 0
    assert torch.equal(changed, cond.token_mask)
    with pytest.raises(DCTError, match="needs a class token"):
        plain = backend.encode(["a photo of a cat"] * 2, None)
        adapt_conditioning(backend, traj, plain, uncond, plain, class_score(classifier, 1),
                           AdaptiveConfig(date_target="token"))


def test_only_chosen_steps_update_and_sdxl_pooled_moves_too():
    from conftest import calibrated_classifier
    from dct_core.backends.diffusers_backend import DiffusersBackend
    from dct_core.method.adaptive import adapt_conditioning
    from dct_core.testing.tiny import tiny_pipeline

    backend = DiffusersBackend(tiny_pipeline("sdxl"))
    classifier = calibrated_classifier(backend)
    updated = []
    adaptive_generate(backend, PROMPTS[:2], SEEDS[:2], TINY_SAMPLING, class_score(classifier, 1),
                      AdaptiveConfig(rho=0.3, at_steps=(1, 3)), on_update=updated.append)
    assert updated == [1, 3]
    with frozen(backend.modules()), torch.no_grad():
        cond = backend.encode(PROMPTS[:2], None)
        uncond = backend.negative("", 2)
        traj = backend.start(SEEDS[:2], TINY_SAMPLING)
    with frozen(backend.modules()):
        moved = adapt_conditioning(backend, traj, cond, uncond, cond, class_score(classifier, 1),
                                   AdaptiveConfig(date_target="pooled"))
        kept = adapt_conditioning(backend, traj, cond, uncond, cond, class_score(classifier, 1), AdaptiveConfig())
    assert not torch.equal(moved.pooled, cond.pooled) and torch.equal(kept.pooled, cond.pooled)
    assert not torch.equal(moved.hidden, cond.hidden)
