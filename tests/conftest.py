"""Shared fixtures: small generated datasets and the real data in ../shared/data."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MEDCLF_SHARED_DATA", ROOT.parent / "shared" / "data"))
COVID = SHARED_DATA / "covid19-xray"


def synthetic_image(kind: str, rng: np.random.Generator, size: int = 48) -> np.ndarray:
    """A uint8 grayscale image whose class is visible: a bright disk or a bright bar."""
    image = rng.normal(60, 10, (size, size))
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.integers(size // 3, 2 * size // 3, 2)
    if kind == "disk":
        image[(yy - cy) ** 2 + (xx - cx) ** 2 < (size // 6) ** 2] += 140
    else:
        image[:, max(0, cx - 3):cx + 3] += 140
    return np.clip(image, 0, 255).astype(np.uint8)


def make_dataset(root: Path, per_class=(12, 12), splits=("train", "test"), classes=("disk", "bar"),
                 seed: int = 0, ext: str = ".png") -> Path:
    """Write a class-per-folder tree of synthetic images; returns ``root``."""
    rng = np.random.default_rng(seed)
    for split in splits:
        for cls, n in zip(classes, per_class):
            folder = root / split / cls if split else root / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n if split != "test" else max(3, n // 3)):
                Image.fromarray(synthetic_image(cls, rng)).save(folder / f"{cls}_{i}{ext}")
    return root


@pytest.fixture
def tiny_dataset(tmp_path) -> Path:
    """train/{disk,bar} with 12 images each and test/{disk,bar} with 4 each, 48x48 PNG."""
    return make_dataset(tmp_path / "tiny")


@pytest.fixture
def covid_subset(tmp_path) -> Path:
    """A small copy (symlinks) of ../shared/data/covid19-xray: 10 train, 4 test per class."""
    if not COVID.is_dir():
        pytest.skip(f"real data not found at {COVID}")
    root = tmp_path / "covid subset"
    for split, n in (("train", 10), ("test", 4)):
        for cls in sorted(p for p in (COVID / split).iterdir() if p.is_dir()):
            target = root / split / cls.name
            target.mkdir(parents=True)
            for f in sorted(cls.iterdir())[:n]:
                (target / f.name).symlink_to(f)
    return root


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A run trained for 3 epochs on generated disk/bar images with diagnostics on
    (histograms every 2 steps); it has a gallery, architecture files and report.html."""
    from medclf.commands.train import train
    root = tmp_path_factory.mktemp("tiny_run")
    data = make_dataset(root / "data")
    result = train(data, out=root / "runs", name="tiny", progress=False, overrides=[
        "train.max_epochs=3", "data.image_size=[32,32]", "model.filters=[8,16]", "train.batch_size=8",
        "diagnostics.enabled=true", "diagnostics.every_n_steps=2"])
    return result.run_dir
