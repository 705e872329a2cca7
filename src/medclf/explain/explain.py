"""Explain predictions of a run: probabilities, a saliency heatmap and an overlay figure.

:func:`explain_image` is the reusable entry point (``medclf explain`` and the gallery use
:class:`Explainer`). Every input is read by the data stage exactly as ``medclf train`` and
``medclf predict`` read it (:func:`medclf.data.preprocess.decode_file` then
:func:`~medclf.data.preprocess.finish`), so a heatmap explains the very input the model
classifies: 2D images, DICOM files and series folders, NIfTI volumes (reoriented to RAS+,
windowed, resampled to ``preprocess.spacing``) and ``file.npz#split/index`` items.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import rundir
from ..data.formats import match_channels, probe, source_format
from ..data.formats.nifti import read_nifti
from ..data.formats.npz import parse_item
from ..data.preprocess import decode_file, finish, fit_to_size
from ..errors import DataError, UnreadableImage
from ..evaluation.predict import load_model
from ..io import atomic_write
from ..training.tasks import activate, task_of
from .cam import Saliency
from .overlay import overlay_png


@dataclass
class Explanation:
    """The explanation of one image; unpacks as ``probabilities, heatmap, png``.

    Attributes:
        probabilities: ``{class_name: probability}`` (softmax, sums to 1; multilabel: one
            sigmoid probability per finding; regression: ``{target: predicted value}``).
        heatmap: float32 ``(H, W)`` or ``(D, H, W)`` in [0, 1], the model input's size.
        png: PNG bytes of original | heatmap | overlay (three orthogonal slices for volumes).
        predicted: the most probable class.
        class_name: the class the heatmap explains.
        image: the preprocessed model input ``(C, *spatial)``.
        affine: 4x4 voxel-to-world matrix (mm) of a NIfTI input after its reorientation to
            RAS+ (:func:`medclf.data.formats.nifti.read_nifti`); None for other inputs.
        original_shape: spatial shape of the input before resampling and resizing (for NIfTI
            in RAS+ axis order, the shape of ``read_nifti``'s array).
    """

    probabilities: dict
    heatmap: np.ndarray
    png: bytes
    predicted: str = ""
    class_name: str = ""
    image: np.ndarray | None = field(default=None, repr=False)
    affine: np.ndarray | None = field(default=None, repr=False)
    original_shape: tuple | None = None

    def __iter__(self):
        return iter((self.probabilities, self.heatmap, self.png))


@dataclass
class ExplainInput:
    """One input read for explanation.

    Attributes:
        image: float32 model input ``(C, *image_size)``, what ``medclf predict`` feeds the model.
        shown: float32 ``(C, *image_size)``: the decoded intensities on the model's grid before
            ``preprocess.steps`` and the normalisation, drawn under the heatmap.
        affine: see :attr:`Explanation.affine`.
        original_shape: see :attr:`Explanation.original_shape`.
    """

    image: np.ndarray
    shown: np.ndarray
    affine: np.ndarray | None
    original_shape: tuple


def read_input(path_or_array, config) -> ExplainInput:
    """Read one input with the run's preprocessing (the data stage's, nothing of its own).

    A path (``str`` or :class:`~pathlib.Path`) is anything ``medclf predict`` takes: a 2D
    image, a DICOM file or series folder, a NIfTI volume or a ``file.npz#split/index`` item.
    It is decoded by :func:`medclf.data.preprocess.decode_file` (read, RAS+ reorientation and
    window for NIfTI, spacing resampling, ``fit_to_size``) and finished by
    :func:`~medclf.data.preprocess.finish` (steps, normalisation).

    An array is taken as raw intensities ``(*spatial)``, ``(C, *spatial)`` or, in 2D, an
    ``(H, W, RGB[A])`` picture, like one image of an npz file: channels are matched to
    ``data.in_channels`` (colour -> gray by luminance, gray repeated), it is brought to
    ``data.image_size`` by :func:`~medclf.data.preprocess.fit_to_size` and finished with the
    full scale of its dtype (``iinfo(dtype).max`` for integers, 1 for floats; as npz items).

    Raises:
        DataError: missing or unreadable file (the message names it), or an array whose
            dimensions do not fit the run (2D vs 3D).
    """
    if not isinstance(path_or_array, (str, os.PathLike)):
        shown, full_scale = _decode_array(path_or_array, config)
        return ExplainInput(finish(shown, full_scale, config), shown, None,
                            tuple(np.shape(path_or_array))[-config.model.spatial_dims:])
    path = str(path_or_array)
    _check_exists(path)
    try:
        shown, full_scale = decode_file(path, config)
        affine, shape = _geometry(path, shown, config)
        image = finish(shown, full_scale, config)
    except UnreadableImage as err:
        raise DataError(f"{path}: {err}") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read file ({err.strerror or err})") from None
    return ExplainInput(image, shown, affine, shape)


def _check_exists(path: str) -> None:
    target = parse_item(path)[0] if source_format(path) == "npz" else path
    if not os.path.exists(target):
        raise DataError(f"{path}: file not found")


def _geometry(path: str, shown: np.ndarray, config) -> tuple[np.ndarray | None, tuple]:
    """``(affine, original_shape)`` of a decoded input: for NIfTI the RAS+ affine and shape of
    :func:`~medclf.data.formats.nifti.read_nifti` (the orientation the model saw); for other
    volumes the file's shape (:func:`medclf.data.formats.probe`) and no affine; for 2D the grid."""
    if config.model.spatial_dims != 3:
        return None, tuple(shown.shape[1:])
    if source_format(path) == "nifti":
        array, _, affine = read_nifti(path)  # the same reader and reorientation as decode_file
        return affine, tuple(array.shape)
    shape = tuple(int(s) for s in probe(path)["shape"])
    return None, shape if len(shape) == 3 else tuple(shown.shape[1:])


