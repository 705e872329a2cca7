"""``medclf preview``: pick a few training images of a dataset and draw the preview figure."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from ..config import Config, deep_merge, validate
from ..data.sources import Manifest, discover_source
from ..data.preprocess import preprocess_file
from ..data.formats import load_raw
from ..data.preprocess import fit_to_size
from ..errors import UnreadableImage
from ..errors import DataError
from .figure import PreviewResult, Sample, render_preview


def read_raw(path: str, config: Config) -> tuple[np.ndarray, float]:
    """Decode and resize one item (image, DICOM, NIfTI, npz item) without the steps or normalisation.

    Returns:
        ``(raw, full_scale)``: float32 ``(C, H, W)`` or ``(C, D, H, W)`` raw intensities and
        the data type's maximum (the reader of :func:`medclf.data.preprocess.preprocess_file`).

    Raises:
        UnreadableImage, OSError: the file cannot be read.
    """
    raw, full_scale, spacing = load_raw(path, config)
    return fit_to_size(raw, config, spacing), full_scale


def pick_samples(manifest: Manifest, config: Config, per_class: int,
                 reader: Callable[[str, Config], tuple[np.ndarray, float]] = read_raw) -> list[Sample]:
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
            prepared, _ = preprocess_file(paths[i], config) if reader is read_raw else (None, None)
            samples.append(Sample(raw, full_scale, index, Path(paths[i]).name, prepared))
            kept += 1
    if not samples:
        raise DataError("no readable image to preview")
    return samples


def preview_manifest(manifest: Manifest, config: Config, out: str | Path, n: int = 16,
                     n_augment: int = 5, reader=read_raw) -> PreviewResult:
    """Preview ``n`` training images (``n // num_classes`` per class, at least one) of a
    manifest with a resolved configuration; see :func:`medclf.preview.figure.render_preview`."""
    per_class = max(1, n // manifest.num_classes)
    samples = pick_samples(manifest, config, per_class, reader)
    return render_preview(samples, manifest.class_names, config, out, per_class=per_class, n_augment=n_augment)


def preview(data: str | Path, config=None, overrides=None, n: int = 16, out: str | Path = "preview.png",
            n_augment: int = 5) -> PreviewResult:
    """Preview the input pipeline of a dataset folder with the configuration ``train`` would use.

    The configuration is resolved as by :func:`medclf.training.run.train` (dataset plan,
    then the YAML/dict ``config``, then ``overrides``), so the preview shows exactly the
    preprocessing and augmentation a training run would get.

    Args:
        data: class-per-folder tree.
        config: YAML path, dict or :class:`~medclf.config.Config`.
        overrides: ``["preprocess.steps=[...]", ...]`` or a nested dict.
        n: images in the first grid (``n // num_classes`` per class).
        out: PNG path.
        n_augment: random augmentations per shown image.

    Raises:
        MedclfError: bad configuration or data (names the key or file).
    """
    from ..plan import fingerprint, plan_config
    from ..training.run import user_tree
    tree = user_tree(config, overrides)
    early = validate(tree)
    manifest = discover_source(str(data), early.data, early.seed)
    cfg = validate(deep_merge(plan_config(fingerprint(manifest)), deep_merge(tree, {"data": {"source": str(data)}})))
    return preview_manifest(manifest, cfg, out, n, n_augment)


def write_run_preview(run_dir: str | Path, manifest: Manifest, config: Config, n: int = 16) -> Path:
    """Write ``plots/preview.png`` of a run (for the run report); reads only ``n`` files.

    Call it in :func:`medclf.training.run.train` after the split is made, e.g.
    ``write_run_preview(run_dir, manifest, cfg)``.
    """
    path = Path(run_dir) / "plots" / "preview.png"
    return preview_manifest(manifest, config, path, n).path
