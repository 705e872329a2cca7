"""``medclf explain``: saliency heatmaps (Grad-CAM, Grad-CAM++, occlusion) of a run's model, per image."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .. import rundir
from ..errors import BadFilesError, DataError
from ..explain.explain import Explainer, read_input, write_heatmap_nifti
from ..io import atomic_write, write_csv


def output_stem(path: str) -> str:
    """File-name stem of an input: ``scan.nii.gz`` -> ``scan``, ``x.npz#test/3`` -> ``x_test_3``,
    a DICOM series folder -> its name."""
    from ..data.formats import source_format
    from ..data.formats.npz import parse_item
    fmt = source_format(path)
    if fmt == "npz":
        file, split, index = parse_item(path)
        return rundir.slug(f"{Path(file).stem}_{split}_{index}")
    if fmt == "dicom-series":
        return rundir.slug(Path(path).name)
    return rundir.slug(Path(path).name.removesuffix(".gz").rsplit(".", 1)[0])


def explain_files(run_dir, paths: list, out: str | Path | None = None, class_name: str | None = None,
                  method: str = "gradcam", target_layer: str | None = None) -> tuple[Path, pd.DataFrame]:
    """Write ``<name>_<method>.png`` (and ``<name>_<method>_heatmap.nii.gz`` for volumes) per
    input to ``out`` (default ``run_dir/explanations``).

    Inputs are whatever ``medclf predict`` takes (2D images, DICOM files and series folders,
    NIfTI volumes, ``file.npz#split/index`` items), read with the run's preprocessing
    (:func:`medclf.explain.explain.read_input`). Every input is read first; unreadable ones
    are all listed in one error before any output. The NIfTI heatmap of a NIfTI input has
    its RAS+ shape and affine (see :func:`~medclf.explain.explain.write_heatmap_nifti`).

    Returns:
        ``(out, frame)`` with one row per input: ``path``, ``predicted``, ``probability``,
        ``class_name`` (explained), ``png``, ``nifti`` (empty for 2D).

    Raises:
        RunDirError: not a run directory.
        DataError: no inputs, or an unknown class.
        BadFilesError: unreadable inputs.
        ConfigError: unknown method or layer.
    """
    if not paths:
        raise DataError("no image files given to explain")
    explainer = Explainer.from_run(run_dir, method, target_layer)
    explainer.class_index(class_name)
    inputs, bad = [], []
    for p in map(str, paths):
        try:
            inputs.append((p, read_input(p, explainer.config)))
        except DataError as err:
            bad.append((p, str(err).removeprefix(f"{p}: ")))
    if bad:
        raise BadFilesError(bad)
    out = Path(out) if out else Path(run_dir) / rundir.EXPLANATIONS_DIR
    rows, used = [], set()
    for p, item in inputs:
        result = explainer.explain_input(item, class_name)
        stem = output_stem(p)
        while stem in used:
            stem += "_"
        used.add(stem)
        png = atomic_write(out / f"{stem}_{method}.png", lambda tmp: Path(tmp).write_bytes(result.png))
        nifti = ""
        if result.heatmap.ndim == 3:
            nifti = str(write_heatmap_nifti(result, out / f"{stem}_{method}_heatmap.nii.gz"))
        rows.append({"path": p, "predicted": result.predicted,
                     "probability": result.probabilities[result.predicted],
                     "class_name": result.class_name, "png": str(png), "nifti": nifti})
    frame = pd.DataFrame(rows)
    write_csv(out / "explanations.csv", frame)
    return out, frame


def main(args) -> int:
    """Write one figure per image (and a NIfTI heatmap per volume); print where they are."""
    run = rundir.load_run(args.run)
    method = args.method or run.config.explain.method
    out, frame = explain_files(run.path, args.images, args.out, args.class_name, method,
                               args.layer or run.config.explain.target_layer)
    for _, row in frame.iterrows():
        extra = f"  {row.nifti}" if row.nifti else ""
        print(f"{row.path}: {row.predicted} ({row.probability:.3f}); {method} for {row.class_name}: "
              f"{row.png}{extra}")
    print(out)
    return 0
