"""``medclf predict``: class and per-class probabilities for image files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import rundir
from .data.preprocess import preprocess_all
from .errors import DataError
from .evaluation.run import load_model, pick_device, predict_probabilities


def predict_files(run_dir: str | Path, paths: list[str | Path]) -> pd.DataFrame:
    """Predict image files with a run's best checkpoint and exactly its preprocessing.

    Returns:
        DataFrame with one row per path: ``path``, ``predicted`` (class name),
        ``probability`` (of the predicted class), ``prob_<class>`` for every class, and
        ``error`` (empty, or why the file could not be read; its other cells are empty).

    Raises:
        RunDirError: ``run_dir`` is not a run directory.
        DataError: no paths given.
    """
    if not paths:
        raise DataError("no image files given to predict")
    run = rundir.load_run(run_dir)
    paths = [str(p) for p in paths]
    arrays, _, bad = preprocess_all(paths, run.config)
    errors = dict(bad)
    good = [i for i, a in enumerate(arrays) if a is not None]
    probabilities = np.full((len(paths), len(run.class_names)), np.nan)
    if good:
        model = load_model(run)
        images = torch.from_numpy(np.stack([arrays[i] for i in good]))
        probabilities[good] = predict_probabilities(model, images, run.config.eval.batch_size,
                                                    pick_device(run.config.trainer.accelerator))
    frame = pd.DataFrame({"path": paths})
    best = np.nan_to_num(probabilities, nan=-1).argmax(axis=1)
    frame["predicted"] = [run.class_names[b] if p not in errors else "" for b, p in zip(best, paths)]
    frame["probability"] = [probabilities[i, b] for i, b in enumerate(best)]
    for c, name in enumerate(run.class_names):
        frame[f"prob_{name}"] = probabilities[:, c]
    frame["error"] = [errors.get(p, "") for p in paths]
    return frame
