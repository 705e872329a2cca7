"""Explain predictions of a run: probabilities, a saliency heatmap and an overlay figure.

:func:`explain_image` is the reusable entry point (the command line and the web service
call it); :func:`explain_files` writes figures (and, for volumes, NIfTI heatmaps) to a folder.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import rundir
from ..errors import BadFilesError, DataError
from ..io import atomic_write, write_csv
from .cam import Saliency
from .overlay import overlay_png

NIFTI_SUFFIXES = (".nii", ".nii.gz")


@dataclass
class Explanation:
    """The explanation of one image; unpacks as ``probabilities, heatmap, png``.

    Attributes:
        probabilities: ``{class_name: probability}`` (softmax, sums to 1).
        heatmap: float32 ``(H, W)`` or ``(D, H, W)`` in [0, 1], the model input's size.
        png: PNG bytes of original | heatmap | overlay (three orthogonal slices for volumes).
        predicted: the most probable class.
        class_name: the class the heatmap explains.
        image: the preprocessed model input ``(C, *spatial)``.
        affine: 4x4 voxel-to-world matrix of a NIfTI input (None otherwise).
        original_shape: spatial shape of the input before resizing.
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


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def prepare_array(array: np.ndarray, config) -> np.ndarray:
    """Raw intensities ``(*spatial)`` or ``(C, *spatial)`` -> the run's model input
    ``(C, *image_size)``: channels matched, resized (MONAI ``Resize``, linear), then the run's
    preprocessing steps and normalisation, like training images.

    Raises:
        DataError: the array's dimensions do not fit the run (2D vs 3D).
    """
    from monai.transforms import Resize

    from ..data.preprocess import finish
    spatial_dims = config.model.spatial_dims
    array = np.asarray(array, dtype=np.float32)
    if spatial_dims == 2 and array.ndim == 3 and array.shape[-1] in (3, 4) and array.shape[0] not in (1, 3, 4):
        array = np.moveaxis(array[..., :3], -1, 0)  # an (H, W, RGB[A]) picture -> (C, H, W)
    if array.ndim == spatial_dims:
        array = array[None]
    if array.ndim != spatial_dims + 1:
        raise DataError(f"an array of shape {array.shape} does not fit a {spatial_dims}D model "
                        f"(expected (C, *spatial) with {spatial_dims} spatial axes)")
    channels = config.data.in_channels
    if array.shape[0] != channels:
        array = array.mean(axis=0, keepdims=True) if channels == 1 else np.repeat(array[:1], channels, axis=0)
    size = list(config.data.image_size)[-spatial_dims:]
    if list(array.shape[1:]) != size:
        array = np.asarray(Resize(size, mode="trilinear" if spatial_dims == 3 else "bilinear")(array))
    full_scale = 65535.0 if array.max() > 255 else 255.0
    return finish(array, full_scale, config)  # the run's preprocessing steps and normalisation


def load_input(path_or_array, config) -> tuple[np.ndarray, np.ndarray | None, tuple]:
    """Read an image file, a NIfTI volume or an array as the run's model input.

    Returns:
        ``(image, affine, original_shape)``: float32 ``(C, *image_size)``, the NIfTI affine
        (or None) and the spatial shape before resizing.

    Raises:
        DataError: missing or unreadable file, or dimensions that do not fit the run.
    """
    from ..data.preprocess import preprocess_file
    from ..errors import UnreadableImage
    if not isinstance(path_or_array, (str, Path)):
        array = np.asarray(path_or_array)
        shape = array.shape[-config.model.spatial_dims:]
        return prepare_array(array, config), None, tuple(shape)
    path = Path(path_or_array)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if _is_nifti(path):
        import nibabel as nib
        try:
            volume = nib.load(str(path))
            data = np.asarray(volume.dataobj, dtype=np.float32)
        except Exception as err:  # noqa: BLE001  (nibabel raises many types for bad files)
            raise DataError(f"{path}: not a readable NIfTI volume ({err})") from None
        if data.ndim == 4:  # (X, Y, Z, C) -> channels first
            data = np.moveaxis(data, -1, 0)
        try:
            return prepare_array(data, config), np.asarray(volume.affine), tuple(data.shape[-3:])
        except DataError as err:
            raise DataError(f"{path}: {err}") from None
    if config.model.spatial_dims == 3:
        raise DataError(f"{path}: this run's model takes 3D volumes (NIfTI .nii/.nii.gz), not 2D images")
    try:
        image, _ = preprocess_file(str(path), config)
    except UnreadableImage as err:
        raise DataError(f"{path}: {err}") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read file ({err.strerror or err})") from None
    return image, None, tuple(image.shape[1:])


