"""A generated corpus of awkward image files, for tests of discovery and the readers.

:func:`write_corpus` writes one file (or folder, or link) of each kind into a class folder
and returns the list of :class:`Case` describing what medclf must do with it:

* ``"bad"``: listed as unreadable with a reason (``data.on_bad_file=error`` stops before
  training and names it; ``skip`` trains without it and records it in ``bad_files.csv``);
* ``"ok"``: read correctly; ``expected`` is the intensity image in [0, 1] (luma, full
  resolution, orientation applied) that the reader must return;
* ``"ignored"``: left out by discovery and recorded in ``ignored_files.csv``.

Everything is generated in a few hundred milliseconds; the decompression bomb is a real
30000x30000 1-bit PNG (about 110 kB on disk, 900 MB once decoded by Pillow).
"""
from __future__ import annotations

import functools
import io
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import numpy as np
from PIL import Image


@dataclass
class Case:
    """One awkward file of the corpus.

    Attributes:
        kind: short identifier, e.g. ``"truncated_png"``.
        name: path relative to the class folder.
        outcome: ``"bad"``, ``"ok"`` or ``"ignored"`` (see the module docstring).
        reason: regular expression the recorded reason must match (bad and ignored files).
        expected: for ``ok`` files, float32 ``(H, W)`` intensities in [0, 1].
        tolerance: mean absolute difference allowed against ``expected`` (JPEG is lossy).
    """

    kind: str
    name: str
    outcome: Literal["bad", "ok", "ignored"]
    reason: str = ""
    expected: Optional[np.ndarray] = None
    tolerance: float = 0.02


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _pattern(height: int = 40, width: int = 56) -> np.ndarray:
    """A uint8 test pattern with a bright top-left block (shows orientation errors)."""
    yy, xx = np.mgrid[:height, :width]
    image = (40 + 80 * xx / width + 40 * yy / height).astype(np.uint8)
    image[: height // 3, : width // 3] = 250
    return image


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


@functools.lru_cache(maxsize=2)
def png_bomb(side: int = 30000) -> bytes:
    """A valid ``side`` x ``side`` all-black 1-bit PNG: ~110 kB for side 30000, whose pixels
    need ``side**2`` bytes (900 MB) once Pillow decodes them."""
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    parts = []
    block = row * 1000
    for start in range(0, side, 1000):
        parts.append(compressor.compress(block if side - start >= 1000 else row * (side - start)))
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit grayscale
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", b"".join(parts))
            + _png_chunk(b"IEND", b""))


def write_corpus(folder: str | os.PathLike) -> list[Case]:
    """Write every kind of awkward file into ``folder`` (a class folder); return the cases.

    Needs a file system with symbolic links (POSIX).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pattern = _pattern()
    ref = pattern.astype(np.float32) / 255.0
    png = _encode(Image.fromarray(pattern), "PNG")
    jpeg = _encode(Image.fromarray(pattern).convert("RGB"), "JPEG", quality=95)
    cases: list[Case] = []

    def put(case: Case, data: bytes | None = None) -> None:
        if data is not None:
            path = folder / case.name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        cases.append(case)

    # --- files that cannot be used: a clear reason each
    put(Case("zero_byte", "empty.png", "bad", r"empty file"), b"")
    put(Case("truncated_jpeg", "truncated.jpg", "bad", r"truncated|corrupt"), jpeg[: len(jpeg) // 2])
    put(Case("truncated_png", "truncated.png", "bad", r"truncated|corrupt"), png[: len(png) // 2])
    put(Case("text_named_jpg", "notes.jpg", "bad", r"not a readable image"),
        b"Patient list, do not share.\nThis is a text file with an image extension.\n")
    put(Case("html_named_png", "download.png", "bad", r"not a readable image"),
        b"<!DOCTYPE html><html><body><h1>403 Forbidden</h1></body></html>\n")
    put(Case("one_pixel", "one_pixel.png", "bad", r"only 1x1 pixels"), _encode(Image.new("L", (1, 1), 128), "PNG"))
    put(Case("decompression_bomb", "bomb.png", "bad", r"max_pixels"), png_bomb())
    stack = [Image.fromarray(np.full((16, 16), 20 * i, np.uint8)) for i in range(8)]
    buffer = io.BytesIO()
    stack[0].save(buffer, format="TIFF", save_all=True, append_images=stack[1:])
    put(Case("volume_among_2d", "volume.tif", "bad", r"3D volume"), buffer.getvalue())
    nan = np.full((16, 16), 0.5, np.float32)
    nan[3, 4] = np.nan
    put(Case("nan_float_tiff", "nan_values.tif", "bad", r"NaN"), _encode(Image.fromarray(nan, "F"), "TIFF"))
    os.symlink("loop.png", folder / "loop.png")  # a link to itself
    put(Case("symlink_loop", "loop.png", "bad", r"cannot read file.*(symbolic links|loop)"))
    os.symlink("does-not-exist.jpg", folder / "dangling.jpg")
    put(Case("dangling_symlink", "dangling.jpg", "bad", r"cannot read file.*No such file"))

    # --- awkward but valid: read correctly
    cmyk = Image.fromarray(pattern).convert("RGB").convert("CMYK")
    put(Case("cmyk_jpeg", "cmyk.jpg", "ok", expected=ref, tolerance=0.03), _encode(cmyk, "JPEG", quality=95))
    gray16 = (pattern.astype(np.uint16) * 257)  # full 16-bit range
    put(Case("gray16_png", "gray16.png", "ok", expected=ref, tolerance=0.002),
        _encode(Image.fromarray(gray16), "PNG"))
    rgba = np.dstack([pattern, pattern, pattern, np.full_like(pattern, 255)])
    put(Case("rgba_png", "rgba.png", "ok", expected=ref, tolerance=0.005), _encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    put(Case("palette_png", "palette.png", "ok", expected=ref, tolerance=0.01),
        _encode(Image.fromarray(pattern).convert("P"), "PNG"))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: displayed after a 90 degree clockwise turn
    stored = np.rot90(pattern, 1)  # what the camera wrote; orientation 6 turns it back
    put(Case("exif_rotated_jpeg", "exif_rotated.jpg", "ok", expected=ref, tolerance=0.03),
        _encode(Image.fromarray(np.ascontiguousarray(stored)).convert("RGB"), "JPEG", quality=95,
                exif=exif.tobytes()))
    put(Case("unicode_and_spaces", "Röntgen  thorax ü 肺 (1).png", "ok", expected=ref, tolerance=0.002), png)
    put(Case("folder_named_like_image", "series.png/inner.png", "ok", expected=ref, tolerance=0.002), png)

    # --- left out by discovery, and recorded
    put(Case("hidden_file", ".hidden.png", "ignored", r"hidden"), png)
    put(Case("macos_resource_fork", "._scan.jpg", "ignored", r"hidden"), b"\x00\x05\x16\x07junk")
    put(Case("ds_store", ".DS_Store", "ignored", r"hidden"), b"\x00\x00\x00\x01Bud1")
    put(Case("nifti_volume_among_2d", "volume.nii.gz", "bad", r"NIfTI"),
        zlib.compress(b"\x5c\x01\x00\x00" + b"\x00" * 344))
    os.symlink(".", folder / "cycle")  # a folder link back to itself
    put(Case("folder_symlink_loop", "cycle", "ignored", r"folder"))
    return cases
