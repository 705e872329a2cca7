"""Train-only random augmentation, built from MONAI array transforms.

One ``RandAffine`` does rotation, zoom, translation and shear in a single resampling;
then flips (left-right, up-down, and for volumes the depth axis), random 90-degree
rotations in the plane of the last two axes, intensity shift (brightness), intensity scaling (contrast) and Gaussian noise.
All transforms take ``spatial_dims`` from the array, so 2D ``(C, H, W)`` and 3D
``(C, D, H, W)`` share this code.
"""
from __future__ import annotations

import math

from monai.transforms import (Compose, RandAffine, RandFlip, RandGaussianNoise, RandRotate90,
                              RandScaleIntensity, RandShiftIntensity)


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
