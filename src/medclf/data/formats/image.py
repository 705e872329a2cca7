"""2D image files (PNG, JPEG, BMP, TIFF) decoded by Pillow, with a clear error per file.

Large JPEGs are decoded at a reduced scale with Pillow's ``Image.draft`` (DCT scaling),
which is several times faster than decoding at full size and then resizing, and gives the
same result after the final resize.
"""
from __future__ import annotations

import io
import re
import struct
import warnings
import zlib

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ...errors import UnreadableImage

DECODER_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, IndexError, KeyError)
"""What Pillow and the codecs it calls raise for damaged or hostile bytes: ``OSError``
(e.g. "image file is truncated", "broken data stream"; also ``UnidentifiedImageError``),
``SyntaxError`` (bad PNG chunks, "not a TIFF file"), ``ValueError``, ``EOFError``,
``struct.error`` and ``zlib.error`` (short or corrupt headers and streams), and ``IndexError``
/ ``KeyError`` (tables indexed by values read from the file, e.g. TIFF tags, palettes).
Anything else, e.g. a ``TypeError``, ``NameError`` or ``AssertionError`` of our own
conversion code, is a bug and propagates instead of being reported as a damaged file."""

PILLOW_DECODE_ERRORS = (*DECODER_ERRORS, TypeError)
"""While Pillow alone opens and decodes a file (:func:`_decode`), ``TypeError`` too: Pillow's
TIFF reader raises it for damaged headers (e.g. "Missing dimensions")."""


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
        UnreadableImage: empty, truncated or non-image content (a :data:`DECODER_ERRORS`
            failure of the decoder on damaged bytes), fewer than 2x2 pixels, too many pixels (``max_pixels`` or
            Pillow's hard limit of twice ``PIL.Image.MAX_IMAGE_PIXELS``, checked from the
            header before any pixel is decoded), a multi-page TIFF (a volume), or values
            that are not finite.
    """
    if not data:
        raise UnreadableImage("empty file (0 bytes)")
    if in_channels not in (1, 3):
        raise UnreadableImage(f"in_channels={in_channels} is not supported for 2D images (use 1 or 3)")
    try:
        image = _decode(data, size, in_channels, max_pixels)
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
    except PILLOW_DECODE_ERRORS as err:  # a failure inside Pillow's decoding: a damaged file
        raise UnreadableImage(f"corrupt or truncated image ({err.__class__.__name__}: {err})") from None
    if image.width < 2 or image.height < 2:
        raise UnreadableImage(f"image is only {image.width}x{image.height} pixels")
    try:
        image, full_scale = _to_supported_mode(image, gray=in_channels == 1)
    except MemoryError:
        raise UnreadableImage("decoding needs more memory than is available") from None
    except DECODER_ERRORS as err:  # Pillow refusing to convert what the file declared
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


def _decode(data: bytes, size, in_channels: int, max_pixels: int) -> Image.Image:
    """Pillow's part of :func:`read_image`: open, check the header, decode (JPEGs at a reduced
    scale) and apply the EXIF orientation. Every exception but :class:`UnreadableImage` is
    Pillow's (see :data:`PILLOW_DECODE_ERRORS`)."""
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
            # in place: without an orientation tag there is nothing to do (no copy of the pixels)
            ImageOps.exif_transpose(image, in_place=True)
        except PILLOW_DECODE_ERRORS:  # unparsable EXIF declares no orientation
            pass
        return image


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


COLOUR_MODES = ("RGB", "RGBA", "P", "CMYK", "YCbCr", "LAB", "HSV")
"""Pillow modes that can hold colour; an image stored in one of them may still be gray
(X-rays are often saved as RGB with three equal channels)."""


def channel_difference(path: str, side: int = 64) -> float | None:
    """How far a 2D image file is from gray: the smallest of the mean absolute differences
    between its R, G and B channels (three pairs), in 8-bit gray levels (0-255), of the
    image reduced to at most ``side`` x ``side`` pixels (JPEG DCT scaling, then Pillow's
    thumbnail).

    Why the smallest pair: a colour photograph (fundus, dermoscopy, histology) has three
    channels that all differ (tens of levels); gray content saved as RGB has three equal
    ones, and gray content under a false-colour tint (e.g. the green cast of some X-ray
    collections) keeps two equal. Both score about 0.

    Returns:
        the difference, or None when the file's mode holds no colour (L, I, F, 1) or the
        file cannot be decoded (the preprocessing reports bad files).
    """
    try:
        with Image.open(path) as image:
            if image.mode not in COLOUR_MODES:
                return None
            image.draft("RGB", (side, side))
            image = image.convert("RGB")
            image.thumbnail((side, side))
            rgb = np.asarray(image, dtype=np.float32)
    except (*PILLOW_DECODE_ERRORS, UnidentifiedImageError, Image.DecompressionBombError):
        return None
    return min(float(np.abs(rgb[..., i] - rgb[..., j]).mean()) for i, j in ((0, 1), (1, 2), (0, 2)))


def probe_image(path: str) -> dict:
    """Header facts of a 2D image file without decoding pixels: ``shape`` ``[H, W]``,
    ``spatial_dims`` (2), ``format`` ('image') and the Pillow ``mode``.

    Raises:
        UnreadableImage: the header cannot be read.
    """
    try:
        with Image.open(path) as image:
            return {"shape": [image.size[1], image.size[0]], "spatial_dims": 2, "format": "image",
                    "mode": image.mode}
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError, ValueError) as err:
        raise UnreadableImage(f"not a readable image ({err.__class__.__name__})") from None
