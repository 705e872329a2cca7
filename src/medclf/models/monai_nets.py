"""ResNet-18/34/50/101/152 (He et al. 2016) and DenseNet-121 (Huang et al. 2017) from MONAI.

Inputs ``(N, C, H, W)`` or ``(N, C, D, H, W)`` per ``spatial_dims``; output logits
``(N, num_classes)``. Trained from scratch (pretrained weights are not downloaded);
``model.weights`` loads user-supplied weights.
"""
from __future__ import annotations

from monai.networks import nets
from torch import nn

from .registry import register_model


def _resnet(factory):
    def build(cfg, in_channels: int, num_classes: int) -> nn.Module:
        return factory(spatial_dims=cfg.spatial_dims, n_input_channels=in_channels,
                       num_classes=num_classes, pretrained=False)
    return build


for _name in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152"):
    register_model(_name)(_resnet(getattr(nets, _name)))


@register_model("densenet121")
def densenet121(cfg, in_channels: int, num_classes: int) -> nn.Module:
    return nets.DenseNet121(spatial_dims=cfg.spatial_dims, in_channels=in_channels,
                            out_channels=num_classes, dropout_prob=cfg.dropout)
