"""Write a run's evaluation: predictions.csv, test_metrics.json and the confusion-matrix, ROC
and reliability plots."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .. import rundir
from ..io import write_csv, write_json
from . import plots
from .clinical import calibration_error, clinical_metrics
from .metrics import classification_metrics


def write_evaluation(run_path: Path, frame: pd.DataFrame, probabilities: np.ndarray,
                     labels: np.ndarray, class_names: list[str], checkpoint: str,
                     extra: dict | None = None, *, config, val_labels=None, val_probabilities=None,
                     tta_probabilities=None, tta_views_count: int = 0, drop: np.ndarray | None = None,
                     val_tta_probabilities=None) -> dict:
    """Write predictions.csv, test_metrics.json, confusion-matrix, ROC and reliability plots.

    Args:
        frame: manifest rows of the evaluated images (``path``, ``label``).
        probabilities: float ``(N, num_classes)``.
        labels: int ``(N,)`` true class indices.
        config: the run's :class:`~medclf.config.Config` (``eval`` settings and ``seed``).
        val_labels: int ``(M,)`` labels of the validation split.
        val_probabilities: float ``(M, num_classes)`` validation probabilities of the same
            checkpoint (operating threshold, temperature scaling).
        tta_probabilities: ``(N, num_classes)`` test-time-augmented probabilities, or None.
            When given, they are the predictions (as in ``medclf predict``): the metrics,
            ``predicted`` and the plots come from them, and the one-pass metrics are
            reported under ``tta.without_tta``.
        val_tta_probabilities: ``(M, num_classes)`` test-time-augmented validation
            probabilities (the operating threshold and temperature then come from them).
        drop: bool ``(N,)``: test images duplicating training images. Metrics without them
            are always added; with ``eval.drop_duplicates`` they become the main metrics.

    Returns:
        the metrics dict (also in test_metrics.json).
    """
    n = len(labels)
    drop = np.zeros(n, dtype=bool) if drop is None else np.asarray(drop, dtype=bool)
    keep = ~drop if (config.eval.drop_duplicates and drop.any()) else np.ones(n, dtype=bool)

    plain_probabilities = probabilities
    if tta_probabilities is not None:  # the predictions a user gets are the averaged ones
        probabilities = tta_probabilities
        if val_tta_probabilities is not None:
            val_probabilities = val_tta_probabilities

    def evaluate(mask):
        return clinical_metrics(labels[mask], probabilities[mask], class_names, config.eval, config.seed,
                                val_labels, val_probabilities, bootstrap_method=config.eval.bootstrap_method)

    metrics = evaluate(keep)
    if tta_probabilities is not None:
        plain = classification_metrics(labels[keep], plain_probabilities[keep], class_names)
        metrics["tta"] = {"views": tta_views_count, "without_tta": {
            "accuracy": plain["accuracy"], "balanced_accuracy": plain["balanced_accuracy"],
            "roc_auc": plain["roc_auc"], "per_class": plain["per_class"],
            "ece": calibration_error(labels[keep], plain_probabilities[keep], config.eval.calibration_bins)["ece"]}}
    if drop.any():
        other = evaluate(~drop) if not config.eval.drop_duplicates else evaluate(np.ones(n, dtype=bool))
        summary = {k: other[k] for k in ("n", "accuracy", "balanced_accuracy", "roc_auc", "roc_auc_ci",
                                          "balanced_accuracy_ci")}
        metrics["duplicates"] = {
            "n_test_duplicating_train": int(drop.sum()), "dropped": bool(config.eval.drop_duplicates),
            "paths": [str(p) for p in frame.path.to_numpy()[drop]],
            ("metrics_with" if config.eval.drop_duplicates else "metrics_without"): summary}
    else:
        metrics["duplicates"] = {"n_test_duplicating_train": 0, "dropped": False}
    metrics = {"checkpoint": checkpoint, "class_names": class_names, **metrics, **(extra or {})}
    predictions = pd.DataFrame({"path": frame.path.to_numpy(), "label": frame.label.to_numpy(),
                                "predicted": [class_names[i] for i in probabilities.argmax(axis=1)]})
    for c, name in enumerate(class_names):
        predictions[f"prob_{name}"] = plain_probabilities[:, c]
    op = metrics.get("operating_point")
    if op:
        pos = class_names.index(op["positive_class"])
        predictions["predicted_at_threshold"] = [
            class_names[pos] if p >= op["threshold"] else class_names[1 - pos] for p in probabilities[:, pos]]
    if tta_probabilities is not None:
        for c, name in enumerate(class_names):
            predictions[f"tta_prob_{name}"] = tta_probabilities[:, c]
    predictions["duplicates_train"] = drop
    write_csv(run_path / rundir.PREDICTIONS, predictions)
    write_json(run_path / rundir.TEST_METRICS, metrics)
    plots.confusion_matrix_plot(metrics["confusion_matrix"], class_names, run_path / rundir.CONFUSION_MATRIX_PLOT)
    plots.roc_curves(labels[keep], probabilities[keep], class_names, run_path / rundir.ROC_PLOT)
    plots.reliability_diagram(metrics["calibration"], run_path / rundir.RELIABILITY_PLOT)
    if (run_path / rundir.METRICS).exists():
        plots.learning_curves(run_path / rundir.METRICS, run_path / rundir.LEARNING_CURVES_PLOT)
    return metrics
