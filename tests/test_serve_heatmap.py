"""Grad-CAM overlay of the service on a network whose evidence is known by construction."""
from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image
from torch import nn

from medclf.explain.cam import find_target_layer
from medclf.serve.heatmap import gradcam_png


def evidence_net() -> nn.Module:
    """1x1 convolution (weight 1) -> ReLU -> global average -> logits (+x, -x): the evidence
    for class 0 is exactly the bright pixels, for class 1 there is none."""
    conv = nn.Conv2d(1, 1, 1, bias=False)
    head = nn.Linear(1, 2, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)
        head.weight.copy_(torch.tensor([[1.0], [-1.0]]))
    return nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), head).eval()


def test_heatmap_is_hot_where_the_evidence_is():
    image = torch.full((1, 32, 32), 0.1)
    yy, xx = np.mgrid[:32, :32]
    disk = (yy - 10) ** 2 + (xx - 22) ** 2 < 36
    image[0][torch.from_numpy(disk)] = 1.0
    model = evidence_net()
    assert find_target_layer(model, image[None]) == "0"
    png = gradcam_png(model, image, class_index=0, alpha=1.0)  # pure heatmap, jet colours
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=float)
    assert rgb.shape == (32, 32, 3)
    hot = rgb[..., 0] - rgb[..., 2]  # jet: red for 1 (most evidence), blue for 0
    assert hot[disk].mean() > 50 and hot[~disk].mean() < -50
