"""Every way of reading a dataset item goes through here: one dispatcher over the format
readers (in the manner of MONAI's ``ImageReader`` and nnU-Net's reader registry).

* :mod:`.image`: 2D files (PNG, JPEG, BMP, TIFF) with Pillow;
* :mod:`.dicom`: DICOM files and series folders with pydicom;
* :mod:`.nifti`: NIfTI volumes with nibabel, in RAS+ orientation;
* :mod:`.npz`: MedMNIST-style npz items ``file.npz#split/index``;
* :mod:`.windowing`: CT window presets and the window mapping.

This package is a leaf: it imports nothing else of medclf but :mod:`medclf.errors`.
"""
from __future__ import annotations

import hashlib
import os

import numpy as np

from ...errors import UnreadableImage
from . import dicom
from .dicom import looks_like_dicom, probe_dicom, series_files
from .image import channel_difference, probe_image, read_image
from .nifti import is_nifti, probe_nifti, read_nifti
from .npz import is_npz_item, item_dims, probe_item, read_item

__all__ = ["UnreadableImage", "channel_difference", "match_channels", "source_format", "content_digest", "content_hash", "load_raw", "probe",
           "read_image"]


def source_format(path: str) -> str:
    """The reader a path goes to: ``npz``, ``dicom-series`` (a folder), ``nifti``, ``dicom`` or ``image``."""
    if is_npz_item(path):
        return "npz"
    if os.path.isdir(path):
        return "dicom-series"
    if is_nifti(path):
        return "nifti"
    if looks_like_dicom(path):
        return "dicom"
    return "image"


def content_digest(path: str) -> tuple[str, bytes | None]:
    """Content hash of one item and, for single files, their bytes (reused for decoding).

    The hash covers the file bytes, every DICOM file of a series folder (in name order), or
    the stored array and its shape for an npz item.

    Raises:
        UnreadableImage: an npz item that cannot be read.
        OSError: the file cannot be read at all.
    """
    fmt = source_format(path)
    if fmt == "npz":
        stored = read_item(path)
        return content_hash(np.ascontiguousarray(stored).tobytes() + str(stored.shape).encode()), None
    if fmt == "dicom-series":
        hasher = hashlib.blake2b(digest_size=16)
        for file in series_files(path):
            with open(file, "rb") as handle:
                hasher.update(handle.read())
        return hasher.hexdigest(), None
    with open(path, "rb") as handle:
        data = handle.read()
    return content_hash(data), data


def load_raw(path: str, *, in_channels: int = 1, window=None, max_pixels: int = 100_000_000,
             size: tuple[int, int] | None = None,
             data: bytes | None = None) -> tuple[np.ndarray, float, tuple[float, ...] | None]:
    """Read one dataset item at its own size, before resizing and normalisation.

    Args:
        path: an image file, a DICOM file, a DICOM series folder, a NIfTI file, or an npz
            item reference ``file.npz#split/index``.
        in_channels: channels of the result (1: gray, colour averaged to luma; 3: RGB, gray repeated).
        window: intensity window of DICOM/NIfTI values: a preset name of
            :data:`~medclf.data.formats.windowing.WINDOW_PRESETS`, ``'file'`` (DICOM),
            ``[center, width]`` or None (see :mod:`.windowing`).
        max_pixels: 2D images with more pixels are refused (decompression-bomb guard).
        size: ``(H, W)`` in pixels that Pillow resizes 2D images to while decoding (cheapest),
            or None to keep the file's size.
        data: the file's bytes if already read (2D images).

    Returns:
        ``(array, full_scale, spacing)``: float32 ``(C, H, W)`` or ``(C, D, H, W)``; the data
        type's full scale for ``scale255``; the voxel spacing in mm per spatial axis, or None.

    Raises:
        UnreadableImage: the item cannot be decoded (the message says why, without the path).
        OSError: the file cannot be read at all.
    """
    fmt = source_format(path)
    if fmt == "image":
        if data is None:
            with open(path, "rb") as handle:
                data = handle.read()
        array, full_scale = read_image(data, size, in_channels, max_pixels)
        return array, full_scale, None
    if fmt == "npz":
        stored = read_item(path)
        _, _, channels = item_dims(stored.shape)
        array = np.asarray(stored, np.float32)
        array = np.moveaxis(array, -1, 0) if channels > 1 else array[None]
        full_scale = float(np.iinfo(stored.dtype).max) if stored.dtype.kind in "ui" else 1.0
        return match_channels(array, in_channels), full_scale, None
    if fmt == "nifti":
        array, spacing, _ = read_nifti(path, window)
        return match_channels(array[None], in_channels), _full_scale(array), spacing
    if fmt == "dicom-series":
        array, spacing, _ = dicom.read_dicom_series(path, window)
    else:
        array, spacing = dicom.read_dicom_file(path, window)
    return match_channels(array[None], in_channels), _full_scale(array), spacing


def probe(path: str) -> dict:
    """Header facts of one item without decoding pixels where the format allows:
    ``shape`` (spatial, list), ``spatial_dims`` and ``format``; ``spacing`` (mm) when known.

    Raises:
        UnreadableImage: the header cannot be read.
    """
    fmt = source_format(path)
    if fmt == "npz":
        return probe_item(path)
    if fmt == "nifti":
        return probe_nifti(path)
    if fmt in ("dicom", "dicom-series"):
        return probe_dicom(path)
    return probe_image(path)


def match_channels(array: np.ndarray, in_channels: int) -> np.ndarray:
    """Match ``(C, ...)`` to ``in_channels``: repeat grayscale, or average colour to gray."""
    if array.shape[0] == in_channels:
        return array
    if array.shape[0] == 1:
        return np.repeat(array, in_channels, axis=0)
    if in_channels == 1 and array.shape[0] >= 3:
        weights = np.array([0.299, 0.587, 0.114], np.float32).reshape(3, *([1] * (array.ndim - 1)))
        return (array[:3] * weights).sum(axis=0, keepdims=True)
    raise UnreadableImage(f"has {array.shape[0]} channels; data.in_channels={in_channels}")


def _full_scale(array: np.ndarray) -> float:
    """Full scale of values that are not a plain 8/16-bit image: the absolute maximum (>= 1)."""
    peak = float(np.abs(array).max()) if array.size else 1.0
    return 1.0 if peak <= 1.0 else peak


def content_hash(data: bytes) -> str:
    """Hash of a file's bytes (BLAKE2b, 128 bits, hex): the identity of an image in ``split.csv``,
    the cache and the duplicate search."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()
