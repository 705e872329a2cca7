"""Fuzz the readers with random and mutated bytes (hypothesis, bounded and derandomised).

The only exception allowed out of a reader is the project's own UnreadableImage (a
MedclfError naming what is wrong); every successful read must be a finite float32 array of
the requested shape. The readers catch the decoders' exception types only (Pillow, pydicom,
nibabel, numpy), so anything else escaping here is a bug of ours or a decoder error type to
add to the reader's list. MEDCLF_FUZZ_EXAMPLES=5000 runs a longer, randomised search.
"""
import gzip
import io
import os
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from pydicom.data import get_testdata_file

from medclf.data.formats import image as image_format
from medclf.data.formats.dicom import probe_dicom, read_dicom_file
from medclf.data.formats.image import read_image
from medclf.data.formats.nifti import probe_nifti, read_nifti
from medclf.data.formats.npz import probe_item, read_item
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


def mutate(draw, data: bytes, start: int = 0, end: int | None = None) -> bytes:
    """A few random byte edits of ``data`` at positions from ``start`` to ``end`` (default:
    anywhere): overwrite, insert, delete, truncate, repeat."""
    data = bytearray(data)
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["set", "insert", "delete", "truncate", "repeat"]))
        last = max(0, len(data) - 1)
        pos = draw(st.integers(min(start, last), last if end is None else min(last, end)))
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


@st.composite
def mutated(draw):
    """A valid image file with a few random byte edits."""
    return mutate(draw, draw(st.sampled_from(SEEDS)))


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


def test_a_bug_in_our_conversion_is_not_reported_as_a_corrupt_image(monkeypatch):
    def broken(image, gray):
        raise TypeError("a bug of ours")

    monkeypatch.setattr(image_format, "_to_supported_mode", broken)
    with pytest.raises(TypeError, match="a bug of ours"):
        read_image(SEEDS[0], (16, 16))

    def broken_decode(*args):
        raise NameError("another bug")

    monkeypatch.setattr(image_format, "_decode", broken_decode)
    with pytest.raises(NameError, match="another bug"):
        read_image(SEEDS[0], (16, 16))


def test_a_damaged_tiff_header_pillow_rejects_with_typeerror_is_a_corrupt_image():
    # Pillow raises TypeError("Missing dimensions") for a TIFF page without ImageWidth (here
    # a second page, found when counting pages): the decoder's error on damaged bytes, so a
    # corrupt file, not a bug of ours
    tiff = bytearray(SEEDS[9])
    assert tiff[:4] == b"II*\x00"  # little-endian TIFF: the first IFD's offset, entry count, entries
    ifd = int.from_bytes(tiff[4:8], "little")
    next_field = ifd + 2 + 12 * int.from_bytes(tiff[ifd:ifd + 2], "little")
    tiff[next_field:next_field + 4] = len(tiff).to_bytes(4, "little")  # a second IFD, appended:
    tiff += (1).to_bytes(2, "little") + bytes([0x99, 0x99, 3, 0, 1, 0, 0, 0, 0, 0, 0, 0]) + bytes(4)
    with pytest.raises(TypeError, match="Missing dimensions"):
        with Image.open(io.BytesIO(bytes(tiff))) as image:
            image.n_frames
    with pytest.raises(UnreadableImage, match="corrupt or truncated image.*TypeError: Missing dimensions"):
        read_image(bytes(tiff), (16, 16))


# -- DICOM, NIfTI and npz: mutated files through the readers --------------------------------

_PYDICOM_FILES = Path(get_testdata_file("CT_small.dcm")).parent
DICOM_SEEDS = [(_PYDICOM_FILES / name).read_bytes() for name in
               ("CT_small.dcm", "MR_small.dcm", "rtdose.dcm", "SC_rgb_small_odd.dcm", "MR_small_RLE.dcm",
                "dicomdirtests/77654033/CR1/6154")]  # the last: MONOCHROME1