class Explainer:
    """Explain images with one model; the model and the saliency hooks are set up once.

    Args:
        model: network ``(N, C, *spatial) -> (N, num_classes)``.
        config: the run's :class:`~medclf.config.Config` (preprocessing, spatial_dims).
        class_names: class names in output order.
        method: ``gradcam`` (default), ``gradcampp`` or ``occlusion``.
        target_layer: Grad-CAM layer name (None: the last convolutional block).
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
        from ..evaluation.predict import load_model
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

    def explain_tensor(self, image: np.ndarray, class_name: str | None = None) -> Explanation:
        """Explain one preprocessed model input ``(C, *spatial)``."""
        target = self.class_index(class_name)
        batch = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
        with torch.no_grad():
            probs = self.model(batch).float().softmax(dim=1)[0].numpy()
        predicted = int(probs.argmax())
        index = predicted if target is None else target
        heatmap = self.saliency(batch, index)[0]
        title = (f"predicted {self.class_names[predicted]} ({probs[predicted]:.2f}); "
                 f"{self.method} for {self.class_names[index]} ({probs[index]:.2f})")
        png = overlay_png(image, heatmap, title)
        return Explanation({n: float(p) for n, p in zip(self.class_names, probs)}, heatmap, png,
                           self.class_names[predicted], self.class_names[index], image)

    def explain(self, path_or_array, class_name: str | None = None) -> Explanation:
        """Explain an image file, a NIfTI volume or a raw array (see :func:`load_input`).

        Raises:
            DataError: unreadable input or unknown class name.
        """
        self.class_index(class_name)  # fail before reading anything
        image, affine, shape = load_input(path_or_array, self.config)
        result = self.explain_tensor(image, class_name)
        result.affine, result.original_shape = affine, shape
        return result


def explain_image(run, path_or_array, class_name: str | None = None, method: str = "gradcam",
                  target_layer: str | None = None) -> Explanation:
    """Probabilities, heatmap and overlay PNG of one image with a run's best checkpoint.

    Args:
        run: run directory (path) or :class:`~medclf.rundir.Run`.
        path_or_array: image file (PNG, JPEG, ...), NIfTI volume, or raw array
            ``(*spatial)`` / ``(C, *spatial)``.
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
    """Save a volume's heatmap as NIfTI, resized back to the input's shape and with its
    affine (identity when the input had none), so it overlays the input in any viewer."""
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


def explain_files(run_dir, paths: list, out: str | Path | None = None, class_name: str | None = None,
                  method: str = "gradcam", target_layer: str | None = None) -> tuple[Path, pd.DataFrame]:
    """Write ``<name>_<method>.png`` (and ``<name>_<method>_heatmap.nii.gz`` for volumes) per
    file to ``out`` (default ``run_dir/explanations``).

    Every file is read first; unreadable files are all listed in one error before any output.

    Returns:
        ``(out, frame)`` with one row per file: ``path``, ``predicted``, ``probability``,
        ``class_name`` (explained), ``png``, ``nifti``.

    Raises:
        RunDirError: not a run directory.
        DataError: no files, or an unknown class.
        BadFilesError: unreadable files.
    """
    if not paths:
        raise DataError("no image files given to explain")
    explainer = Explainer.from_run(run_dir, method, target_layer)
    explainer.class_index(class_name)
    inputs, bad = [], []
    for p in paths:
        try:
            inputs.append((p, load_input(p, explainer.config)))
        except DataError as err:
            bad.append((str(p), str(err).removeprefix(f"{p}: ")))
    if bad:
        raise BadFilesError(bad)
    out = Path(out) if out else Path(run_dir) / "explanations"
    rows, used = [], set()
    for p, (image, affine, shape) in inputs:
        result = explainer.explain_tensor(image, class_name)
        result.affine, result.original_shape = affine, shape
        stem = rundir.slug(Path(p).name.removesuffix(".gz").rsplit(".", 1)[0])
        while stem in used:
            stem += "_"
        used.add(stem)
        png = atomic_write(out / f"{stem}_{method}.png", lambda tmp: Path(tmp).write_bytes(result.png))
        nifti = ""
        if result.heatmap.ndim == 3:
            nifti = str(write_heatmap_nifti(result, out / f"{stem}_{method}_heatmap.nii.gz"))
        rows.append({"path": str(p), "predicted": result.predicted,
                     "probability": result.probabilities[result.predicted],
                     "class_name": result.class_name, "png": str(png), "nifti": nifti})
    frame = pd.DataFrame(rows)
    write_csv(out / "explanations.csv", frame)
    return out, frame
