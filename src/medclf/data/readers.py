"""Decode image files into float arrays with a clear error per file: 2D images (PNG, JPEG, BMP,
TIFF) with Pillow here; DICOM (:mod:`.dicom`), NIfTI (:mod:`.nifti`) and MedMNIST npz items
(:mod:`.medmnist`) through :func:`load_raw`, which dispatches on the format.

Pillow does the decoding. Large JPEGs are decoded at a reduced scale with Pillow's
``Image.draft`` (DCT scaling), which is several times faster than decoding at full size
and then resizing, and gives the same result after the final resize.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import DataError


class UnreadableImage(DataError):
    """One file cannot be decoded; the message says why (the caller adds the path)."""


def read_image(data: bytes, size: tuple[int, int] | None, in_channels: int = 1,
               max_pixels: int = 100_000_000) -> tuple[np.ndarray, float]:
    """Decode image bytes, apply EXIF orientation, convert channels and resize.

    Args:
        data: the encoded file content.
        size: target ``(H, W)`` in pixels (bilinear resize); ``None`` keeps the file's size.
        in_channels: 1 (grayscale, ITU-R 601 luma) or 3 (RGB).
        max_pixels: larger images are rejected (decompression-bomb guard).

    Returns:
        ``(array, full_scale)``: float32 array ``(C, H, W)`` with the file's raw intensity
        values (not normalised), and the maximum value of the file's data type (255 for
        8-bit, 65535 for 16-bit), used by the ``scale255`` normalisation.

    Raises:
        UnreadableImage: empty, truncated or non-image content (any failure of the decoder on
            damaged bytes), fewer than 2x2 pixels, too many pixels (``max_pixels`` or
            Pillow's hard limit of twice ``PIL.Image.MAX_IMAGE_PIXELS``, checked from the
            header before any pixel is decoded), a multi-page TIFF (a volume), or values
            that are not finite.
    """
    if not data:
        raise UnreadableImage("empty file (0 bytes)")
    if in_channels not in (1, 3):
        raise UnreadableImage(f"in_channels={in_channels} is not supported for 2D images (use 1 or 3)")
    try:
        with warnings.catch_warnings():
            # our own limit (max_pixels) replaces Pillow's warning; its hard error still applies
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            warnings.filterwarnings("ignore", module=r"PIL\.")  # e.g. "Corrupt EXIF data"
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise UnreadableImage(f"{width}x{height} pixels exceeds data.max_pixels={max_pixels} "
                                      "(decompression-bomb guard; raise the limit if the image is genuine)")
            frames = getattr(image, "n_frames", 1)
            if image.format == "TIFF" and frames > 1:
                raise UnreadableImage(f"a {frames}-page TIFF (a 3D volume or a stack) among 2D images; "
                                      "give volumes in a 3D format with model.spatial_dims=3, or one "
                                      "image per file")
            if size and image.format == "JPEG" and in_channels == 1 and image.mode in ("RGB", "L", "YCbCr"):
                # decode at 1/2, 1/4 or 1/8 scale straight to luma, never below the target size
                # (in either orientation: EXIF rotation is applied afterwards)
                side = max(size[0], size[1])
                image.draft("L", (side, side))
            image.load()
            try:
                image = ImageOps.exif_transpose(image)
            except Exception:  # noqa: BLE001 - unparsable EXIF declares no orientation
                pass
            if image.width < 2 or image.height < 2:
                raise UnreadableImage(f"image is only {image.width}x{image.height} pixels")
            image, full_scale = _to_supported_mode(image, gray=in_channels == 1)
    except UnreadableImage:
        raise
    except Image.DecompressionBombError as err:
        found = re.search(r"\((\d+) pixels\)", str(err))
        pixels = f"{int(found.group(1)):,} pixels" if found else str(err)
        raise UnreadableImage(f"{pixels} exceeds data.max_pixels={max_pixels} and Pillow's own limit of "
                              f"{2 * (Image.MAX_IMAGE_PIXELS or 0):,} (decompression-bomb guard)") from None
    except UnidentifiedImageError:
        raise UnreadableImage(f"not a readable image: the content is not PNG, JPEG, BMP or TIFF "
                              f"(it starts with {_head(data)})") from None
    except MemoryError:
        raise UnreadableImage("decoding needs more memory than is available") from None
    except Exception as err:  # noqa: BLE001 - any failure inside the decoder means a damaged file
        raise UnreadableImage(f"corrupt or truncated image ({err.__class__.__name__}: {err})") from None

    bands = image.split() if image.mode == "RGB" else [image]
    if size:
        bands = [b.resize((size[1], size[0]), Image.Resampling.BILINEAR, reducing_gap=2.0) for b in bands]
    arrays = [np.asarray(b, dtype=np.float32) for b in bands]
    array = np.stack(arrays)
    if array.shape[0] != in_channels:  # a grayscale file fed to an RGB model
        array = np.repeat(array, in_channels, axis=0)
    if not np.isfinite(array).all():
        raise UnreadableImage("pixel values include NaN or infinity")
    return array, full_scale


def _head(data: bytes, n: int = 24) -> str:
    """The first bytes of a file, printable, for error messages."""
    text = data[:n].decode("latin-1")
    return repr("".join(ch if ch.isprintable() else "." for ch in text))


def _to_supported_mode(image: Image.Image, gray: bool) -> tuple[Image.Image, float]:
    """Convert any Pillow mode to 'F' (one float band) or 'RGB'; return the full scale."""
    mode = image.mode
    if mode.startswith("I;16"):
        return image.convert("I").convert("F"), 65535.0
    if mode in ("I", "F"):
        arr = np.asarray(image)
        full_scale = 65535.0 if mode == "I" and arr.min() >= 0 and arr.max() <= 65535 else float(arr.max() or 1.0)
        return image.convert("F"), full_scale
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        # composite transparent pixels onto black instead of keeping arbitrary colours
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    if image.mode != "RGB" and not (gray and image.mode == "L"):
        image = image.convert("RGB")  # P, 1, L, CMYK, YCbCr, RGBA
    if gray:
        return image.convert("L").convert("F"), 255.0
    return image, 255.0


# ---------------------------------------------------------------------------------------
# Dispatch by format: 2D files (Pillow), DICOM files and series folders, NIfTI, npz items.

def source_format(path: str) -> str:
    """The reader a path goes to: ``npz``, ``dicom-series`` (a folder), ``nifti``, ``dicom`` or ``image``."""
    from .dicom import looks_like_dicom
    from .medmnist import is_npz_item
    from .nifti import is_nifti
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
        from .medmnist import read_item
        stored = read_item(path)
        return _hash(np.ascontiguousarray(stored).tobytes() + str(stored.shape).encode()), None
    if fmt == "dicom-series":
        from .dicom import series_files
        hasher = hashlib.blake2b(digest_size=16)
        for file in series_files(path):
            with open(file, "rb") as handle:
                hasher.update(handle.read())
        return hasher.hexdigest(), None
    with open(path, "rb") as handle:
        data = handle.read()
    return _hash(data), data


def load_raw(path: str, config, data: bytes | None = None) -> tuple[np.ndarray, float, tuple[float, ...] | None]:
    """Read one dataset item at its own size, before resizing and normalisation.

    Args:
        path: an image file, a DICOM file, a DICOM series folder, a NIfTI file, or an npz
            item reference ``file.npz#split/index``.
        config: the resolved configuration (``data`` and ``preprocess`` sections).
        data: the file's bytes if already read (2D images).

    Returns:
        ``(array, full_scale, spacing)``: float32 ``(C, H, W)`` or ``(C, D, H, W)`` (2D
        Pillow images are already resized to ``data.image_size``, see :func:`pillow_size`); the data type's full
        scale for ``scale255``; the voxel spacing in mm per spatial axis, or None.

    Raises:
        UnreadableImage: the item cannot be decoded (the message says why, without the path).
        OSError: the file cannot be read at all.
    """
    fmt = source_format(path)
    window = config.preprocess.window
    if fmt == "image":
        if data is None:
            with open(path, "rb") as handle:
                data = handle.read()
        array, full_scale = read_image(data, pillow_size(config), config.data.in_channels, config.data.max_pixels)
        return array, full_scale, None
    if fmt == "npz":
        from .medmnist import item_dims, read_item
        stored = read_item(path)
        _, _, channels = item_dims(stored.shape)
        array = np.asarray(stored, np.float32)
        array = np.moveaxis(array, -1, 0) if channels > 1 else array[None]
        full_scale = float(np.iinfo(stored.dtype).max) if stored.dtype.kind in "ui" else 1.0
        return _channels(array, config.data.in_channels), full_scale, None
    if fmt == "nifti":
        from .nifti import read_nifti
        array, spacing, _ = read_nifti(path, window)
        return _channels(array[None], config.data.in_channels), _full_scale(array), spacing
    from . import dicom
    if fmt == "dicom-series":
        array, spacing, _ = dicom.read_dicom_series(path, window)
    else:
        array, spacing = dicom.read_dicom_file(path, window)
    return _channels(array[None], config.data.in_channels), _full_scale(array), spacing


def probe(path: str) -> dict:
    """Header facts of one item without decoding pixels where the format allows:
    ``shape`` (spatial, list), ``spatial_dims`` and ``format``; ``spacing`` (mm) when known.

    Raises:
        UnreadableImage: the header cannot be read.
    """
    fmt = source_format(path)
    if fmt == "npz":
        from .medmnist import probe_item
        return probe_item(path)
    if fmt == "nifti":
        from .nifti import probe_nifti
        return probe_nifti(path)
    if fmt in ("dicom", "dicom-series"):
        from .dicom import probe_dicom
        return probe_dicom(path)
    try:
        with Image.open(path) as image:
            return {"shape": [image.size[1], image.size[0]], "spatial_dims": 2, "format": "image",
                    "mode": image.mode}
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError, ValueError) as err:
        raise UnreadableImage(f"not a readable image ({err.__class__.__name__})") from None


def pillow_size(config) -> tuple[int, int] | None:
    """The ``(H, W)`` Pillow resizes a 2D image to while decoding (bilinear, cheapest), or
    None to decode at the file's size, for :func:`fit_to_size` to shrink by
    ``preprocess.shrink='max'``."""
    if config.preprocess.resize == "resize" and config.preprocess.shrink == "max":
        return None
    return tuple(config.data.image_size[-2:])


def fit_to_size(array: np.ndarray, config, spacing=None) -> np.ndarray:
    """Resample/resize a raw ``(C, *spatial)`` array to the configured grid.

    With ``preprocess.spacing`` set and a known voxel spacing, volumes are first resampled
    to that spacing (MONAI ``Spacing``). Then, with ``preprocess.resize='resize'``, the array
    is resized to ``data.image_size`` with MONAI ``Resize``: when shrinking along every axis,
    ``area`` (averages, like anti-aliasing) or, with ``preprocess.shrink='max'``, PyTorch
    adaptive max-pooling (each output voxel is the maximum of its block, which keeps thin
    bright structures of binary masks); otherwise ``bilinear``/``trilinear``.

    Raises:
        UnreadableImage: the array has a different number of spatial axes than
            ``model.spatial_dims`` (e.g. a 2D image in a 3D dataset).
    """
    from monai.transforms import Resize
    spatial_dims = config.model.spatial_dims
    have = array.ndim - 1
    if have != spatial_dims:
        shape = "x".join(str(s) for s in array.shape[1:])
        raise UnreadableImage(f"is {have}D (shape {shape}) where a {spatial_dims}D "
                              f"{'volume' if spatial_dims == 3 else 'image'} is expected "
                              f"(model.spatial_dims={spatial_dims})")
    if config.preprocess.spacing is not None and spacing is not None and have == 3:
        from .nifti import resample_to_spacing
        array = resample_to_spacing(array, spacing, config.preprocess.spacing)
    if config.preprocess.resize == "none":
        return np.ascontiguousarray(array, np.float32)
    target = list(config.data.image_size)
    if len(target) != spatial_dims:
        raise UnreadableImage(f"data.image_size={target} has {len(target)} axes but the data is {spatial_dims}D")
    if list(array.shape[1:]) == target:
        return np.ascontiguousarray(array, np.float32)
    shrinking = all(t <= s for t, s in zip(target, array.shape[1:]))
    if shrinking and config.preprocess.shrink == "max":
        import torch
        pool = torch.nn.functional.adaptive_max_pool3d if spatial_dims == 3 else torch.nn.functional.adaptive_max_pool2d
        return pool(torch.from_numpy(np.ascontiguousarray(array, np.float32)), target).numpy()
    mode = "area" if shrinking else ("bilinear" if spatial_dims == 2 else "trilinear")
    out = Resize(spatial_size=target, mode=mode, anti_aliasing=False)(array)
    return np.asarray(out, np.float32)


def _channels(array: np.ndarray, in_channels: int) -> np.ndarray:
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


def _hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()
