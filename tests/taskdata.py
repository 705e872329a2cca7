"""Generated CSV datasets with known answers for the multilabel and regression tasks.

Multilabel: each image independently shows a bright disk (finding ``disk``, top-left
quadrant), a vertical bar (``bar``, right half) and a small bright square (``square``,
bottom-left quadrant), each with probability 0.5; the 0/1 columns say which are present.
Regression: one bright disk whose radius (pixels) is the target ``radius``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

FINDINGS = ("disk", "bar", "square")


def shapes_image(present: dict, rng: np.random.Generator, size: int = 32) -> tuple[np.ndarray, dict]:
    """A uint8 ``(size, size)`` noise image with the present shapes; returns it and each
    shape's boolean mask."""
    image = rng.normal(50, 8, (size, size))
    yy, xx = np.mgrid[:size, :size]
    masks = {}
    q = size // 4
    cy, cx = rng.integers(q - 2, q + 3, 2)
    masks["disk"] = (yy - cy) ** 2 + (xx - cx) ** 2 <= (size // 8) ** 2
    bx = int(rng.integers(size // 2 + 3, size - 4))
    masks["bar"] = (np.abs(xx - bx) <= 1) & (yy > 2) & (yy < size - 3)
    sy, sx = int(rng.integers(size // 2 + 2, size - 9)), int(rng.integers(2, size // 2 - 9))
    masks["square"] = (yy >= sy) & (yy < sy + 7) & (xx >= sx) & (xx < sx + 7)
    for name in FINDINGS:
        if present[name]:
            image[masks[name]] += 150
    return np.clip(image, 0, 255).astype(np.uint8), masks


def make_multilabel_csv(root: Path, n: int = 120, size: int = 32, seed: int = 0) -> Path:
    """``root/labels.csv`` with ``file,patient,disk,bar,square`` (two images per patient)
    and ``root/images/*.png``; returns the CSV path."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        present = {name: int(rng.random() < 0.5) for name in FINDINGS}
        image, _ = shapes_image(present, rng, size)
        Image.fromarray(image).save(root / "images" / f"img{i}.png")
        rows.append({"file": f"images/img{i}.png", "patient": f"p{i // 2}", **present})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return root / "labels.csv"


def disk_image(radius: float, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """A uint8 noise image with one bright disk of ``radius`` pixels near the centre."""
    image = rng.normal(50, 8, (size, size))
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.integers(size // 2 - 2, size // 2 + 3, 2)
    image[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2] += 150
    return np.clip(image, 0, 255).astype(np.uint8)


def make_regression_csv(root: Path, n: int = 120, size: int = 32, seed: int = 0) -> Path:
    """``root/labels.csv`` with ``path,radius`` (radius uniform in 2-12 pixels); returns its path."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        radius = float(np.round(rng.uniform(2, 12), 2))
        Image.fromarray(disk_image(radius, rng, size)).save(root / "images" / f"d{i}.png")
        rows.append({"path": f"images/d{i}.png", "radius": radius})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return root / "labels.csv"
