"""Classification metrics a clinician expects, computed with scikit-learn."""
from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import (accuracy_score, balanced_accuracy_score, classification_report,
                             confusion_matrix, f1_score, precision_score, recall_score,
                             roc_auc_score)


def classification_metrics(y_true, probabilities, class_names: list[str]) -> dict:
    """Accuracy, balanced accuracy, ROC AUC and per-class metrics.

    Args:
        y_true: int array ``(N,)`` of class indices.
        probabilities: float array ``(N, num_classes)``, rows summing to 1.
        class_names: names in class-index order.

    Returns:
        dict with ``accuracy``, ``balanced_accuracy``, ``roc_auc`` (binary: AUC of the second
        class; several classes: one-vs-rest macro average; NaN when a class is absent),
        ``roc_auc_per_class`` (one-vs-rest), ``per_class`` (``precision``, ``sensitivity``
        (= recall), ``specificity``, ``f1``, ``support`` per class name),
        ``confusion_matrix`` (rows: true class, columns: predicted class),
        ``classification_report`` (scikit-learn's text) and ``n``.
    """
    y_true = np.asarray(y_true, dtype=int)
    probabilities = np.asarray(probabilities, dtype=float)
    num_classes = len(class_names)
    labels = list(range(num_classes))
    y_pred = probabilities.argmax(axis=1)
    matrix = confusion_matrix(y_true, y_pred, labels=labels)
    precision = precision_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    recall = recall_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    f1 = f1_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    total = matrix.sum()
    per_class = {}
    auc_per_class = {}
    for c, name in enumerate(class_names):
        tp = matrix[c, c]
        fp = matrix[:, c].sum() - tp
        fn = matrix[c, :].sum() - tp
        tn = total - tp - fp - fn
        per_class[name] = {"precision": float(precision[c]), "sensitivity": float(recall[c]),
                           "specificity": float(tn / (tn + fp)) if tn + fp else math.nan,
                           "f1": float(f1[c]), "support": int(matrix[c, :].sum())}
        positives = y_true == c
        auc_per_class[name] = (float(roc_auc_score(positives, probabilities[:, c]))
                               if 0 < positives.sum() < len(y_true) else math.nan)
    present = set(np.unique(y_true))
    if len(present) < num_classes or len(present) < 2:
        roc_auc = math.nan
    elif num_classes == 2:
        roc_auc = float(roc_auc_score(y_true, probabilities[:, 1]))
    else:
        roc_auc = float(roc_auc_score(y_true, probabilities, multi_class="ovr", average="macro",
                                      labels=labels))
    return {
        "n": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
        "roc_auc": roc_auc,
        "roc_auc_per_class": auc_per_class,
        "per_class": per_class,
        "confusion_matrix": matrix.tolist(),
        "classification_report": classification_report(
            y_true, y_pred, labels=labels, target_names=class_names, zero_division=0, digits=3),
    }


def summary_lines(metrics: dict, class_names: list[str]) -> list[str]:
    """A short human-readable summary of :func:`classification_metrics` output."""
    lines = [f"test images: {metrics['n']}   accuracy: {metrics['accuracy']:.3f}   "
             f"balanced accuracy: {metrics['balanced_accuracy']:.3f}   ROC AUC: {metrics['roc_auc']:.3f}",
             f"{'class':<24}{'sensitivity':>12}{'specificity':>12}{'precision':>11}{'F1':>7}{'n':>6}"]
    for name in class_names:
        m = metrics["per_class"][name]
        lines.append(f"{name[:23]:<24}{m['sensitivity']:>12.3f}{m['specificity']:>12.3f}"
                     f"{m['precision']:>11.3f}{m['f1']:>7.3f}{m['support']:>6d}")
    return lines
