"""DICOM reading with pydicom: single files, multi-frame files and series folders.

Values go through the Modality LUT (Rescale Slope/Intercept, DICOM PS3.3 C.11.1, applied
by :func:`pydicom.pixels.apply_modality_lut`), so CT values are Hounsfield units. An
optional window maps them to ``[0, 1]``: a preset or explicit ``[center, width]`` maps
``center - width/2 .. center + width/2`` linearly with clipping
(:func:`~.windowing.apply_window`); ``'file'`` applies the file's own VOI LUT or window
with pydicom (:func:`pydicom.pixels.apply_voi_lut`: VOI LUT Sequence, or WindowCenter /
WindowWidth with the LINEAR, LINEAR_EXACT or SIGMOID VOILUTFunction) and maps its output
range to ``[0, 1]`` (:func:`~.windowing.file_window`).

MONOCHROME1 images (where low values are displayed white) are inverted so that, as in
MONOCHROME2, high values are bright, by a rule that does not depend on the image's own
values (as a viewer inverts the output range, e.g. DCMTK's ``DiMono1Image``): ``1 - w``
after a window; without one, ``x' = lo + hi - x`` where ``lo .. hi`` is the range of
values the header allows, the stored range (BitsStored, PixelRepresentation) through the
Modality LUT (``-x`` for float pixel data, which has no stored range).

A series folder is one volume: every DICOM file in it is a slice (other files are
ignored), slices are sorted by their position along the slice normal
(ImagePositionPatient projected onto the cross product of the ImageOrientationPatient
row and column directions), falling back to InstanceNumber.
"""
from __future__ import annotations

import math
import os
import struct
import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ...errors import UnreadableImage
from .windowing import apply_window, file_window, window_bounds

DICOM_EXTENSIONS = (".dcm", ".dicom", ".ima")


def looks_like_dicom(path: str | os.PathLike) -> bool:
    """True for a ``.dcm/.dicom/.ima`` name or a file with the ``DICM`` magic at byte 128."""
    path = Path(path)
    if path.suffix.lower() in DICOM_EXTENSIONS:
        return True
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return has_dicom_magic(head)


def has_dicom_magic(data: bytes) -> bool:
    """True when ``data`` (a file's first bytes or all of it) has the ``DICM`` prefix at byte
    128 of a DICOM Part 10 file (DICOM PS3.10 7.1)."""
    return len(data) >= 132 and data[128:132] == b"DICM"


def _read_dataset(path: str, stop_before_pixels: bool = False):
    """``pydicom.dcmread`` with every element converted (pydicom converts an element's raw
    bytes when it is first accessed), so that a damaged element is reported here, as a
    corrupt file, whatever part of the header is read later.

    Raises:
        UnreadableImage: not DICOM, truncated, or an element pydicom cannot convert.
    """
    import pydicom
    from pydicom.errors import BytesLengthException, InvalidDicomError
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dataset = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
            for _ in dataset.iterall():
                pass
            return dataset
    except InvalidDicomError as err:
        raise UnreadableImage(f"not a DICOM file ({err})") from None
    # TypeError among them: the guarded code is pydicom's alone (e.g. a value of the wrong kind)
    except (EOFError, OSError, ValueError, KeyError, IndexError, TypeError, AttributeError, NotImplementedError,
            OverflowError, MemoryError, struct.error, BytesLengthException) as err:
        raise UnreadableImage(f"corrupt or truncated DICOM file ({err.__class__.__name__}: {err})") from None


def _numbers(dataset, keyword: str) -> list[float] | None:
    """The values of a numeric header element as floats (one for a single value), or None
    when it is absent or empty.

    Raises:
        UnreadableImage: a value that is not a finite number (named with the element).
    """
    value = dataset.get(keyword)
    if value is None or (isinstance(value, (str, bytes)) and not value.strip()):
        return None
    values = list(value) if isinstance(value, Sequence) and not isinstance(value, (str, bytes)) else [value]
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError):  # the file's value, e.g. '33.3K3' or bytes: not ours
        numbers = [math.nan]
    if not numbers:
        return None
    if not all(math.isfinite(n) for n in numbers):
        raise UnreadableImage(f"{keyword} {value!r} is not a number")
    return numbers


