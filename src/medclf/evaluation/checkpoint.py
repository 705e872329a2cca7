"""Evaluate a trained network on a run's test (or other) images: the one sequence that
``medclf train`` and ``medclf evaluate`` share."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import log_loss

from .. import rundir
from ..io import write_json
from ..training.safety import advise_on_out_of_memory
from .metrics import classification_metrics
from .predict import predict_probabilities, predict_tta
from .write import write_evaluation


@dataclass
class EvaluationSplit:
    """Preprocessed images of one split with their labels and manifest rows.

    Attributes:
        images: float32 ``(N, C, H, W)`` or ``(N, C, D, H, W)``.
        labels: int ``(N,)`` class indices (tensor or array).
        frame: the ``N`` manifest rows (``path``, ``label``), in the same order.
    """

    images: torch.Tensor
    labels: torch.Tensor | np.ndarray
    frame: pd.DataFrame


def evaluate_model(model: torch.nn.Module, out: str | Path, class_names: list[str], test: EvaluationSplit,
                   val: EvaluationSplit | None, config, checkpoint: str, extra: dict,
                   leaked: dict[str, set[str]], device: torch.device,
                   out_of_fold: np.ndarray | None = None) -> dict:
    """Predict the test and validation images and write the evaluation into ``out``.

    The validation probabilities choose the operating threshold and the temperature; with
    ``eval.tta`` both splits are also predicted under test-time augmentation, and the averaged
    probabilities are the predictions. Validation images in ``leaked["val"]`` are left out
    of those choices when ``eval.drop_duplicates`` is set; test images in ``leaked["test"]``
    are reported apart (or dropped), see :func:`~medclf.evaluation.write.write_evaluation`.

    Args:
        model: the network, its output prior already applied, in eval mode.
        out: folder receiving ``predictions.csv``, ``test_metrics.json`` and ``plots/``.
        val: the validation split, or None (no threshold or temperature from validation).
        config: the run's configuration (``eval``, ``seed``, augmentation flips for TTA).
        checkpoint: the checkpoint's path relative to the run, recorded in the metrics.
        extra: more keys for ``test_metrics.json``.
        leaked: ``{"val": paths, "test": paths}`` of images duplicating training images.
        out_of_fold: probabilities ``(N_val, num_classes)`` of a k-fold ensemble run's
            out-of-fold predictions of ``val`` (each image predicted by the fold model that
            did not train on it, test-time augmented when ``eval.tta`` is on): they replace the
            ensemble's own predictions of ``val``, which would have seen those images.

    Besides, ``validation_metrics.json`` receives the accuracy, balanced accuracy and macro
    ROC AUC on the validation (or out-of-fold) predictions: the figures to decide on.

    Returns:
        the metrics dict written to ``test_metrics.json``.

    Raises:
        OutOfMemory: prediction ran out of memory (with advice to lower ``eval.batch_size``).
    """
    batch_size = config.eval.batch_size
    val_labels = val_probabilities = val_tta = None
    tta, views = None, 0
    with advise_on_out_of_memory(config, "evaluation (lower eval.batch_size)"):
        probabilities = predict_probabilities(model, test.images, batch_size, device)
        if val is not None:
            val_labels = np.asarray(val.labels)
            val_probabilities = out_of_fold if out_of_fold is not None \
                else predict_probabilities(model, val.images, batch_size, device)
        if config.eval.tta:
            tta, views = predict_tta(model, test.images, config, device, probabilities)
            if val is not None:
                val_tta = out_of_fold if out_of_fold is not None \
                    else predict_tta(model, val.images, config, device, val_probabilities)[0]
    if val is not None and config.eval.drop_duplicates:  # as the test split: copies of training images out
        keep = ~val.frame.path.isin(leaked.get("val", set())).to_numpy()
        val_labels, val_probabilities = val_labels[keep], val_probabilities[keep]
        val_tta = val_tta[keep] if val_tta is not None else None
    if val is not None:
        write_validation_metrics(Path(out), val_labels, val_tta if val_tta is not None else val_probabilities,
                                 class_names, "out_of_fold" if out_of_fold is not None else "validation")
    return write_evaluation(Path(out), test.frame, probabilities, np.asarray(test.labels), class_names,
                            checkpoint, extra, config=config, val_labels=val_labels,
                            val_probabilities=val_probabilities, tta_probabilities=tta, tta_views_count=views,
                            val_tta_probabilities=val_tta,
                            drop=test.frame.path.isin(leaked.get("test", set())).to_numpy())


def write_validation_metrics(out: Path, labels: np.ndarray, probabilities: np.ndarray, class_names: list[str],
                             kind: str) -> dict:
    """Write ``validation_metrics.json``: ``kind`` ('validation' or 'out_of_fold'), ``n``,
    ``accuracy``, ``balanced_accuracy``, macro ``roc_auc`` and ``loss`` (cross-entropy,
    scikit-learn ``log_loss``) of the predictions the run's choices (checkpoint,
    threshold, temperature) were made on.

    Args:
        labels: int ``(N,)`` class indices; probabilities: float ``(N, num_classes)``.
    """
    found = classification_metrics(np.asarray(labels), probabilities, class_names)
    # float64 rows that sum to 1 (float32 ensemble or TTA means drift from 1 by rounding)
    clipped = np.clip(np.asarray(probabilities, dtype=np.float64), 1e-7, 1)
    clipped /= clipped.sum(axis=1, keepdims=True)
    record = {"kind": kind, "n": int(len(labels)),
              **{key: found[key] for key in ("accuracy", "balanced_accuracy", "roc_auc")},
              "loss": float(log_loss(labels, clipped, labels=range(len(class_names))))}
    write_json(out / rundir.VALIDATION_METRICS, record)
    return record
