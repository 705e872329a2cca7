"""Intensity windows: CT presets, explicit ``[center, width]`` and a DICOM file's own VOI
transformation (window or VOI LUT), each mapped to ``[0, 1]``.

Presets and ``[center, width]`` map ``center - width/2 .. center + width/2`` linearly to
``[0, 1]`` with clipping (:func:`apply_window`). A DICOM file's own window (``'file'``) is
applied by pydicom as the standard defines it (:func:`file_window`).
"""
from __future__ import annotations

import struct
import warnings

import numpy as np

from ...errors import UnreadableImage

WINDOW_PRESETS = {"lung": (-600.0, 1500.0), "mediastinum": (50.0, 350.0), "brain": (40.0, 80.0),
                  "bone": (400.0, 1800.0), "soft_tissue": (50.0, 400.0)}
"""CT window presets (center, width) in Hounsfield units (Radiopaedia's usual values)."""

NO_FILE_WINDOW = ("has no window of its own (no WindowCenter/WindowWidth and no VOI LUT Sequence); set "
                  "preprocess.window to a preset (lung, mediastinum, brain, bone, soft_tissue) or [center, width]")

# what pydicom raises for VOI LUT Module values it cannot apply (a width below 1, an unknown
# VOILUTFunction, a LUT of an unsupported depth or shorter than its descriptor, missing
# BitsStored/PixelRepresentation)
_VOI_ERRORS = (ValueError, AttributeError, KeyError, IndexError, NotImplementedError, struct.error)


def window_bounds(window, dataset=None) -> tuple[float, float] | None:
    """``(center, width)`` of a window setting, or None for no window.

    Args:
        window: a preset name from :data:`WINDOW_PRESETS`, ``'file'``,
            ``[center, width]`` or None.
        dataset: the pydicom dataset, for ``'file'`` (first value of a multi-valued
            WindowCenter/WindowWidth).

    Raises:
        UnreadableImage: ``'file'`` and the dataset has no WindowCenter/WindowWidth.
    """
    if window is None:
        return None
    if isinstance(window, str) and window != "file":
        return WINDOW_PRESETS[window]
    if window == "file":
        if dataset is None or "WindowCenter" not in dataset or "WindowWidth" not in dataset:
            raise UnreadableImage(NO_FILE_WINDOW)
        center, width = dataset.WindowCenter, dataset.WindowWidth
        center = float(center[0] if _multi(center) else center)
        width = float(width[0] if _multi(width) else width)
        return center, width
    center, width = window
    return float(center), float(width)


def _multi(value) -> bool:
    return not isinstance(value, (str, bytes)) and hasattr(value, "__len__")


def apply_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """Map ``center - width/2 .. center + width/2`` to ``[0, 1]``, clipping outside; float32
    of the shape of ``values``."""
    low = center - width / 2.0
    return np.clip((np.asarray(values, np.float64) - low) / width, 0.0, 1.0).astype(np.float32)


def _voi_lut_item(dataset):
    """The first VOI LUT Sequence item if it has LUTDescriptor and LUTData (the test of
    :func:`pydicom.pixels.apply_voi_lut`), else None."""
    sequence = dataset.get("VOILUTSequence")
    if sequence and sequence[0].get("LUTDescriptor") is not None and sequence[0].get("LUTData") is not None:
        return sequence[0]
    return None


def has_file_window(dataset) -> bool:
    """Whether a DICOM dataset has a VOI transformation of its own: WindowCenter and
    WindowWidth, or a usable VOI LUT Sequence."""
    return _voi_lut_item(dataset) is not None or ("WindowCenter" in dataset and "WindowWidth" in dataset)


def file_window(values: np.ndarray, dataset) -> np.ndarray:
    """A monochrome DICOM image through its own VOI transformation, mapped to ``[0, 1]``.

    The transformation is :func:`pydicom.pixels.apply_voi_lut` (DICOM PS3.3 C.11.2): the
    first VOI LUT Sequence item if there is one (pydicom prefers it to a window), else the
    first WindowCenter/WindowWidth with the file's VOILUTFunction: ``LINEAR`` (the default;
    PS3.3 C.11.2.1.2.1, ``center - 0.5`` and ``width - 1``), ``LINEAR_EXACT`` or
    ``SIGMOID``. Its output is mapped to ``[0, 1]`` by the output range, never by the
    image's own minimum and maximum, so a stored value gives the same result in every image
    of the same header values:

    * a window: pydicom's output range ``y_min .. y_max`` (from BitsStored,
      PixelRepresentation and the Modality LUT, PS3.3 C.11.2.1.2), read by passing the two
      extreme inputs through the same window;
    * a VOI LUT: ``0 .. the largest LUT entry`` (LUT Data, read through pydicom for every
      input the LUT covers). The entries' bit depth in the LUT Descriptor is not used: many
      files declare 16 bits for 12-bit entries. Inputs are rounded to integers (a LUT is
      indexed by them).

    Args:
        values: Modality LUT output (e.g. Hounsfield units), ``(rows, cols)`` or
            ``(frames, rows, cols)``.
        dataset: the pydicom dataset (VOI LUT Module).

    Returns:
        float32 in ``[0, 1]``, the shape of ``values``; high values bright (MONOCHROME1
        inversion is the caller's).

    Raises:
        UnreadableImage: no window or VOI LUT of its own, or one pydicom cannot apply
            (e.g. a width below 1, an unknown VOILUTFunction), named with pydicom's reason.
    """
    from pydicom.pixels import apply_voi_lut

    if not has_file_window(dataset):
        raise UnreadableImage(NO_FILE_WINDOW)
    try:
        with warnings.catch_warnings(), np.errstate(over="ignore"):
            warnings.simplefilter("ignore")
            item = _voi_lut_item(dataset)
            if item is not None:
                entries, first = int(item.LUTDescriptor[0]) or 1 << 16, int(item.LUTDescriptor[1])
                inputs = np.arange(first, first + entries, dtype=np.int64)
                top = float(np.max(apply_voi_lut(inputs, dataset)))
                if top <= 0:
                    raise UnreadableImage("its VOI LUT maps every value to 0")
                # inputs outside the LUT take its first or last entry (PS3.3 C.11.2.1.1)
                indices = np.clip(np.rint(values), first, first + entries - 1).astype(np.int64)
                out = apply_voi_lut(indices, dataset) / top
            else:
                low, high = apply_voi_lut(np.array([-1e30, 1e30]), dataset)
                if not np.isfinite(high - low) or high == low:
                    raise UnreadableImage(f"its window's output range {low:g} .. {high:g} is empty")
                out = (apply_voi_lut(np.asarray(values, np.float64), dataset) - low) / (high - low)
    except _VOI_ERRORS as err:
        raise UnreadableImage(f"cannot apply its own window or VOI LUT ({err.__class__.__name__}: {err})") from None
    return np.clip(out, 0.0, 1.0).astype(np.float32)
