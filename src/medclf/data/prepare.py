"""Manifest -> preprocessed tensors per split (the input of the DataModule).

Small datasets are stacked into float32 tensors in memory; large ones are written once to a
memory-mapped shard on disk and read as :class:`~medclf.data.store.DiskImages` views
(``data.storage``, chosen by :func:`medclf.data.store.choose_storage`).
"""
from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import pandas as pd
import torch

from ..errors import DataError
from .preprocess import check_bad_files, preprocess_all
from .sources import Manifest
from .store import build_shard, choose_storage

log = logging.getLogger("medclf")


def storage_of(manifest: Manifest, config) -> str:
    """``'memory'`` or ``'disk'`` for this manifest (:func:`~medclf.data.store.choose_storage`),
    logged with its reason."""
    storage, reason = choose_storage(len(manifest.frame), config)
    (log.warning if storage == "disk" else log.info)("data storage: %s (%s)", storage, reason)
    return storage


def _from_disk(manifest: Manifest, config, progress: bool = True):
    """Build (or resume, or reuse) the shard of the manifest; returns ``(shard, keep, hashes, bad)``."""
    paths = list(manifest.frame.path)
    shard = build_shard(paths, config, progress=progress)
    status = np.asarray(shard.status())
    reasons = shard.bad()
    bad = [(paths[i], reasons.get(i, "unreadable")) for i in np.flatnonzero(status != 1)]
    return shard, status == 1, shard.hashes(), bad


def prepare_splits(manifest: Manifest, config) -> tuple[dict, Manifest, list[tuple[str, str]]]:
    """Preprocess every image of the manifest once.

    Returns:
        ``(splits, kept, bad)``: ``splits[split] = (images, labels)`` with images float32
        ``(N, C, H, W)`` (a tensor in memory, or a :class:`~medclf.data.store.DiskImages`
        view of the disk shard with ``data.storage`` disk) and labels int64 ``(N,)``
        (multilabel: float32 ``(N, K)`` 0/1; regression: float32 ``(N,)``); ``kept`` the manifest without bad files
        (with a ``sha`` column of content hashes); ``bad`` the ``(path, reason)`` list.

    Raises:
        BadFilesError: unreadable files and ``data.on_bad_file='error'`` (lists them all).
        DataError: a split loses all images of a class by skipping.
    """
    frame = manifest.frame
    if storage_of(manifest, config) == "disk":
        return _splits_from_disk(manifest, config)
    arrays, hashes, bad = preprocess_all(list(frame.path), config)
    check_bad_files(bad, config.data.on_bad_file)
    keep = np.array([a is not None for a in arrays])
    kept_frame = frame[keep].copy()
    kept_frame["sha"] = [h for h in hashes if h is not None]
    kept = replace(manifest, frame=kept_frame.reset_index(drop=True))
    kept_arrays = [a for a in arrays if a is not None]
    check_shapes(kept_arrays, list(kept.frame.path))
    splits = {}
    for split in ("train", "val", "test"):
        rows = np.flatnonzero(kept.frame.split.to_numpy() == split)
        if len(rows) == 0:
            raise DataError(f"the {split} split has no readable images")
        images = stack_arrays([kept_arrays[i] for i in rows], [kept.frame.path[i] for i in rows])
        labels = torch.from_numpy(kept.targets(split))  # (N,) class indices, (N, K) findings or (N,) numbers
        splits[split] = (images, labels)
    if kept.task != "classification":
        return splits, kept, bad
    train_counts = pd.Series(kept.labels("train")).value_counts()
    missing = [n for i, n in enumerate(manifest.class_names) if i not in train_counts.index]
    if missing:
        raise DataError(f"no readable training images left for class(es): {', '.join(missing)}")
    return splits, kept, bad


