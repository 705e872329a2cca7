"""A configurable small CNN for 2D images and 3D volumes, built from MONAI blocks."""
from __future__ import annotations

from monai.networks.blocks import Convolution
from monai.networks.layers import Pool
from torch import nn

from .registry import register_model

_NORMS = {"batch": "BATCH", "instance": "INSTANCE", "group": ("GROUP", {"num_groups": 8}), "none": None}
_ACTS = {"relu": "RELU", "leakyrelu": ("LEAKYRELU", {"negative_slope": 0.1}), "elu": "ELU",
         "gelu": "GELU", "prelu": "PRELU"}


class SmallCNN(nn.Module):
    """Stem convolution, then stages of conv-norm-activation blocks, global pooling, linear.

    Input ``(N, in_channels, H, W)`` (2D) or ``(N, in_channels, D, H, W)`` (3D); output
    logits ``(N, num_classes)``. The stem (``stem_kernel_size``, ``stem_stride``) shrinks
    large inputs cheaply. With ``downsample="stride"`` each stage after the first starts
    with a convolution of stride ``stride``; with ``downsample="maxpool"`` every convolution
    has stride 1 and each stage ends with a 2x max-pool, the stem being the first
    convolution of the first stage (the classic VGG-style CNN, Simonyan & Zisserman 2015).
    Blocks are MONAI ``Convolution`` (conv -> norm -> activation).

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        num_classes: output classes.
        filters: output channels of each stage.
        blocks_per_stage: convolution blocks per stage.
        kernel_size: kernel size of the stage convolutions (pixels).
        stride: stride of the first convolution of each stage after the first
            (``downsample="stride"`` only).
        padding: zero padding of the stage convolutions (pixels); ``None`` keeps the size
            for odd kernels.
        stem_kernel_size: kernel size of the first convolution.
        stem_stride: stride of the first convolution.
        stem_pool: a 2x max-pool after a strided stem (the stem then shrinks by ``2 * stem_stride``).
        downsample: ``"stride"`` or ``"maxpool"`` (above). Max-pooling keeps thin bright
            structures, such as the limbs of a segmentation mask, that a strided convolution
            thins out. Its pools use ``ceil_mode``, so a side of 1 voxel stays 1.
        dropout: dropout before the linear classifier.
        activation: activation name as in :class:`medclf.config.ModelConfig`.
        norm: normalisation name as in :class:`medclf.config.ModelConfig`.
    """

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int,
                 filters=(32, 64, 128, 256), blocks_per_stage: int = 2, kernel_size: int = 3,
                 stride: int = 2, padding: int | None = None, stem_kernel_size: int = 5,
                 stem_stride: int = 2, dropout: float = 0.2, activation: str = "relu",
                 norm: str = "batch", stem_pool: bool = True, downsample: str = "stride"):
        super().__init__()
        act, nrm = _ACTS[activation], _NORMS[norm]

        def block(cin, cout, k, s, p=None):
            return Convolution(spatial_dims, cin, cout, strides=s, kernel_size=k, act=act,
                               norm=nrm, padding=p, bias=nrm is None)

        stem_padding = (stem_kernel_size - 1) // 2  # 'same' for odd kernels; 0 for a patchify stem (k = stride = 2)
        layers = [block(in_channels, filters[0], stem_kernel_size, stem_stride, stem_padding)]
        if stem_stride > 1 and stem_pool:
            layers.append(Pool["MAX", spatial_dims](kernel_size=2))
        channels = filters[0]
        maxpool = downsample == "maxpool"
        for i, width in enumerate(filters):
            for j in range(blocks_per_stage):
                if maxpool and i == 0 and j == 0:
                    continue  # the stem is the first convolution of the first stage
                s = stride if (i > 0 and j == 0 and not maxpool) else 1
                layers.append(block(channels, width, kernel_size, s, padding))
                channels = width
            if maxpool:
                layers.append(Pool["MAX", spatial_dims](kernel_size=2, ceil_mode=True))
        self.features = nn.Sequential(*layers)
        self.pool = Pool["ADAPTIVEAVG", spatial_dims](1)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels, num_classes))

    def forward(self, x):
        return self.head(self.pool(self.features(x)))


@register_model("small_cnn")
def small_cnn(cfg, in_channels: int, num_classes: int) -> nn.Module:
    return SmallCNN(cfg.spatial_dims, in_channels, num_classes, filters=cfg.filters,
                    blocks_per_stage=cfg.blocks_per_stage, kernel_size=cfg.kernel_size,
                    stride=cfg.stride, padding=cfg.padding, stem_kernel_size=cfg.stem_kernel_size,
                    stem_stride=cfg.stem_stride, dropout=cfg.dropout, activation=cfg.activation,
                    norm=cfg.norm, stem_pool=cfg.stem_pool, downsample=cfg.downsample)
