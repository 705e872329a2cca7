"""Deterministic preprocessing (decode, channels, resize, steps, normalise) with a cache.

Every image of a run is preprocessed once, before training, into a float32 array; later
epochs only augment. The cache key is the file's content hash plus the preprocessing
settings, so a renamed file is still a hit and a changed setting is a miss.
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from monai.transforms import NormalizeIntensity, ScaleIntensity, ScaleIntensityRangePercentiles

from ..errors import BadFilesError
from ..io import atomic_write
from .morphology import apply_steps
from .readers import UnreadableImage, content_digest, fit_to_size, load_raw, pillow_size, read_image

_MEMORY_CACHE: dict[str, np.ndarray] = {}


def normalize(array: np.ndarray, mode: str, full_scale: float = 255.0,
              percentiles: tuple[float, float] = (5.0, 95.0)) -> np.ndarray:
    """Normalise intensities of one image ``(C, H, W)`` or volume ``(C, D, H, W)``.

    Modes: ``scale255`` divides by the file's full scale (255 for 8-bit, 65535 for 16-bit)
    to [0, 1]; ``minmax`` maps the image's min..max to [0, 1]; ``percentile`` maps the
    5th..95th percentile to [0, 1] without clipping (MONAI ScaleIntensityRangePercentiles);
    ``zscore`` gives zero mean and unit variance (MONAI NormalizeIntensity); ``none`` keeps
    the values (e.g. after a window, which already maps to [0, 1]). Channels
    are normalised together. Returns float32, same shape.
    """
    array = np.asarray(array, dtype=np.float32)
    if mode == "none":
        out = array
    elif mode == "scale255":
        out = array / np.float32(full_scale)
    elif mode == "minmax":
        out = ScaleIntensity(minv=0.0, maxv=1.0)(array)
    elif mode == "percentile":
        low, high = percentiles
        if np.percentile(array, high) <= np.percentile(array, low):
            out = ScaleIntensity(minv=0.0, maxv=1.0)(array)  # flat image: fall back to min-max
        else:
            out = ScaleIntensityRangePercentiles(lower=low, upper=high, b_min=0.0, b_max=1.0,
                                                 clip=False)(array)
    elif mode == "zscore":
        out = NormalizeIntensity()(array)
    else:
        raise ValueError(f"unknown normalisation {mode!r}")
    return np.asarray(out, dtype=np.float32)


def settings_key(config) -> str:
    """Hash of every setting that changes the preprocessed array."""
    relevant = {"image_size": list(config.data.image_size), "in_channels": config.data.in_channels,
                "max_pixels": config.data.max_pixels, "preprocess": config.preprocess.model_dump(mode="json"),
                "spatial_dims": config.model.spatial_dims, "version": 2}
    return hashlib.sha1(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def content_hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def decode_bytes(data: bytes, config, name: str | None = None) -> tuple[np.ndarray, float]:
    """Decode one file's content by its format into raw intensities at the run's size.

    Used for uploaded bytes (the HTTP service). DICOM (``.dcm``/``.dicom`` or the ``DICM``
    magic) and NIfTI (``.nii``/``.nii.gz``) go through :func:`medclf.data.readers.load_raw`
    via a temporary file, everything else through Pillow. Files on disk (and DICOM series
    folders, npz items) are read by :func:`preprocess_file`, which dispatches on the path.

    Args:
        data: the encoded file content.
        config: the run's :class:`~medclf.config.Config` (``data.image_size``,
            ``data.in_channels``, ``data.max_pixels``).
        name: file name or path (only its extension is used), if known.

    Returns:
        ``(array, full_scale)``: float32 ``(C, H, W)`` raw intensities and the data type's
        full scale (see :func:`medclf.data.readers.read_image`).

    Raises:
        UnreadableImage: the content is not a supported image, or is corrupt.
    """
    lowered = (name or "").lower()
    if lowered.endswith((".nii", ".nii.gz", ".dcm", ".dicom")) or data[128:132] == b"DICM":
        # DICOM and NIfTI readers work on files: go through a temporary one
        import tempfile
        suffix = ".nii.gz" if lowered.endswith(".nii.gz") else (Path(lowered).suffix or ".dcm")
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "upload" + suffix)
            with open(path, "wb") as handle:
                handle.write(data)
            raw, full_scale, spacing = load_raw(path, config)
            return fit_to_size(raw, config, spacing), full_scale
    raw, full_scale = read_image(data, pillow_size(config), config.data.in_channels, config.data.max_pixels)
    return fit_to_size(raw, config), full_scale


def preprocess_bytes(data: bytes, config, name: str | None = None) -> np.ndarray:
    """Preprocess one file's content exactly as training did (decode, resize, steps, normalise).

    Used by :func:`preprocess_file` (training, evaluation, ``medclf predict``) and by the
    HTTP service on uploaded bytes, so both paths share one pipeline. No cache.

    Returns:
        float32 ``(C, H, W)`` (2D) array, normalised by ``preprocess.normalization``.

    Raises:
        UnreadableImage: the content is not a supported image, or is corrupt.
    """
    raw, full_scale = decode_bytes(data, config, name)
    return finish(raw, full_scale, config)


def preprocess_file(path: str, config, key: str | None = None) -> tuple[np.ndarray, str]:
    """Read and preprocess one file through the cache.

    ``path`` is anything :func:`medclf.data.readers.load_raw` reads (image, DICOM file or
    series folder, NIfTI, npz item).

    Returns:
        ``(array, content_hash)`` with ``array`` float32 ``(C, H, W)`` or ``(C, D, H, W)``.

    Raises:
        UnreadableImage: the file cannot be decoded (message without the path).
        OSError: the file cannot be read at all.
    """
    key = key or settings_key(config)
    digest, data = content_digest(path)
    cache_id = f"{key}/{digest}"
    mode = config.data.cache
    if mode == "memory" and cache_id in _MEMORY_CACHE:
        return _MEMORY_CACHE[cache_id], digest
    disk_path = _disk_path(config, key, digest) if mode == "disk" else None
    if disk_path is not None and disk_path.exists():
        try:
            return np.load(disk_path), digest
        except (OSError, ValueError):
            pass  # a damaged cache entry is recomputed
    raw, full_scale, spacing = load_raw(path, config, data)
    raw = fit_to_size(raw, config, spacing)
    array = finish(raw, full_scale, config)
    if mode == "memory":
        _MEMORY_CACHE[cache_id] = array
    elif disk_path is not None:
        atomic_write(disk_path, lambda tmp: np.save(open(tmp, "wb"), array))
    return array, digest


def finish(raw: np.ndarray, full_scale: float, config, normalization: str | None = None) -> np.ndarray:
    """The deterministic steps after decoding: ``preprocess.steps`` (scikit-image
    morphology/contrast, :mod:`medclf.data.morphology`), then the intensity normalisation.

    Args:
        raw: resized raw intensities ``(C, H, W)`` or ``(C, D, H, W)``.
        full_scale: maximum of the file's data type (255 for 8-bit).
        config: the resolved configuration.
        normalization: overrides ``preprocess.normalization`` (the preview compares modes).

    Returns:
        float32 array of the same shape.

    Raises:
        PreprocessStepError: a step cannot be applied (names the step).
    """
    stepped = apply_steps(raw, config.preprocess.steps, full_scale) if config.preprocess.steps else raw
    return normalize(stepped, normalization or config.preprocess.normalization, full_scale,
                     tuple(config.preprocess.percentiles))


def cache_root(config) -> Path:
    """Folder of the disk cache: ``data.cache_dir``, else ``$MEDCLF_CACHE``, else ~/.cache/medclf."""
    return Path(config.data.cache_dir or os.environ.get("MEDCLF_CACHE", Path.home() / ".cache" / "medclf"))


def _disk_path(config, key: str, digest: str) -> Path:
    return cache_root(config) / key / f"{digest}.npy"


def preprocess_all(paths: list[str], config, workers: int = 2):
    """Preprocess every file; collect every unreadable file instead of stopping at the first.

    Returns:
        ``(arrays, hashes, bad)``: ``arrays[i]`` is float32 ``(C, H, W)`` or None for a bad
        file, ``hashes[i]`` its content hash (None if unreadable), ``bad`` a list of
        ``(path, reason)``.
    """
    key = settings_key(config)

    def one(path):
        try:
            array, digest = preprocess_file(path, config, key)
            return array, digest, None
        except UnreadableImage as err:
            return None, None, str(err)
        except OSError as err:
            return None, None, f"cannot read file ({err.strerror or err})"

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:  # Pillow releases the GIL
        results = list(pool.map(one, paths))
    arrays = [r[0] for r in results]
    hashes = [r[1] for r in results]
    bad = [(p, r[2]) for p, r in zip(paths, results) if r[2] is not None]
    return arrays, hashes, bad


def check_bad_files(bad: list[tuple[str, str]], on_bad_file: str) -> None:
    """Raise :class:`BadFilesError` listing every bad file unless ``on_bad_file='skip'``."""
    if bad and on_bad_file != "skip":
        raise BadFilesError(bad)
