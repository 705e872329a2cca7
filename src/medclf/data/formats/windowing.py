"""Intensity windows: CT presets, explicit ``[center, width]`` and a DICOM file's own window,
mapping ``center - width/2 .. center + width/2`` linearly to ``[0, 1]`` with clipping."""
from __future__ import annotations

import numpy as np

from ...errors import UnreadableImage

WINDOW_PRESETS = {"lung": (-600.0, 1500.0), "mediastinum": (50.0, 350.0), "brain": (40.0, 80.0),
                  "bone": (400.0, 1800.0), "soft_tissue": (50.0, 400.0)}
"""CT window presets (center, width) in Hounsfield units (Radiopaedia's usual values)."""


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
            raise UnreadableImage("has no WindowCenter/WindowWidth of its own; set preprocess.window "
                                  "to a preset (lung, mediastinum, brain, bone, soft_tissue) or [center, width]")
        center, width = dataset.WindowCenter, dataset.WindowWidth
        center = float(center[0] if _multi(center) else center)
        width = float(width[0] if _multi(width) else width)
        return center, width
    center, width = window
    return float(center), float(width)


def _multi(value) -> bool:
    return not isinstance(value, (str, bytes)) and hasattr(value, "__len__")


def apply_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """Map ``center - width/2 .. center + width/2`` to ``[0, 1]``, clipping outside; float32."""
    low = center - width / 2.0
    return np.clip((np.asarray(values, np.float64) - low) / width, 0.0, 1.0).astype(np.float32)

