"""Pick a few training images of a manifest and draw the preview figure."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from ..config import Config
from ..data.preprocess import decode_file, preprocess_file
from ..data.sources import Manifest
from ..errors import DataError, UnreadableImage
from .figure import PreviewResult, Sample, render_preview


def pick_samples(manifest: Manifest, config: Config, per_class: int,
                 reader: Callable[[str, Config], tuple[np.ndarray, float]] = decode_file) -> list[Sample]:
    """Up to ``per_class`` readable training images of every class, drawn with ``config.seed``.

    Unreadable files are passed over (the next image of the class is tried). Reads only
    the chosen files, so it is cheap on large datasets; the preprocessed arrays come
    through the preprocessing cache (free inside a training run with ``data.cache=memory``).

    Args:
        reader: ``path, config -> (raw, full_scale)``; volumes need a reader that returns
            ``(C, D, H, W)`` arrays.

    Raises:
        DataError: not a single image could be read.
    """
    frame = manifest.frame
    split = "train" if (frame.split == "train").any() else frame.split.iloc[0]
    rng = np.random.default_rng(config.seed)
    samples = []
    for index, name in enumerate(manifest.class_names):
        paths = list(frame.path[(frame.split == split) & (frame.label == name)])
        kept = 0
        for i in rng.permutation(len(paths)):
            if kept == per_class:
                break
            try:
                raw, full_scale = reader(paths[i], config)
            except (UnreadableImage, OSError):
                continue
            prepared, _ = preprocess_file(paths[i], config) if reader is decode_file else (None, None)
            samples.append(Sample(raw, full_scale, index, Path(paths[i]).name, prepared))
            kept += 1
    if not samples:
        raise DataError("no readable image to preview")
    return samples


def preview_manifest(manifest: Manifest, config: Config, out: str | Path, n: int = 16,
                     n_augment: int = 5, reader=decode_file) -> PreviewResult:
    """Preview ``n`` training images (``n // num_classes`` per class, at least one) of a
    manifest with a resolved configuration; see :func:`medclf.preview.figure.render_preview`."""
    per_class = max(1, n // manifest.num_classes)
    samples = pick_samples(manifest, config, per_class, reader)
    return render_preview(samples, manifest.class_names, config, out, per_class=per_class, n_augment=n_augment)


