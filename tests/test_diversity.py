"""The diversity index any model has (method/diversity.py): what it counts and what it must not count."""

import torch

from dct_core.method.diversity import (
    KEPT_ABOVE,
    diversity_scores,
    off_class_directions,
    vendi,
    within_class,
)


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


def test_a_token_that_paints_every_image_alike_is_narrowed_and_one_that_adds_its_class_is_kept():
    g = torch.Generator().manual_seed(0)
    head = torch.randn(3, 16, generator=g)
    varied = torch.randn(32, 16, generator=g)
    logits_mixed = torch.randn(32, 3, generator=g)
    collapsed = varied[:1].repeat(32, 1) + 0.01 * torch.randn(32, 16, generator=g)
    narrowed = diversity_scores(varied, collapsed, head, logits_mixed, logits_mixed)
    assert narrowed["ratio"] < KEPT_ABOVE and narrowed["kept"] is False
    # The same varied images moved along the class directions only (the token adds its class): kept.
    shifted = varied + 3 * head[0]
    to_target = torch.zeros(32, 3)
    to_target[:, 0] = 5
    kept = diversity_scores(varied, shifted, head, logits_mixed, to_target)
    assert kept["ratio"] >= KEPT_ABOVE and kept["kept"] is True
    assert diversity_scores(varied, None, head, logits_mixed, None)["ratio"] is None
