"""DICOM reading with pydicom: single files, multi-frame files and series folders.

Values go through the Modality LUT (Rescale Slope/Intercept, DICOM PS3.3 C.11.1, applied
by :func:`pydicom.pixels.apply_modality_lut`), so CT values are Hounsfield units. An
optional window (preset, explicit center/width, or the file's own WindowCenter/WindowWidth)
maps ``center - width/2 .. center + width/2`` linearly to ``[0, 1]`` with clipping.
MONOCHROME1 images (where low values are displayed white) are inverted so that, as in
MONOCHROME2, high values are bright: ``x' = max + min - x`` without a window, and
``1 - w`` after a window.

A series folder is one volume: every DICOM file in it is a slice (other files are
ignored), slices are sorted by their position along the slice normal
(ImagePositionPatient projected onto the cross product of the ImageOrientationPatient
row and column directions), falling back to InstanceNumber.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from ...errors import UnreadableImage
from .windowing import apply_window, window_bounds

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
    import pydicom
    from pydicom.errors import InvalidDicomError
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError as err:
        raise UnreadableImage(f"not a DICOM file ({err})") from None
    except (EOFError, OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise UnreadableImage(f"corrupt or truncated DICOM file ({err.__class__.__name__}: {err})") from None


def _pixels(dataset) -> np.ndarray:
    """Stored pixel values through the Modality LUT, float32 ``(rows, cols)`` or ``(frames, rows, cols)``
    (colour images are converted to luma)."""
    from pydicom.pixels import apply_modality_lut
    if "PixelData" not in dataset and "FloatPixelData" not in dataset and "DoubleFloatPixelData" not in dataset:
        raise UnreadableImage("DICOM file has no pixel data (no PixelData element)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            array = dataset.pixel_array
    except Exception as err:  # noqa: BLE001  (pydicom raises many types for bad pixel data)
        raise UnreadableImage(f"corrupt or truncated DICOM pixel data ({err.__class__.__name__}: {err})") from None
    samples = int(dataset.get("SamplesPerPixel", 1) or 1)
    if samples > 1:  # colour: ITU-R 601 luma, as Pillow does for 2D images
        array = np.asarray(array, np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        return array
    values = apply_modality_lut(array, dataset)
    if "DoseGridScaling" in dataset and "RescaleSlope" not in dataset:  # RT dose grids
        values = values * float(dataset.DoseGridScaling)
    return np.asarray(values, np.float32)


def _display(values: np.ndarray, dataset, window) -> np.ndarray:
    """Window (optional) and MONOCHROME1 inversion of modality values."""
    bounds = window_bounds(window, dataset)
    inverted = str(dataset.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1"
    if bounds is not None:
        out = apply_window(values, *bounds)
        return 1.0 - out if inverted else out
    if inverted:
        return (values.max() + values.min() - values).astype(np.float32)
    return values


def _pixel_spacing(dataset) -> tuple[float, float]:
    spacing = dataset.get("PixelSpacing") or dataset.get("ImagerPixelSpacing") or (1.0, 1.0)
    return float(spacing[0]), float(spacing[1])


def read_dicom_file(path: str, window=None) -> tuple[np.ndarray, tuple[float, ...]]:
    """Read one DICOM file.

    Returns:
        ``(array, spacing)``: float32 ``(rows, cols)`` for a single frame, or
        ``(frames, rows, cols)`` for a multi-frame file; ``spacing`` in mm per axis
        (frames: SpacingBetweenSlices or SliceThickness, else 1).

    Raises:
        UnreadableImage: not DICOM, truncated, no pixel data, or a 'file' window the file lacks.
    """
    dataset = _read_dataset(path)
    values = _display(_pixels(dataset), dataset, window)
    row, col = _pixel_spacing(dataset)
    if values.ndim == 3 and values.shape[0] == 1:
        values = values[0]
    if values.ndim == 3:
        depth = float(dataset.get("SpacingBetweenSlices") or dataset.get("SliceThickness") or 1.0)
        return values, (depth, row, col)
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
    keys = [_slice_position(ds) for _, ds in slices]
    order = sorted(range(len(slices)), key=lambda i: (keys[i], slices[i][0]))
    slices = [slices[i] for i in order]
    positions = [keys[i] for i in order]
    arrays = []
    for file, dataset in slices:
        try:
            values = _display(_pixels(dataset), dataset, window)
        except UnreadableImage as err:
            raise UnreadableImage(f"slice {Path(file).name}: {err}") from None
        arrays.append(values if values.ndim == 2 else values[0])
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise UnreadableImage(f"slices have different sizes {sorted(shapes)}")
    volume = np.stack(arrays).astype(np.float32)
    row, col = _pixel_spacing(slices[0][1])
    return volume, (_slice_spacing(positions, slices[0][1]), row, col), [f for f, _ in slices]


def _slice_spacing(positions: list[float], first) -> float:
    """Slice spacing (mm): the median distance between sorted slice positions, else the
    first slice's SliceThickness, else 1."""
    positions = sorted(positions)
    steps = np.diff(positions) if len(positions) > 1 else np.array([])
    steps = np.abs(steps[np.isfinite(steps)]) if len(steps) else steps
    return float(np.median(steps)) if len(steps) and np.median(steps) > 0 else \
        float(first.get("SliceThickness") or 1.0)


def _slice_position(dataset) -> float:
    """Position along the slice normal (mm), else InstanceNumber, else 0."""
    position = dataset.get("ImagePositionPatient")
    orientation = dataset.get("ImageOrientationPatient")
    if position is not None and orientation is not None and len(orientation) == 6:
        normal = np.cross(np.asarray(orientation[:3], float), np.asarray(orientation[3:], float))
        return float(np.dot(normal, np.asarray(position, float)))
    number = dataset.get("InstanceNumber")
    return float(number) if number is not None else 0.0


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
        return {"shape": [len(files), int(dataset.get("Rows", 0)), int(dataset.get("Columns", 0))],
                "spatial_dims": 3, "format": "dicom-series",
                "spacing": [_slice_spacing(positions, dataset), *_pixel_spacing(dataset)],
                "bits_stored": int(dataset.get("BitsStored", 0) or 0) or None}
    dataset = _read_dataset(path, stop_before_pixels=True)
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    shape = [int(dataset.get("Rows", 0)), int(dataset.get("Columns", 0))]
    facts = {"bits_stored": int(dataset.get("BitsStored", 0) or 0) or None}
    if frames > 1:
        depth = float(dataset.get("SpacingBetweenSlices") or dataset.get("SliceThickness") or 1.0)
        return {"shape": [frames] + shape, "spatial_dims": 3, "format": "dicom",
                "spacing": [depth, *_pixel_spacing(dataset)], **facts}
    return {"shape": shape, "spatial_dims": 2, "format": "dicom", "spacing": list(_pixel_spacing(dataset)),
            **facts}
