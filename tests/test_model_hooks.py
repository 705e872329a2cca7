"""forward_with_hooks: one eval-mode pass with temporary hooks; the model is left as it was."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from medclf.models.hooks import forward_with_hooks


def _net():
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))


def test_hooks_see_one_eval_pass_and_are_removed():
    torch.manual_seed(0)
    net = _net()
    net(torch.rand(2, 1, 8, 8))  # materialise the lazy layer
    net.train()
    seen = []
    images = torch.rand(3, 1, 8, 8)
    out = forward_with_hooks(net, images, [(net[2], lambda m, i, o: seen.append((m.training, o.requires_grad)))])
    assert seen == [(False, False)]  # eval mode, no gradients
    assert net.training and all(not m._forward_hooks for m in net.modules())
    net.eval()
    assert torch.equal(out, net(images))  # the eval-mode output, batch statistics untouched


def test_model_is_restored_when_the_forward_pass_raises():
    net = _net().eval()

    def fail(m, i, o):
        raise RuntimeError("hook failed")

    with pytest.raises(RuntimeError, match="hook failed"):
        forward_with_hooks(net, torch.rand(1, 1, 8, 8), [(net[0], fail), (net[2], fail)])
    assert not net.training and all(not m._forward_hooks for m in net.modules())