def _splits_from_disk(manifest: Manifest, config):
    """:func:`prepare_splits` with ``(DiskImages, labels)`` per split."""
    shard, keep, hashes, bad = _from_disk(manifest, config)
    check_bad_files(bad, config.data.on_bad_file)
    kept_frame = manifest.frame[keep].copy()
    kept_frame["sha"] = [h for h, k in zip(hashes, keep) if k]
    kept = replace(manifest, frame=kept_frame.reset_index(drop=True))
    positions = np.flatnonzero(keep)  # shard rows of the kept items, in kept order
    splits = {}
    for split in ("train", "val", "test"):
        rows = np.flatnonzero(kept.frame.split.to_numpy() == split)
        if len(rows) == 0:
            raise DataError(f"the {split} split has no readable images")
        # (N,) class indices, (N, K) findings or (N,) numbers, as in memory
        splits[split] = (shard.images(positions[rows]), torch.from_numpy(kept.targets(split)))
    if kept.task == "classification":
        _check_train_classes(kept, manifest.class_names)
    return splits, kept, bad


def _check_train_classes(kept: Manifest, class_names: list[str]) -> None:
    train_counts = pd.Series(kept.labels("train")).value_counts()
    missing = [n for i, n in enumerate(class_names) if i not in train_counts.index]
    if missing:
        raise DataError(f"no readable training images left for class(es): {', '.join(missing)}")


def prepare_images(manifest: Manifest, config) -> tuple[torch.Tensor, Manifest, list[tuple[str, str]]]:
    """Preprocess every image of a manifest, ignoring its splits (evaluation, prediction).

    Returns:
        ``(images, kept, bad)`` with images float32 ``(N, C, H, W)`` in ``kept`` order (a
        :class:`~medclf.data.store.DiskImages` view when stored on disk).

    Raises:
        BadFilesError: unreadable files and ``data.on_bad_file='error'``.
        DataError: no readable image at all.
    """
    if storage_of(manifest, config) == "disk":
        shard, keep, hashes, bad = _from_disk(manifest, config)
        check_bad_files(bad, config.data.on_bad_file)
        if not keep.any():
            raise DataError("none of the given images can be read")
        frame = manifest.frame[keep].copy()
        frame["sha"] = [h for h, k in zip(hashes, keep) if k]
        kept = Manifest(frame.reset_index(drop=True), manifest.class_names, manifest.ignored)
        return shard.images(np.flatnonzero(keep)), kept, bad
    arrays, hashes, bad = preprocess_all(list(manifest.frame.path), config)
    check_bad_files(bad, config.data.on_bad_file)
    keep = np.array([a is not None for a in arrays], dtype=bool)
    if not keep.any():
        raise DataError("none of the given images can be read")
    frame = manifest.frame[keep].copy()
    frame["sha"] = [h for h in hashes if h is not None]
    kept = replace(manifest, frame=frame.reset_index(drop=True))
    return stack_arrays([a for a in arrays if a is not None], list(kept.frame.path)), kept, bad


def stack_arrays(arrays: list[np.ndarray], paths: list[str]) -> torch.Tensor:
    """Stack ``(C, *spatial)`` arrays into ``(N, C, *spatial)``.

    Raises:
        DataError: the arrays differ in shape (see :func:`check_shapes`).
    """
    check_shapes(arrays, paths)
    return torch.from_numpy(np.stack(arrays))


def check_shapes(arrays: list[np.ndarray], paths: list[str]) -> None:
    """Raise DataError when the arrays differ in shape (``preprocess.resize='none'``),
    naming the files whose shape differs from the most common one."""
    shapes = [a.shape for a in arrays]
    if len(set(shapes)) > 1:
        common = max(set(shapes), key=shapes.count)
        odd = [(p, s) for p, s in zip(paths, shapes) if s != common]
        listed = "\n".join(f"  {p}: {'x'.join(map(str, s[1:]))}" for p, s in odd[:20])
        more = f"\n  ... and {len(odd) - 20} more" if len(odd) > 20 else ""
        raise DataError(f"images/volumes have different shapes and preprocess.resize='none': most are "
                        f"{'x'.join(map(str, common[1:]))}, but\n{listed}{more}\nSet preprocess.resize=resize "
                        f"(to data.image_size) or resample to a common grid with preprocess.spacing.")
