"""Generated images whose class is a bright blob at a random position (for Grad-CAM tests)."""
from __future__ import annotations

import numpy as np
import torch


def blob_images(n: int, spatial_dims: int, size: int, radius: int, seed: int):
    """``(images, labels, masks)``: float32 ``(n, 1, *[size]*spatial_dims)`` noise images,
    labels 1 for the half that has a Gaussian blob at a random position, and boolean masks
    ``(n, *spatial)`` of the blob (the ball of ``radius`` around its centre)."""
    rng = np.random.default_rng(seed)
    shape = (size,) * spatial_dims
    grids = np.meshgrid(*[np.arange(size)] * spatial_dims, indexing="ij")
    images = rng.normal(0.2, 0.1, (n, 1, *shape)).astype(np.float32)
    labels = np.arange(n) % 2
    masks = np.zeros((n, *shape), dtype=bool)
    for i in np.flatnonzero(labels):
        centre = rng.integers(radius + 1, size - radius - 1, spatial_dims)
        d2 = sum((g - c) ** 2 for g, c in zip(grids, centre))
        masks[i] = d2 <= radius * radius
        images[i, 0] += 0.8 * np.exp(-d2 / (2 * (0.7 * radius) ** 2))
    return torch.from_numpy(images), torch.from_numpy(labels), masks


def train_blob_model(spatial_dims: int, size: int, radius: int, n: int, epochs: int, seed: int = 0):
    """A small CNN (full-resolution stem, two stages) trained with Adam to find the blob."""
    from medclf.models import initialise
    from medclf.models.small_cnn import SmallCNN
    torch.manual_seed(seed)
    images, labels, _ = blob_images(n, spatial_dims, size, radius, seed)
    model = SmallCNN(spatial_dims, 1, 2, filters=[8, 16], blocks_per_stage=1, stem_stride=1,
                     stem_kernel_size=3, dropout=0.0)
    initialise(model, "he")
    optimiser = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(epochs):
        order = torch.randperm(n)
        for i in range(0, n, 16):
            batch = order[i:i + 16]
            loss = torch.nn.functional.cross_entropy(model(images[batch]), labels[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return model.eval()


def iou(heatmap: np.ndarray, mask: np.ndarray, threshold: float = 0.6) -> float:
    """IoU of the heatmap thresholded at ``threshold`` (of its maximum, 1) with the blob mask."""
    region = heatmap >= threshold
    return float((region & mask).sum() / max((region | mask).sum(), 1))
