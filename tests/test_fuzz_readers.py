"""Fuzz the image reader with random and mutated bytes (hypothesis, bounded and derandomised).

The only exception allowed out of read_image is the project's own UnreadableImage (a
MedclfError naming what is wrong); every successful read must be a finite float32 array of
the requested shape. MEDCLF_FUZZ_EXAMPLES=5000 runs a longer, randomised search.
"""
import io
import os

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from medclf.data.formats.image import read_image
from medclf.errors import MedclfError, UnreadableImage

EXAMPLES = int(os.environ.get("MEDCLF_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=10_000, derandomize=EXAMPLES <= 200, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _encode(image, fmt, **kwargs):
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _seeds():
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 255, (12, 16), dtype=np.uint8)
    rgb = Image.fromarray(np.dstack([gray, gray[::-1], gray[:, ::-1]]))
    exif = Image.Exif()
    exif[0x0112] = 8
    return [
        _encode(Image.fromarray(gray), "PNG"),
        _encode(Image.fromarray(gray.astype(np.uint16) * 200), "PNG"),
        _encode(rgb.convert("RGBA"), "PNG"),
        _encode(rgb.convert("P"), "PNG"),
        _encode(rgb, "JPEG", quality=80),
        _encode(rgb, "JPEG", quality=80, progressive=True, exif=exif.tobytes()),
        _encode(rgb.convert("CMYK"), "JPEG"),
        _encode(rgb, "BMP"),
        _encode(Image.fromarray(gray).convert("1"), "BMP"),
        _encode(rgb, "TIFF"),
        _encode(Image.fromarray(gray), "TIFF", compression="tiff_lzw"),
        _encode(Image.fromarray(gray.astype(np.float32), "F"), "TIFF"),
    ]


SEEDS = _seeds()


@st.composite
def mutated(draw):
    """A valid file with a few random byte edits: overwrite, insert, delete, truncate, repeat."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["set", "insert", "delete", "truncate", "repeat"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "set" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 32))]
        elif op == "truncate":
            del data[pos:]
        elif op == "repeat":
            data[pos:pos] = data[pos:pos + draw(st.integers(1, 64))]
    return bytes(data)


def check(data: bytes, in_channels: int) -> None:
    try:
        array, full_scale = read_image(data, (16, 16), in_channels, max_pixels=1_000_000)
    except UnreadableImage as err:
        assert isinstance(err, MedclfError) and str(err)
        return
    assert array.shape == (in_channels, 16, 16) and array.dtype == np.float32
    assert np.isfinite(array).all() and np.isfinite(full_scale) and full_scale > 0


def test_seeds_are_readable():
    for data in SEEDS:
        check(data, 1)
        read_image(data, (16, 16))  # unmutated seeds must decode


@FUZZ
@given(data=mutated(), in_channels=st.sampled_from([1, 3]))
def test_mutated_images_give_an_array_or_a_clear_error(data, in_channels):
    check(data, in_channels)


@FUZZ
@given(data=st.one_of(st.binary(max_size=2048),
                      st.sampled_from([b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"II*\x00", b"MM\x00*"])
                      .flatmap(lambda magic: st.binary(max_size=512).map(lambda rest: magic + rest))),
       in_channels=st.sampled_from([1, 3]))
def test_random_bytes_give_an_array_or_a_clear_error(data, in_channels):
    check(data, in_channels)