def _number(dataset, keyword: str, default: float) -> float:
    """The first value of a numeric header element; ``default`` when absent, empty or 0."""
    numbers = _numbers(dataset, keyword)
    return numbers[0] if numbers and numbers[0] else default


def _count(dataset, keyword: str, default: int) -> int:
    """A whole-number header element (Rows, BitsStored, ...); ``default`` when absent or 0.

    Raises:
        UnreadableImage: not a whole number.
    """
    value = _number(dataset, keyword, default)
    if value != int(value):
        raise UnreadableImage(f"{keyword} {value!r} is not a whole number")
    return int(value)


# what pydicom (and the decoder plugins it calls: Pillow, pylibjpeg, numpy) raise for damaged
# or inconsistent pixel data and header values. TypeError is among them (e.g. a header value
# of the wrong kind meeting arithmetic inside pydicom): the guarded code is pydicom's alone.
_PIXEL_ERRORS = (ValueError, TypeError, AttributeError, KeyError, IndexError, NotImplementedError,
                 RuntimeError, OSError, EOFError, struct.error, zlib.error, MemoryError)


def _pixels(dataset) -> np.ndarray:
    """Stored pixel values through the Modality LUT, float32 ``(rows, cols)`` or ``(frames, rows, cols)``
    (colour images are converted to luma)."""
    if "PixelData" not in dataset and "FloatPixelData" not in dataset and "DoubleFloatPixelData" not in dataset:
        raise UnreadableImage("DICOM file has no pixel data (no PixelData element)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            array = dataset.pixel_array
    except _PIXEL_ERRORS as err:
        raise UnreadableImage(f"corrupt or truncated DICOM pixel data ({err.__class__.__name__}: {err})") from None
    if _colour(dataset):  # ITU-R 601 luma, as Pillow does for 2D images
        if array.shape[-1] != 3:
            raise UnreadableImage(f"colour pixel data of shape {array.shape}: not 3 samples per pixel")
        return np.asarray(array, np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.asarray(_modality(array, dataset), np.float32)
    except _PIXEL_ERRORS as err:
        raise UnreadableImage(f"cannot apply its Modality LUT ({err.__class__.__name__}: {err})") from None


def _colour(dataset) -> bool:
    return _count(dataset, "SamplesPerPixel", 1) > 1


def _modality(stored: np.ndarray, dataset) -> np.ndarray:
    """Stored values through the Modality LUT (and an RT dose grid's DoseGridScaling)."""
    from pydicom.pixels import apply_modality_lut
    values = apply_modality_lut(stored, dataset)
    if "DoseGridScaling" in dataset and "RescaleSlope" not in dataset:  # RT dose grids
        values = values * _number(dataset, "DoseGridScaling", 1.0)
    return values


def _header_range(dataset) -> tuple[float, float] | None:
    """``(lo, hi)``: the range of values the header allows, the stored range of BitsStored
    bits (signed if PixelRepresentation is 1) through the Modality LUT; None for float pixel
    data (no stored range).

    Raises:
        UnreadableImage: BitsStored missing or not in 1..32.
    """
    if "PixelData" not in dataset:  # FloatPixelData / DoubleFloatPixelData
        return None
    bits = _count(dataset, "BitsStored", 0) or _count(dataset, "BitsAllocated", 0)
    if not 1 <= bits <= 32:
        raise UnreadableImage(f"MONOCHROME1 image with BitsStored={bits}: no stored range to invert against")
    if _count(dataset, "PixelRepresentation", 0) == 1:
        extremes = np.array([-(1 << (bits - 1)), (1 << (bits - 1)) - 1], np.int64)
    else:
        extremes = np.array([0, (1 << bits) - 1], np.int64)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lo, hi = sorted(float(v) for v in _modality(extremes, dataset))
    except _PIXEL_ERRORS as err:
        raise UnreadableImage(f"cannot apply its Modality LUT ({err.__class__.__name__}: {err})") from None
    return lo, hi


def _display(values: np.ndarray, dataset, window) -> np.ndarray:
    """Window (optional) and MONOCHROME1 inversion of modality values (module docstring)."""
    inverted = str(dataset.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1"
    if window == "file" and not _colour(dataset):
        out = file_window(values, dataset)
    elif window is not None:  # a preset, [center, width], or a colour image's own window on its luma
        out = apply_window(values, *window_bounds(window, dataset))
    elif inverted:
        bounds = _header_range(dataset)
        if bounds is None:
            return (-values).astype(np.float32)
        return (bounds[0] + bounds[1] - np.asarray(values, np.float64)).astype(np.float32)
    else:
        return values
    return 1.0 - out if inverted else out


def _pixel_spacing(dataset) -> tuple[float, float]:
    """``(row, col)`` spacing in mm: PixelSpacing, else ImagerPixelSpacing, else 1.

    Raises:
        UnreadableImage: a spacing that is not two numbers.
    """
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        spacing = _numbers(dataset, keyword)
        if spacing:
            if len(spacing) < 2:
                raise UnreadableImage(f"{keyword} has {len(spacing)} value(s), not 2 (row, column)")
            return spacing[0], spacing[1]
    return 1.0, 1.0


def read_dicom_file(path: str, window=None) -> tuple[np.ndarray, tuple[float, ...]]:
    """Read one DICOM file.

    Returns:
        ``(array, spacing)``: float32 ``(rows, cols)`` for a single frame, or
        ``(frames, rows, cols)`` for a multi-frame file; ``spacing`` in mm per axis
        (frames: SpacingBetweenSlices or SliceThickness, else 1).

    Raises:
        UnreadableImage: not DICOM, truncated, no pixel data (or none of the declared size),
            a damaged header value (named), or a 'file' window the file lacks or that pydicom
            cannot apply.
    """
    dataset = _read_dataset(path)
    values = _display(_pixels(dataset), dataset, window)
    if values.size == 0:
        raise UnreadableImage(f"has pixel data of shape {values.shape}: no pixels")
    row, col = _pixel_spacing(dataset)
    if values.ndim == 3 and values.shape[0] == 1:
        values = values[0]
    if values.ndim == 3:
        return values, (_frame_spacing(dataset), row, col)
    return values, (row, col)


def series_files(folder: str | os.PathLike) -> list[str]:
    """The DICOM files of a series folder (non-recursive; hidden and non-DICOM files ignored), sorted by name."""
    folder = Path(folder)
    return sorted(str(p) for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and looks_like_dicom(p))


def read_dicom_series(folder: str | os.PathLike, window=None) -> tuple[np.ndarray, tuple[float, float, float], list[str]]:
    """Read a series folder as one volume.

    Returns:
        ``(volume, spacing, files)``: float32 ``(slices, rows, cols)`` sorted along the
        slice normal, spacing ``(slice, row, col)`` in mm (slice spacing from the median
        distance between positions), and the slice files in volume order.

    Raises:
        UnreadableImage: no DICOM slices, an unreadable slice (named), or slices of
            different sizes.
    """
    files = series_files(folder)
    if not files:
        raise UnreadableImage("series folder contains no DICOM files")
    slices = []
    for file in files:
        try:
            dataset = _read_dataset(file)
        except UnreadableImage as err:
            if "not a DICOM file" in str(err) and Path(file).suffix.lower() not in DICOM_EXTENSIONS:
                continue  # a stray non-DICOM file
            raise UnreadableImage(f"slice {Path(file).name}: {err}") from None
        slices.append((file, dataset))
    if not slices:
        raise UnreadableImage("series folder contains no DICOM files")
    keys = []
    for file, dataset in slices:
        try:
            keys.append(_slice_position(dataset))
        except UnreadableImage as err:
            raise UnreadableImage(f"slice {Path(file).name}: {err}") from None
    order = sorted(range(len(slices)), key=lambda i: (keys[i], slices[i][0]))
    slices = [slices[i] for i in order]
    positions = [keys[i] for i in order]
    arrays = []
    for file, dataset in slices:
        try:
            values = _display(_pixels(dataset), dataset, window)
            if values.size == 0 or values.ndim not in (2, 3):
                raise UnreadableImage(f"has pixel data of shape {values.shape}, not one image")
        except UnreadableImage as err:
            raise UnreadableImage(f"slice {Path(file).name}: {err}") from None
        arrays.append(values if values.ndim == 2 else values[0])
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise UnreadableImage(f"slices have different sizes {sorted(shapes)}")
    volume = np.stack(arrays).astype(np.float32)
    try:
        row, col = _pixel_spacing(slices[0][1])
        depth = _slice_spacing(positions, slices[0][1])
    except UnreadableImage as err:
        raise UnreadableImage(f"slice {Path(slices[0][0]).name}: {err}") from None
    return volume, (depth, row, col), [f for f, _ in slices]


def _slice_spacing(positions: list[float], first) -> float:
    """Slice spacing (mm): the median distance between sorted slice positions, else the
    first slice's SliceThickness, else 1."""
    positions = sorted(positions)
    steps = np.diff(positions) if len(positions) > 1 else np.array([])
    steps = np.abs(steps[np.isfinite(steps)]) if len(steps) else steps
    return float(np.median(steps)) if len(steps) and np.median(steps) > 0 else \
        _number(first, "SliceThickness", 1.0)


def _frame_spacing(dataset) -> float:
    """Spacing of the frames of a multi-frame file (mm): SpacingBetweenSlices, else
    SliceThickness, else 1."""
    return _number(dataset, "SpacingBetweenSlices", 0.0) or _number(dataset, "SliceThickness", 1.0)


def _slice_position(dataset) -> float:
    """Position along the slice normal (mm), else InstanceNumber, else 0."""
    position = _numbers(dataset, "ImagePositionPatient")
    orientation = _numbers(dataset, "ImageOrientationPatient")
    if position is not None and orientation is not None and len(orientation) == 6 and len(position) == 3:
        normal = np.cross(np.asarray(orientation[:3], float), np.asarray(orientation[3:], float))
        return float(np.dot(normal, np.asarray(position, float)))
    number = _numbers(dataset, "InstanceNumber")
    return number[0] if number else 0.0


def probe_dicom(path: str) -> dict:
    """Header facts without decoding pixels: ``shape`` (spatial), ``spatial_dims``,
    ``spacing`` (mm per axis, as :func:`read_dicom_file` / :func:`read_dicom_series` give
    it: PixelSpacing, and for a series the slice spacing from the slice positions, so every
    slice header of the series is read) and ``bits_stored``.

    Raises:
        UnreadableImage: not a DICOM file.
    """
    if os.path.isdir(path):
        files = series_files(path)
        if not files:
            raise UnreadableImage("series folder contains no DICOM files")
        dataset = _read_dataset(files[0], stop_before_pixels=True)
        positions = []
        for file in files:
            try:
                positions.append(_slice_position(_read_dataset(file, stop_before_pixels=True)))
            except UnreadableImage:
                continue  # named when the series is read
        return {"shape": [len(files), _count(dataset, "Rows", 0), _count(dataset, "Columns", 0)],
                "spatial_dims": 3, "format": "dicom-series",
                "spacing": [_slice_spacing(positions, dataset), *_pixel_spacing(dataset)],
                "bits_stored": _count(dataset, "BitsStored", 0) or None}
    dataset = _read_dataset(path, stop_before_pixels=True)
    frames = _count(dataset, "NumberOfFrames", 1)
    shape = [_count(dataset, "Rows", 0), _count(dataset, "Columns", 0)]
    facts = {"bits_stored": _count(dataset, "BitsStored", 0) or None}
    if frames > 1:
        return {"shape": [frames] + shape, "spatial_dims": 3, "format": "dicom",
                "spacing": [_frame_spacing(dataset), *_pixel_spacing(dataset)], **facts}
    return {"shape": shape, "spatial_dims": 2, "format": "dicom", "spacing": list(_pixel_spacing(dataset)),
            **facts}
