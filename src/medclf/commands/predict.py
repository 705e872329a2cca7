"""``medclf predict``: class and per-class probabilities for image files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import rundir
from ..data.preprocess import preprocess_all
from ..errors import DataError
from ..evaluation.outputs import task_prediction_table
from ..evaluation.predict import load_model, pick_device, predict_probabilities, predict_tta
from ..io import write_csv
from ..training.tasks import task_of


def predict_files(run_dir: str | Path, paths: list[str | Path], tta: bool | None = None) -> pd.DataFrame:
    """Predict image files with a run's best checkpoint and exactly its preprocessing.

    Args:
        run_dir: a run directory written by ``medclf train``.
        paths: image files (or ``file.npz#split/index`` references).
        tta: test-time augmentation: also average the softmax probabilities over the
            flipped and shifted copies of :func:`~medclf.evaluation.predict.predict_tta` (the
            same views as ``eval.tta`` in train/evaluate). None: the run's ``eval.tta``.

    Returns:
        DataFrame with one row per path: ``path``, ``predicted`` (class name),
        ``probability`` (of the predicted class), ``prob_<class>`` for every class (plain,
        one forward pass), ``tta_views`` (number of views averaged; 0 when TTA is off) and
        ``error`` (empty, or why the file could not be read; its other cells are empty).
        With TTA, ``tta_prob_<class>`` columns hold the averaged probabilities beside the
        plain ones, and ``predicted``/``probability`` come from them.

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
    tta = run.config.eval.tta if tta is None else bool(tta)
    if task_of(run.config) != "classification":  # a probability per finding, or a number with an interval
        return task_prediction_table(run, paths, arrays, errors, tta)
    probabilities = np.full((len(paths), len(run.class_names)), np.nan)
    tta_probabilities = probabilities.copy() if tta else None
    views = 0
    if good:
        model = load_model(run)
        device = pick_device(run.config.trainer.accelerator)
        images = torch.from_numpy(np.stack([arrays[i] for i in good]))
        probabilities[good] = predict_probabilities(model, images, run.config.eval.batch_size, device)
        if tta:
            tta_probabilities[good], views = predict_tta(model, images, run.config, device, probabilities[good])
    shown = tta_probabilities if tta else probabilities
    frame = pd.DataFrame({"path": paths})
    best = np.nan_to_num(shown, nan=-1).argmax(axis=1)
    frame["predicted"] = [run.class_names[b] if p not in errors else "" for b, p in zip(best, paths)]
    frame["probability"] = [shown[i, b] for i, b in enumerate(best)]
    for c, name in enumerate(run.class_names):
        frame[f"prob_{name}"] = probabilities[:, c]
    if tta:
        for c, name in enumerate(run.class_names):
            frame[f"tta_prob_{name}"] = tta_probabilities[:, c]
    frame["tta_views"] = views
    frame["error"] = [errors.get(p, "") for p in paths]
    return frame


def main(args) -> int:
    """``medclf predict RUN IMAGE...``: one line per image; exit 1 when any file failed."""
    frame = predict_files(args.run, args.images, tta=args.tta)
    if "probability" not in frame:  # multilabel (a probability per finding) or regression
        return _print_task(frame, args)
    tta = "tta_prob_" if frame.tta_views.max() > 0 else ""
    prob_cols = [c for c in frame.columns if c.startswith(tta + "prob_")]
    for _, row in frame.iterrows():
        if row.error:
            print(f"{row.path}: error: {row.error}")
            continue
        probs = "  ".join(f"{c[len(tta) + 5:]}={row[c]:.3f}" for c in prob_cols)
        note = f"  (test-time augmentation, {row.tta_views} views)" if tta else ""
        print(f"{row.path}: {row.predicted} ({row.probability:.3f})  {probs}{note}")
    if args.csv:
        write_csv(args.csv, frame)
        print(Path(args.csv))
    return 1 if (frame.error != "").any() else 0


def _print_task(frame: pd.DataFrame, args) -> int:
    """Print a multilabel (a probability per finding) or regression (a number with an
    interval) prediction table; exit 1 when any file failed."""
    for _, row in frame.iterrows():
        if row.error:
            print(f"{row.path}: error: {row.error}")
        elif "interval_low" in frame:
            interval = f"  (90% interval {row.interval_low:.4g} to {row.interval_high:.4g})" \
                if np.isfinite(row.interval_low) else ""
            print(f"{row.path}: {row.predicted:.4g}{interval}  TTA sd {row.tta_sd:.3g}")
        else:
            probs = "  ".join(f"{c[5:]}={row[c]:.3f}" for c in frame.columns if c.startswith("prob_"))
            print(f"{row.path}: {row.predicted}  {probs}")
    if args.csv:
        write_csv(args.csv, frame)
        print(Path(args.csv))
    return 1 if (frame.error != "").any() else 0
