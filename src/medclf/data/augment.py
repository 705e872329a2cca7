"""Train-only random augmentation, built from MONAI array transforms.

One ``RandAffine`` does rotation, zoom, translation and shear in a single resampling;
then flips (left-right, up-down, and for volumes the depth axis), random 90-degree
rotations in the plane of the last two axes, intensity shift (brightness), intensity scaling (contrast) and Gaussian noise.
All transforms take ``spatial_dims`` from the array, so 2D ``(C, H, W)`` and 3D
``(C, D, H, W)`` share this code.
"""
from __future__ import annotations

import math

import torch
from monai.transforms import (
    Compose,
    RandAffine,
    RandFlip,
    RandGaussianNoise,
    RandRotate90,
    RandScaleIntensity,
    RandShiftIntensity,
)
from torch.nn import functional as F


def build_augmentation(augment, spatial_dims: int, image_size: list[int], seed: int) -> Compose | None:
    """The training augmentation for arrays ``(C, *spatial)``, or None when disabled.

    Args:
        augment: the ``augment`` config section.
        spatial_dims: 2 or 3.
        image_size: spatial size in pixels, used to turn the relative translation into pixels.
        seed: seeds the transforms' own random state (reproducible augmentation).
    """
    if not augment.enabled:
        return None
    radians = math.radians(augment.rotate_deg)
    size = list(image_size)[-spatial_dims:]
    if spatial_dims == 2:
        rotate_range = (radians,)
        shear_range = (augment.shear, augment.shear)
    else:
        rotate_range = (radians, radians, radians)
        shear_range = (augment.shear,) * 6
    transforms = []
    if augment.prob > 0:
        transforms.append(RandAffine(prob=augment.prob, rotate_range=rotate_range, shear_range=shear_range,
                                     translate_range=[augment.translate * s for s in size],
                                     scale_range=[augment.zoom] * spatial_dims, padding_mode="border",
                                     cache_grid=True, spatial_size=size))
    if augment.flip_prob > 0:
        transforms.append(RandFlip(prob=augment.flip_prob, spatial_axis=spatial_dims - 1))  # left-right
    if augment.vertical_flip_prob > 0:
        transforms.append(RandFlip(prob=augment.vertical_flip_prob, spatial_axis=spatial_dims - 2))
    if augment.depth_flip_prob > 0 and spatial_dims == 3:
        transforms.append(RandFlip(prob=augment.depth_flip_prob, spatial_axis=0))
    if augment.rot90_prob > 0 and size[-1] == size[-2]:
        transforms.append(RandRotate90(prob=augment.rot90_prob, max_k=3,
                                       spatial_axes=(spatial_dims - 2, spatial_dims - 1)))
    if augment.brightness > 0:
        transforms.append(RandShiftIntensity(offsets=augment.brightness, prob=0.5))
    if augment.contrast > 0:
        transforms.append(RandScaleIntensity(factors=augment.contrast, prob=0.5))
    if augment.noise_std > 0:
        transforms.append(RandGaussianNoise(prob=0.3, std=augment.noise_std))
    composed = Compose(transforms)
    composed.set_random_state(seed=seed)
    return composed


