"""MedMNIST-style ``.npz`` items (Yang et al., MedMNIST v2, Scientific Data 2023), 2D and 3D.

An npz holds ``{train,val,test}_images`` (``(N, H, W)``, ``(N, H, W, 3)`` or
``(N, D, H, W)``, usually uint8). One image is referenced as ``/abs/file.npz#<split>/<index>``,
so the rest of the pipeline (preprocessing, cache, split.csv, evaluation) treats it like a
file. Arrays are loaded once per process and file version.
"""
from __future__ import annotations

import functools
import os
import re
import struct
import threading
import zipfile
import zlib

import numpy as np

from ...errors import UnreadableImage

SEPARATOR = "#"

NPZ_ERRORS = (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error,
              NotImplementedError, RuntimeError, struct.error, OverflowError, MemoryError)
"""What :func:`numpy.load` (with :mod:`zipfile` and :mod:`zlib` under it) raises for a damaged
``.npz``: ``OSError``/``EOFError`` (truncated), ``ValueError`` (a bad ``.npy`` header, or
pickled objects refused with ``allow_pickle=False``), ``KeyError``, ``zipfile.BadZipFile``,
``zipfile.LargeZipFile``, ``zlib.error``, ``struct.error``, ``OverflowError``,
``NotImplementedError`` (an unsupported compression method), ``RuntimeError`` (an encrypted
member) and ``MemoryError`` (a header declaring a huge array). Our own programming errors
(``TypeError``, ``NameError``, ...) propagate."""
_ARRAYS: dict[tuple[str, float, str], np.ndarray] = {}
_LOCK = threading.Lock()


def is_npz_item(path: str) -> bool:
    return SEPARATOR in path and path.rsplit(SEPARATOR, 1)[0].lower().endswith(".npz")


def item_path(npz: str | os.PathLike, split: str, index: int) -> str:
    return f"{os.path.abspath(npz)}{SEPARATOR}{split}/{index}"


def parse_item(path: str) -> tuple[str, str, int]:
    """``'/d/x.npz#train/17'`` -> ``('/d/x.npz', 'train', 17)``.

    Raises:
        UnreadableImage: malformed item reference.
    """
    file, _, ref = path.rpartition(SEPARATOR)
    match = re.fullmatch(r"(train|val|test)/(\d+)", ref)
    if not match:
        raise UnreadableImage(f"bad npz item reference {ref!r}; expected <split>/<index>")
    return file, match.group(1), int(match.group(2))


def _array(file: str, key: str) -> np.ndarray:
    """One array of an npz, loaded once per process (keyed by path and modification time)."""
    try:
        stamp = os.path.getmtime(file)
    except OSError as err:
        raise UnreadableImage(f"cannot read {file} ({err.strerror or err})") from None
    cache_key = (file, stamp, key)
    with _LOCK:
        if cache_key not in _ARRAYS:
            try:
                with np.load(file, allow_pickle=False) as data:
                    if key not in data.files:
                        raise UnreadableImage(f"{file} has no array {key!r} (has: {', '.join(data.files)})")
                    _ARRAYS[cache_key] = data[key]
            except UnreadableImage:
                raise
            except NPZ_ERRORS as err:
                raise UnreadableImage(f"cannot read {file} as .npz ({err.__class__.__name__}: {err})") from None
        return _ARRAYS[cache_key]


def _images(file: str, split: str) -> np.ndarray:
    """The ``{split}_images`` array of an npz: ``(N, H, W)``, ``(N, H, W, 3)`` or ``(N, D, H, W)``.

    Raises:
        UnreadableImage: missing, unreadable, or not 3 or 4 dimensions of numbers (images
            of at least one pixel).
    """
    images = _array(file, f"{split}_images")
    if images.ndim not in (3, 4) or images.dtype.kind not in "uifb" or 0 in images.shape[1:]:
        raise UnreadableImage(f"{file}: {split}_images has shape {images.shape} and dtype {images.dtype}; expected "
                              "numbers of shape (N, H, W), (N, H, W, 3) or (N, D, H, W)")
    return images


def read_item(path: str) -> np.ndarray:
    """The image of an item reference as stored: ``(H, W)``, ``(H, W, 3)`` or ``(D, H, W)``.

    Raises:
        UnreadableImage: missing file or key, or an index out of range.
    """
    file, split, index = parse_item(path)
    images = _images(file, split)
    if index >= len(images):
        raise UnreadableImage(f"index {index} out of range: {split}_images has {len(images)} images")
    return images[index]


def item_dims(image_shape: tuple[int, ...]) -> tuple[int, list[int], int]:
    """``(spatial_dims, spatial shape, channels)`` of one stored MedMNIST image.

    2D colour images are ``(H, W, 3)``; 3D volumes ``(D, H, W)`` (MedMNIST 3D has no
    colour volumes).
    """
    shape = list(image_shape)
    if len(shape) == 3 and shape[-1] in (3, 4) and shape[0] > 4:
        return 2, shape[:2], shape[-1]
    if len(shape) == 3:
        return 3, shape, 1
    return 2, shape, 1


def npy_shape(data, key: str) -> tuple[int, ...]:
    """Shape of an array in an open npz without loading it (reads the .npy header)."""
    from numpy.lib import format as npy_format
    with data.zip.open(f"{key}.npy") as handle:
        major, _ = npy_format.read_magic(handle)
        reader = npy_format.read_array_header_1_0 if major == 1 else npy_format.read_array_header_2_0
        shape, _, _ = reader(handle)
    return tuple(shape)


def probe_item(path: str) -> dict:
    """Facts of an item reference (from the loaded array): ``shape``, ``spatial_dims``,
    ``channels``, ``format``, ``dtype`` and ``binary`` (every value of the split's images
    is 0 or their maximum: segmentation masks, such as AdrenalMNIST3D)."""
    file, split, _ = parse_item(path)
    images = _images(file, split)
    dims, shape, channels = item_dims(images.shape[1:])
    return {"shape": shape, "spatial_dims": dims, "channels": channels, "format": "npz",
            "dtype": str(images.dtype), "binary": _binary(file, f"{split}_images")}


def _binary(file: str, key: str) -> bool:
    """Whether an npz array holds two values, 0 and its maximum (checked once per array)."""
    return _binary_array(file, os.path.getmtime(file), key)


@functools.lru_cache(maxsize=64)
def _binary_array(file: str, stamp: float, key: str) -> bool:
    """:func:`_binary` for one version (modification time ``stamp``) of the file."""
    images = _array(file, key)
    top = images.max() if images.size else 0
    return bool(top > 0 and np.all((images == 0) | (images == top)))