def _decode_array(array, config) -> tuple[np.ndarray, float]:
    """Raw array -> ``(raw (C, *image_size), full_scale)`` (see :func:`read_input`)."""
    stored = np.asarray(array)
    spatial_dims = config.model.spatial_dims
    full_scale = float(np.iinfo(stored.dtype).max) if stored.dtype.kind in "ui" else 1.0
    raw = stored.astype(np.float32)
    if spatial_dims == 2 and raw.ndim == 3 and raw.shape[-1] in (3, 4) and raw.shape[0] not in (1, 3, 4):
        raw = np.moveaxis(raw[..., :3], -1, 0)  # an (H, W, RGB[A]) picture -> (C, H, W)
    if raw.ndim == spatial_dims:
        raw = raw[None]
    if raw.ndim != spatial_dims + 1:
        raise DataError(f"an array of shape {stored.shape} does not fit a {spatial_dims}D model "
                        f"(expected (C, *spatial) with {spatial_dims} spatial axes)")
    try:
        return fit_to_size(match_channels(raw, config.data.in_channels), config), full_scale
    except UnreadableImage as err:
        raise DataError(f"an array of shape {stored.shape}: {err}") from None


class Explainer:
    """Explain images with one model; the model and the saliency hooks are set up once.

    Args:
        model: network ``(N, C, *spatial) -> (N, num_classes)``.
        config: the run's :class:`~medclf.config.Config` (preprocessing, spatial_dims).
        class_names: class names in output order.
        method: ``gradcam`` (default), ``gradcampp`` or ``occlusion``.
        target_layer: Grad-CAM layer name (None: the last convolutional block).

    Raises:
        ConfigError: unknown method or layer.
    """

    def __init__(self, model, config, class_names: list[str], method: str = "gradcam",
                 target_layer: str | None = None):
        self.config = config
        self.class_names = list(class_names)
        self.method = method
        self.model = model.float().eval()
        self.saliency = Saliency(self.model, method, target_layer)

    @classmethod
    def from_run(cls, run, method: str = "gradcam", target_layer: str | None = None) -> "Explainer":
        """Load a run directory (path or :class:`~medclf.rundir.Run`) and its best checkpoint.

        Raises:
            RunDirError: not a run directory, or no checkpoint.
        """
        run = run if isinstance(run, rundir.Run) else rundir.load_run(run)
        return cls(load_model(run), run.config, run.class_names, method, target_layer)

    def class_index(self, class_name: str | None) -> int | None:
        """Index of ``class_name`` (None stays None: the predicted class).

        Raises:
            DataError: the run has no such class.
        """
        if class_name is None:
            return None
        if class_name not in self.class_names:
            raise DataError(f"class {class_name!r} is not a class of this run; its classes are: "
                            f"{', '.join(self.class_names)}")
        return self.class_names.index(class_name)

    def explain_tensor(self, image: np.ndarray, class_name: str | None = None,
                       shown: np.ndarray | None = None) -> Explanation:
        """Explain one preprocessed model input ``(C, *spatial)``.

        Args:
            image: the model input ``(C, H, W)`` or ``(C, D, H, W)``.
            class_name: the class to explain (None: the predicted one).
            shown: what the figure draws under the heatmap, same shape (default ``image``).
        """
        target = self.class_index(class_name)
        batch = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
        with torch.no_grad():
            # softmax; a sigmoid per finding (multilabel); the value itself (regression)
            probs = activate(self.model(batch).float(), task_of(self.config))[0].numpy()
        predicted = int(probs.argmax())
        index = predicted if target is None else target
        heatmap = self.saliency(batch, index)[0]
        title = (f"predicted {self.class_names[predicted]} ({probs[predicted]:.2f}); "
                 f"{self.method} for {self.class_names[index]} ({probs[index]:.2f})")
        png = overlay_png(image if shown is None else shown, heatmap, title)
        return Explanation({n: float(p) for n, p in zip(self.class_names, probs)}, heatmap, png,
                           self.class_names[predicted], self.class_names[index], image)

    def explain_input(self, item: ExplainInput, class_name: str | None = None) -> Explanation:
        """Explain an input read by :func:`read_input`."""
        result = self.explain_tensor(item.image, class_name, item.shown)
        result.affine, result.original_shape = item.affine, item.original_shape
        return result

    def explain(self, path_or_array, class_name: str | None = None) -> Explanation:
        """Explain a file, an npz item or a raw array (see :func:`read_input`).

        Raises:
            DataError: unreadable input or unknown class name.
        """
        self.class_index(class_name)  # fail before reading anything
        return self.explain_input(read_input(path_or_array, self.config), class_name)