FILES = settings(FUZZ, max_examples=max(20, EXAMPLES // 4))


def _nifti_seeds() -> list[tuple[str, bytes]]:
    seeds = []
    with tempfile.TemporaryDirectory() as folder:
        volume = np.arange(4 * 5 * 3, dtype=np.int16).reshape(4, 5, 3)
        swapped = np.array([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, -1, 0], [0, 0, 0, 1.0]])
        for name, image in (("a.nii", nib.Nifti1Image(volume, np.diag([1.0, 2.0, 3.0, 1.0]))),
                            ("b.nii.gz", nib.Nifti1Image(volume.astype(np.float32) / 7, swapped))):
            nib.save(image, os.path.join(folder, name))
            seeds.append((name, Path(folder, name).read_bytes()))
    return seeds


def _npz_seed(compressed: bool) -> bytes:
    buffer = io.BytesIO()
    images = np.random.default_rng(1).integers(0, 255, (4, 8, 8), dtype=np.uint8)
    (np.savez_compressed if compressed else np.savez)(buffer, train_images=images, train_labels=np.arange(4))
    return buffer.getvalue()


NIFTI_SEEDS = _nifti_seeds()
NPZ_SEEDS = [_npz_seed(False), _npz_seed(True)]


def array_or_clear_error(read) -> None:
    """Run a reader: it returns (an array of numbers, or header facts) or raises UnreadableImage."""
    try:
        result = read()
    except UnreadableImage as err:
        assert isinstance(err, MedclfError) and str(err)
        return
    if isinstance(result, np.ndarray):
        assert result.dtype.kind in "uifb" and result.size > 0


def test_seed_files_are_readable(tmp_path):
    for i, seed in enumerate(DICOM_SEEDS):
        (tmp_path / f"{i}.dcm").write_bytes(seed)
        assert read_dicom_file(str(tmp_path / f"{i}.dcm"))[0].size
    for name, seed in NIFTI_SEEDS:
        (tmp_path / name).write_bytes(seed)
        assert read_nifti(str(tmp_path / name))[0].shape in ((4, 5, 3), (5, 4, 3))
    for i, seed in enumerate(NPZ_SEEDS):
        (tmp_path / f"{i}.npz").write_bytes(seed)
        assert read_item(f"{tmp_path / f'{i}.npz'}#train/2").shape == (8, 8)


@FILES
@given(data=st.data())
def test_mutated_dicom_files_give_an_array_or_a_clear_error(data, tmp_path_factory):
    seed = data.draw(st.sampled_from(DICOM_SEEDS))
    # edits after the 128-byte preamble: mostly in the header (first 2.5 kB), or anywhere
    damaged = mutate(data.draw, seed, start=128, end=data.draw(st.sampled_from([2500, None])))
    path = tmp_path_factory.mktemp("dicom") / "x.dcm"
    path.write_bytes(damaged)
    for window in (None, "file", "lung"):
        array_or_clear_error(lambda: read_dicom_file(str(path), window)[0])
    array_or_clear_error(lambda: probe_dicom(str(path)))


@FILES
@given(data=st.data())
def test_mutated_nifti_files_give_an_array_or_a_clear_error(data, tmp_path_factory):
    name, seed = data.draw(st.sampled_from(NIFTI_SEEDS))
    if name.endswith(".gz") and data.draw(st.booleans()):  # damage the content, not the gzip stream
        damaged = gzip.compress(mutate(data.draw, gzip.decompress(seed)))
    else:
        damaged = mutate(data.draw, seed)
    path = tmp_path_factory.mktemp("nifti") / name
    path.write_bytes(damaged)
    array_or_clear_error(lambda: read_nifti(str(path))[0])
    array_or_clear_error(lambda: read_nifti(str(path), [0, 10])[0])
    array_or_clear_error(lambda: probe_nifti(str(path)))


@FILES
@given(data=st.data())
def test_mutated_npz_files_give_an_array_or_a_clear_error(data, tmp_path_factory):
    damaged = mutate(data.draw, data.draw(st.sampled_from(NPZ_SEEDS)))
    path = tmp_path_factory.mktemp("npz") / "x.npz"
    path.write_bytes(damaged)
    array_or_clear_error(lambda: read_item(f"{path}#train/2"))
    array_or_clear_error(lambda: probe_item(f"{path}#train/0"))
