"""Block-level gradient checkpointing by a module's blocks: the same gradients, activations recomputed, forwards
restored, and the blocks a ResNet classifier splits into."""

from __future__ import annotations

import timm
import torch

from dct_core.method.checkpointing import block_checkpointing, checkpoint_units


def _grad(model: torch.nn.Module, x: torch.Tensor, units=None) -> tuple[torch.Tensor, int]:
    """The input's gradient, and how many unit calls ran (forward and recompute) when checkpointed."""
    calls = {"n": 0}

    def run(unit, forward, args, kwargs):
        calls["n"] += 1
        return forward(*args, **kwargs)

    x = x.clone().requires_grad_(True)
    if units is None:
        model(x).square().sum().backward()
    else:
        with block_checkpointing(units, run):
            model(x).square().sum().backward()
    return x.grad, calls["n"]


def test_a_resnet_splits_into_its_bottlenecks_and_checkpointing_keeps_its_gradient():
    torch.manual_seed(0)
    net = timm.create_model("resnet18", pretrained=False, num_classes=5).eval()
    units = checkpoint_units(net)
    names = [type(u).__name__ for u in units]
    assert names.count("BasicBlock") == 8 and "Linear" in names  # layer1..4 opened up, not whole
    x = torch.randn(2, 3, 64, 64)
    plain, _ = _grad(net, x)
    ckpt, calls = _grad(net, x, units)
    torch.testing.assert_close(ckpt, plain)
    # the units ran again in backward (their activations were not kept); one that saves nothing for backward
    # (the average pool) is never recomputed
    assert 2 * len(units) - 2 <= calls < 2 * len(units)
    assert not any("forward" in m.__dict__ for m in net.modules())


def test_bare_module_holders_are_opened_and_an_own_forward_is_put_back():
    holder = torch.nn.Module()
    holder.block = torch.nn.ModuleList([torch.nn.Linear(3, 3), torch.nn.Linear(3, 3)])
    outer = torch.nn.Module()
    outer.up = torch.nn.ModuleList([holder])
    outer.out = torch.nn.Linear(3, 1)
    assert checkpoint_units(outer) == [holder.block[0], holder.block[1], outer.out]
    own = outer.out.forward
    outer.out.forward = own  # an instance-level forward set by someone else
    with block_checkpointing([outer.out]):
        assert outer.out.forward is not own
    assert outer.out.forward is own