def explain_image(run, path_or_array, class_name: str | None = None, method: str = "gradcam",
                  target_layer: str | None = None) -> Explanation:
    """Probabilities, heatmap and overlay PNG of one image with a run's best checkpoint.

    The probabilities are those of ``medclf predict`` without test-time augmentation (its
    ``prob_<class>`` columns) and of the web service: the same reading and preprocessing.

    Args:
        run: run directory (path) or :class:`~medclf.rundir.Run`.
        path_or_array: a 2D image (PNG, JPEG, ...), DICOM file or series folder, NIfTI volume,
            ``file.npz#split/index`` item, or a raw array ``(*spatial)`` / ``(C, *spatial)``
            (see :func:`read_input`).
        class_name: class to explain (default: the predicted class).
        method: ``gradcam``, ``gradcampp`` or ``occlusion``.
        target_layer: Grad-CAM layer (default: the last convolutional block).

    Returns:
        :class:`Explanation`, which unpacks as ``(probabilities, heatmap, png)``.

    Raises:
        RunDirError: not a run directory.
        DataError: unreadable image or unknown class.
        ConfigError: unknown method or layer.
    """
    return Explainer.from_run(run, method, target_layer).explain(path_or_array, class_name)


def write_heatmap_nifti(result: Explanation, path: str | Path) -> Path:
    """Save a volume's heatmap ``(D, H, W)`` as NIfTI so that it overlays the input in a viewer.

    The heatmap is resized (MONAI ``Resize``, trilinear) from the model's grid back to
    ``result.original_shape``. For a NIfTI input that is the RAS+ shape and the RAS+ affine
    of :func:`~medclf.data.formats.nifti.read_nifti` (the orientation the model saw): the
    heatmap's array axes may be permuted/flipped against the input file's, but both map to
    the same world (scanner) coordinates, which is what viewers align. Other volumes (DICOM,
    npz) get an identity affine (voxel coordinates, the input's array order).

    Returns:
        the written path.
    """
    import nibabel as nib
    from monai.transforms import Resize
    heat = result.heatmap
    if result.original_shape and tuple(result.original_shape) != heat.shape:
        heat = np.asarray(Resize(list(result.original_shape), mode="trilinear")(heat[None]))[0]
    affine = result.affine if result.affine is not None else np.eye(4)
    image = nib.Nifti1Image(heat.astype(np.float32), affine)

    def write(tmp: str) -> None:
        nib.save(image, tmp + ".nii.gz")  # nibabel picks the format from the suffix
        Path(tmp + ".nii.gz").replace(tmp)
    return atomic_write(path, write)
