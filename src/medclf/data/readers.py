"""Decode 2D image files (PNG, JPEG, BMP, TIFF) into float arrays with a clear error per file.

Pillow does the decoding. Large JPEGs are decoded at a reduced scale with Pillow's
``Image.draft`` (DCT scaling), which is several times faster than decoding at full size
and then resizing, and gives the same result after the final resize.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import DataError


class UnreadableImage(DataError):
    """One file cannot be decoded; the message says why (the caller adds the path)."""


def read_image(data: bytes, size: tuple[int, int], in_channels: int = 1,
               max_pixels: int = 100_000_000) -> tuple[np.ndarray, float]:
    """Decode image bytes, apply EXIF orientation, convert channels and resize.

    Args:
        data: the encoded file content.
        size: target ``(H, W)`` in pixels.
        in_channels: 1 (grayscale, ITU-R 601 luma) or 3 (RGB).
        max_pixels: larger images are rejected (decompression-bomb guard).

    Returns:
        ``(array, full_scale)``: float32 array ``(C, H, W)`` with the file's raw intensity
        values (not normalised), and the maximum value of the file's data type (255 for
        8-bit, 65535 for 16-bit), used by the ``scale255`` normalisation.

    Raises:
        UnreadableImage: empty, truncated or non-image content, or too many pixels.
    """
    if not data:
        raise UnreadableImage("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise UnreadableImage(f"{width}x{height} pixels exceeds data.max_pixels={max_pixels}")
            if image.format == "JPEG" and in_channels == 1:
                # decode at 1/2, 1/4 or 1/8 scale straight to luma, never below the target size
                image.draft("L", (size[1], size[0]))
            image.load()
            image = ImageOps.exif_transpose(image)
    except UnreadableImage:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise UnreadableImage(f"not a readable image ({err.__class__.__name__}: {err})") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise UnreadableImage(f"corrupt or truncated image ({err})") from None
    if image.width < 2 or image.height < 2:
        raise UnreadableImage(f"image is only {image.width}x{image.height} pixels")

    if in_channels not in (1, 3):
        raise UnreadableImage(f"in_channels={in_channels} is not supported for 2D images (use 1 or 3)")
    image, full_scale = _to_supported_mode(image, gray=in_channels == 1)
    bands = image.split() if image.mode == "RGB" else [image]
    arrays = [np.asarray(b.resize((size[1], size[0]), Image.Resampling.BILINEAR, reducing_gap=2.0),
                         dtype=np.float32) for b in bands]
    array = np.stack(arrays)
    if array.shape[0] != in_channels:  # a grayscale file fed to an RGB model
        array = np.repeat(array, in_channels, axis=0)
    return array, full_scale


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
