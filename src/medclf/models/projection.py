"""A 2D view of a volume: a CNN on its three axis projections, and its fusion with a 3D CNN."""
from __future__ import annotations

import torch
from torch import nn

from .small_cnn import SmallCNN


def axis_projections(volumes: torch.Tensor) -> list[torch.Tensor]:
    """Mean and maximum projections of volumes along each spatial axis.

    Args:
        volumes: ``(N, C, D, H, W)``.

    Returns:
        three images ``(N, 2C, H, W)``, ``(N, 2C, D, W)``, ``(N, 2C, D, H)``: the mean
        (thickness for a binary mask, a digitally reconstructed radiograph for intensities)
        and the maximum (silhouette, maximum intensity projection) along depth, height and
        width, concatenated on the channel axis.
    """
    return [torch.cat([volumes.mean(axis), volumes.amax(axis)], 1) for axis in (2, 3, 4)]


class ProjectionCNN(nn.Module):
    """A 2D CNN shared across the three axis projections of a volume.

    Each projection of :func:`axis_projections` goes through the same 2D trunk (the VGG-style
    :class:`~medclf.models.small_cnn.SmallCNN` features: conv-BN-ReLU blocks, each followed by
    a 2x max-pool, then global average pooling); the three feature vectors are concatenated
    in axis order and a linear layer gives the logits. The multi-view idea of Su et al. 2015
    (MVCNN, "Multi-view convolutional neural networks for 3D shape recognition"), with the
    three orthogonal projections as views: a 2D network sees each view at the full in-plane
    resolution for a fraction of the cost of a 3D network.

    Input ``(N, in_channels, D, H, W)``; output logits ``(N, num_classes)``.

    Args:
        in_channels: channels of the volume.
        num_classes: output classes.
        filters: output channels of each stage of the 2D trunk.
        dropout: dropout before the linear classifier.
    """

    def __init__(self, in_channels: int, num_classes: int, filters=(16, 32, 64, 128), dropout: float = 0.2):
        super().__init__()
        trunk = SmallCNN(2, 2 * in_channels, num_classes, filters=filters, blocks_per_stage=1,
                         stem_kernel_size=3, stem_stride=1, stem_pool=False, downsample="maxpool")
        self.features, self.pool = trunk.features, trunk.pool
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(3 * filters[-1], num_classes))

    def forward(self, x):
        views = axis_projections(x)
        if views[0].shape == views[1].shape == views[2].shape:  # cubic: one batched pass
            pooled = self.pool(self.features(torch.cat(views))).flatten(1)
            features = torch.cat(pooled.chunk(3), 1)
        else:
            features = torch.cat([self.pool(self.features(v)).flatten(1) for v in views], 1)
        return self.head(features)


class VolumeAndProjections(nn.Module):
    """Late fusion of a 3D CNN and a :class:`ProjectionCNN`: the mean of their logits.

    The two networks look at different things: the 3D CNN at the volume (optionally
    max-pooled ``volume_pool`` times first, to save compute), the projection network at its
    three axis projections at full resolution. Their errors are less correlated than those
    of two 3D CNNs from different seeds, so their average ranks better than either (see
    ``medclf.plan.Planner.determine_3d_network``).

    Input ``(N, C, D, H, W)``; output logits ``(N, num_classes)``. The 3D branch runs last,
    so its last convolution block is the default Grad-CAM layer and heatmaps stay 3D.

    Args:
        volume: the 3D network, ``(N, C, D', H', W') -> (N, num_classes)``.
        projections: the projection network.
        volume_pool: 2x max-pools applied to the input of the 3D network (0: none).
    """

    def __init__(self, volume: nn.Module, projections: ProjectionCNN, volume_pool: int = 0):
        super().__init__()
        self.projections = projections
        self.shrink = nn.Sequential(*[nn.MaxPool3d(2, ceil_mode=True) for _ in range(volume_pool)])
        self.volume = volume

    def branches(self) -> list[nn.Module]:
        """The fused networks, each ending in its own classifier (an output bias shift,
        :func:`~medclf.models.prior.apply_output_prior`, applies to each)."""
        return [self.projections, self.volume]

    def forward(self, x):
        from_projections = self.projections(x)  # first: the 3D branch holds the last convolution
        return (from_projections + self.volume(self.shrink(x))) / 2
