"""The diversity index any model has (method/diversity.py): what it counts and what it must not count."""

import torch

from dct_core.classifiers.base import ImageClassifier
from dct_core.method.diversity import (
    KEPT_ABOVE,
    appearance_features,
    diversity_scores,
    off_class_directions,
    vendi,
    within_class,
)
from dct_core.method.evaluation import WITH, WITHOUT, diversity_report


def test_vendi_counts_distinct_images():
    assert abs(vendi(torch.ones(6, 4)) - 1.0) < 1e-6
    assert abs(vendi(torch.eye(5)) - 5.0) < 1e-6


def test_class_directions_and_class_means_do_not_count_as_variety():
    head = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]])  # two classes read dims 0 and 1
    x = torch.tensor([[5.0, 0, 1, 0], [0, 5.0, 1, 0]])
    assert torch.allclose(off_class_directions(x, head), torch.tensor([[0.0, 0, 1, 0], [0, 0, 1, 0]]).double())
    # Two classes, four identical images each: no spread inside either class.
    feats = torch.cat([torch.zeros(4, 3), torch.ones(4, 3)])
    logits = torch.cat([torch.tensor([[1.0, 0]]).repeat(4, 1), torch.tensor([[0.0, 1]]).repeat(4, 1)])
    assert within_class(feats, logits).abs().max() == 0


def _stem_classifier():
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                 torch.nn.Flatten(), torch.nn.Linear(8, 3))
    return ImageClassifier(name="stem", module=module.eval(), labels=["a", "b", "c"])


def _birds(colours: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """One image per colour: a square of that colour on a random grey background, at a random place."""
    images = torch.rand(len(colours), 1, 1, 1, generator=g).expand(-1, 3, 32, 32).clone()
    for i, c in enumerate(colours):
        x, y = (int(v) for v in torch.randint(0, 16, (2,), generator=g))
        images[i, :, y:y + 16, x:x + 16] = c.view(3, 1, 1)
    return images


def test_a_token_that_paints_every_image_one_colour_is_narrowed_and_one_that_keeps_colours_is_not():
    classifier = _stem_classifier()
    colours = torch.rand(32, 3, generator=torch.Generator().manual_seed(1))

    def seeds():  # the same backgrounds and places in both conditions, as on the same seeds
        return torch.Generator().manual_seed(0)

    plain = _birds(colours, seeds())
    one_colour = _birds(colours[:1].repeat(32, 1), seeds())
    same_spread = _birds(colours[torch.randperm(32, generator=seeds())], seeds())
    narrowed = diversity_report(classifier, {WITHOUT: plain, WITH: one_colour})
    kept = diversity_report(classifier, {WITHOUT: plain, WITH: same_spread})
    assert narrowed["ratio"] < KEPT_ABOVE and narrowed["kept"] is False
    assert kept["ratio"] >= KEPT_ABOVE and kept["kept"] is True
    assert appearance_features(classifier, plain).shape == (32, 16)
    assert diversity_scores(appearance_features(classifier, plain), None)["ratio"] is None


def test_the_leak_names_the_other_class_a_token_draws_and_ignores_the_target_and_falling_classes():
    from dct_core.method.evaluation import class_leak

    class Colour(ImageClassifier):  # "judges" an image by its strongest channel: 0 red, 1 green, 2 blue
        def __call__(self, images):
            return images.mean(dim=(2, 3)) * 10

    judge = Colour(module=torch.nn.Conv2d(3, 3, 1), labels=["red", "green", "blue"])
    red, green, blue = (torch.eye(3)[i].view(1, 3, 1, 1).expand(8, 3, 4, 4) for i in range(3))
    plain = torch.cat([red, red, green, green])  # half red, half green
    token = torch.cat([blue, blue, blue, green])  # the target (blue) rises, red falls, green falls too
    assert class_leak(judge, {WITHOUT: plain, WITH: token}, target=2)["points"] == 0.0
    leaky = torch.cat([blue, blue, green, green]).clone()
    leaky[:4] = torch.eye(3)[1].view(3, 1, 1)  # 4 of the target's images are green instead: green rises 12.5 points
    report = class_leak(judge, {WITHOUT: plain, WITH: leaky}, target=2)
    assert report["points"] == 0.125 and list(report["classes"]) == ["green"]
