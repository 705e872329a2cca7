"""NIfTI reading with nibabel (``.nii``, ``.nii.gz``).

Volumes are reoriented to the closest canonical orientation, RAS+ (array axes point to
the patient's Right, Anterior, Superior; :func:`nibabel.as_closest_canonical`), so that
the same anatomy lies along the same array axis whatever the scanner wrote. Voxel
spacing (mm) comes from the header zooms of the reoriented image; resampling to a target
spacing is done by :func:`medclf.data.preprocess.resample_to_spacing` (MONAI ``Spacing``).
"""
from __future__ import annotations

import struct
import zlib

import numpy as np

from ...errors import UnreadableImage
from .windowing import apply_window, window_bounds

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def _decoder_errors() -> tuple[type[BaseException], ...]:
    """What nibabel (with gzip/zlib and numpy under it) raises for a damaged file: its own
    ``ImageFileError``, ``HeaderDataError``, ``ImageDataError``, ``WrapStructError`` and
    ``OrientationError`` (e.g. an affine without a usable rotation); ``OSError`` (also
    ``gzip.BadGzipFile``), ``EOFError``, ``zlib.error``, ``ValueError`` (also numpy's
    ``LinAlgError``), ``OverflowError`` and ``struct.error`` (short or inconsistent headers and
    data); ``MemoryError`` (a header declaring a huge array). Our own programming errors
    (``TypeError``, ``NameError``, ...) propagate."""
    from nibabel.filebasedimages import ImageFileError
    from nibabel.orientations import OrientationError
    from nibabel.spatialimages import HeaderDataError, ImageDataError
    from nibabel.wrapstruct import WrapStructError
    return (ImageFileError, HeaderDataError, ImageDataError, WrapStructError, OrientationError,
            OSError, EOFError, zlib.error, ValueError, OverflowError, struct.error, MemoryError)


def is_nifti(path: str) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def _load(path: str):
    import nibabel as nib
    try:
        return nib.load(path)
    except _decoder_errors() as err:
        raise UnreadableImage(f"not a readable NIfTI file ({err.__class__.__name__}: {err})") from None


def read_nifti(path: str, window=None) -> tuple[np.ndarray, tuple[float, ...], np.ndarray]:
    """Read a NIfTI image in RAS+ orientation.

    Trailing singleton axes are dropped, so ``(H, W, 1)`` is a 2D image; a 4D image with
    one time point is a 3D volume.

    Args:
        path: ``.nii`` or ``.nii.gz`` file.
        window: optional ``[center, width]`` or preset name, applied to the stored values
            (scaled by the header's scl_slope/scl_inter), mapping the window to [0, 1].

    Returns:
        ``(array, spacing, affine)``: float32 ``(X, Y, Z)`` volume (or ``(X, Y)`` image),
        spacing in mm per array axis, and the 4x4 voxel-to-world affine of the reoriented image.

    Raises:
        UnreadableImage: unreadable or truncated file, no voxels, more than one time point or
            channel, or a window of 'file' (NIfTI has no window of its own).
    """
    import nibabel as nib
    image = _load(path)
    if len(image.shape) > 3 and int(np.prod(image.shape[3:])) != 1:
        raise UnreadableImage(f"has shape {tuple(image.shape)}: 4D (time series or multi-channel) images are not supported")
    try:
        if len(image.shape) >= 3:
            image = nib.as_closest_canonical(nib.funcs.squeeze_image(image))
        data = np.asarray(image.get_fdata(dtype=np.float32))
    except _decoder_errors() as err:
        raise UnreadableImage(f"corrupt or truncated NIfTI file ({err.__class__.__name__}: {err})") from None
    if data.size == 0:
        raise UnreadableImage(f"has shape {tuple(image.shape)}: no voxels")
    zooms = tuple(float(z) for z in image.header.get_zooms()[: data.ndim])
    while data.ndim > 2 and data.shape[-1] == 1:
        data = data[..., 0]
        zooms = zooms[: data.ndim]
    if window is not None:
        if window == "file":
            raise UnreadableImage("NIfTI files have no window of their own; set preprocess.window to a preset or [center, width]")
        data = apply_window(data, *window_bounds(window))
    return data.astype(np.float32, copy=False), zooms, np.asarray(image.affine)


def probe_nifti(path: str) -> dict:
    """Header facts (no voxel data read), in the RAS+ array order of :func:`read_nifti`:
    spatial ``shape``, ``spatial_dims``, ``spacing`` (mm per array axis: the header zooms
    permuted as :func:`nibabel.as_closest_canonical` permutes the axes) and ``dtype``.

    Raises:
        UnreadableImage: not a readable NIfTI header, or an affine without an orientation.
    """
    import nibabel as nib
    image = _load(path)
    shape = [int(s) for s in image.shape]
    zooms = [float(z) for z in image.header.get_zooms()[: len(shape)]]
    if len(shape) >= 3:  # the axis permutation of the reorientation, read from the affine
        try:
            ornt = nib.io_orientation(image.affine)
        except _decoder_errors() as err:
            raise UnreadableImage(f"not a readable NIfTI file ({err.__class__.__name__}: {err})") from None
        if not np.isfinite(ornt[:3, 0]).all():  # an axis without a direction: nothing to reorient by
            raise UnreadableImage(f"its affine gives no orientation to every axis ({np.asarray(image.affine).tolist()})")
        ras_shape, ras_zooms = list(shape[:3]), list(zooms[:3])
        for axis, (target, _) in enumerate(ornt[:3]):
            ras_shape[int(target)], ras_zooms[int(target)] = shape[axis], zooms[axis]
        shape, zooms = ras_shape + shape[3:], ras_zooms + zooms[3:]
    while len(shape) > 2 and shape[-1] == 1:
        shape, zooms = shape[:-1], zooms[:-1]
    return {"shape": shape[:3], "spatial_dims": 3 if len(shape) >= 3 else 2, "spacing": zooms[:3],
            "format": "nifti", "dtype": str(image.get_data_dtype())}