class BatchAugmentation:
    """The same augmentation as :func:`build_augmentation`, applied to a whole batch at once.

    Per-sample MONAI transforms cost milliseconds of Python overhead per image, which
    dominates an epoch of small images (28x28 MedMNIST) or volumes on a CPU. Here every
    random choice is still drawn per sample, but the work is a handful of tensor
    operations per batch: flips and 90-degree rotations by ``torch.where``, the affine
    (rotation, zoom, shear, translation) by PyTorch's ``affine_grid`` / ``grid_sample``
    (bilinear/trilinear, border padding, as MONAI's ``RandAffine`` does), then intensity
    shift, scaling and Gaussian noise.

    Args:
        augment: the ``augment`` config section.
        spatial_dims: 2 or 3.
        seed: seeds this augmentation's own generator.

    Call with a float tensor ``(N, C, H, W)`` or ``(N, C, D, H, W)``; returns the same shape.
    """

    def __init__(self, augment, spatial_dims: int, seed: int):
        self.cfg = augment
        self.dims = spatial_dims
        self.generator = torch.Generator().manual_seed(seed)

    def _rand(self, n: int) -> torch.Tensor:
        return torch.rand(n, generator=self.generator)

    def _flip(self, x: torch.Tensor, prob: float, axis: int) -> torch.Tensor:
        if prob <= 0:
            return x
        mask = (self._rand(len(x)) < prob).view(-1, *([1] * (x.ndim - 1)))
        return torch.where(mask, x.flip(axis), x)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        cfg, n, dims = self.cfg, len(x), self.dims
        if n == 0:
            return x
        if cfg.prob > 0:
            x = self._affine(x)
        x = self._flip(x, cfg.flip_prob, x.ndim - 1)
        x = self._flip(x, cfg.vertical_flip_prob, x.ndim - 2)
        if dims == 3:
            x = self._flip(x, cfg.depth_flip_prob, 2)
        if cfg.rot90_prob > 0 and x.shape[-1] == x.shape[-2]:
            k = torch.randint(1, 4, (n,), generator=self.generator)
            k[self._rand(n) >= cfg.rot90_prob] = 0
            out = x.clone()
            for turns in (1, 2, 3):
                rows = k == turns
                if rows.any():
                    out[rows] = torch.rot90(x[rows], turns, dims=(x.ndim - 2, x.ndim - 1))
            x = out
        shape = (n,) + (1,) * (x.ndim - 1)
        if cfg.brightness > 0:
            shift = (self._rand(n) * 2 - 1) * cfg.brightness * (self._rand(n) < 0.5)
            x = x + shift.view(shape)
        if cfg.contrast > 0:
            factor = 1 + (self._rand(n) * 2 - 1) * cfg.contrast * (self._rand(n) < 0.5)
            x = x * factor.view(shape)
        if cfg.noise_std > 0:
            noisy = (self._rand(n) < 0.3).view(shape)
            x = x + noisy * torch.randn(x.shape, generator=self.generator) * cfg.noise_std
        return x

    def _affine(self, x: torch.Tensor) -> torch.Tensor:
        """Random affine per sample (probability ``augment.prob``), in normalised coordinates."""
        cfg, n, dims = self.cfg, len(x), self.dims
        chosen = torch.nonzero(self._rand(n) < cfg.prob).flatten()
        if len(chosen) == 0:
            return x
        m = len(chosen)

        def uniform(limit, *size):
            return (torch.rand(*size, generator=self.generator) * 2 - 1) * limit

        radians = math.radians(cfg.rotate_deg)
        if dims == 2:
            a = uniform(radians, m)
            rotation = torch.stack([torch.stack([a.cos(), -a.sin()], -1), torch.stack([a.sin(), a.cos()], -1)], -2)
        else:
            rotation = torch.eye(3).repeat(m, 1, 1)
            angles = uniform(radians, m, 3)
            for axis in range(3):
                c, s = angles[:, axis].cos(), angles[:, axis].sin()
                r = torch.eye(3).repeat(m, 1, 1)
                i, j = [k for k in range(3) if k != axis]
                r[:, i, i], r[:, i, j], r[:, j, i], r[:, j, j] = c, -s, s, c
                rotation = rotation @ r
        shear = torch.eye(dims).repeat(m, 1, 1)
        for i in range(dims):
            for j in range(dims):
                if i != j:
                    shear[:, i, j] = uniform(cfg.shear, m)
        scale = torch.diag_embed(1 + uniform(cfg.zoom, m, dims))
        theta = torch.zeros(m, dims, dims + 1)
        theta[:, :, :dims] = rotation @ shear @ scale
        theta[:, :, dims] = uniform(2 * cfg.translate, m, dims)  # normalised coordinates span 2
        sub = x[chosen]
        grid = F.affine_grid(theta, list(sub.shape), align_corners=False)
        out = x.clone()
        out[chosen] = F.grid_sample(sub, grid, mode="bilinear", padding_mode="border", align_corners=False)
        return out
