"""Classification metrics a clinician expects, computed with scikit-learn.

:func:`roc_auc` (defined with the per-epoch training metrics in
:mod:`medclf.training.module`, the lowest layer that needs it, and re-exported here) is the
one ROC AUC of the project, with one rule for a split that lacks a class.
"""
from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    classification_report,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
)

from ..training.metrics import roc_auc

__all__ = ["classification_metrics", "roc_auc", "summary_lines"]


def classification_metrics(y_true, probabilities, class_names: list[str], y_pred=None) -> dict:
    """Accuracy, balanced accuracy, ROC AUC and per-class metrics.

    Args:
        y_true: int array ``(N,)`` of class indices.
        probabilities: float array ``(N, num_classes)``, rows summing to 1.
        class_names: names in class-index order.
        y_pred: predicted class indices ``(N,)`` (default: the most probable class, which for
            two classes is the threshold 0.5).

    Returns:
        dict with ``accuracy``, ``balanced_accuracy``, ``roc_auc`` (:func:`roc_auc`: binary:
        AUC of the second class; several classes: one-vs-rest macro average; NaN when a class
        is absent), ``roc_auc_per_class`` (one-vs-rest, NaN for a class with no sample or no
        other class), ``per_class`` (``precision``, ``sensitivity``
        (= recall), ``specificity``, ``ppv`` (= precision), ``npv``, ``f1``, ``support`` per class name),
        ``confusion_matrix`` (rows: true class, columns: predicted class),
        ``classification_report`` (scikit-learn's text) and ``n``.
    """
    y_true = np.asarray(y_true, dtype=int)
    probabilities = np.asarray(probabilities, dtype=float)
    num_classes = len(class_names)
    labels = list(range(num_classes))
    y_pred = probabilities.argmax(axis=1) if y_pred is None else np.asarray(y_pred, dtype=int)
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
                           "ppv": float(tp / (tp + fp)) if tp + fp else math.nan,
                           "npv": float(tn / (tn + fn)) if tn + fn else math.nan,
                           "f1": float(f1[c]), "support": int(matrix[c, :].sum())}
        # one-vs-rest: class c against the rest, as a two-class problem with the same rule
        score = probabilities[:, c]
        auc_per_class[name] = roc_auc((y_true == c).astype(int), np.stack([1.0 - score, score], axis=1))
    return {
        "n": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
        "roc_auc": roc_auc(y_true, probabilities),
        "roc_auc_per_class": auc_per_class,
        "per_class": per_class,
        "confusion_matrix": matrix.tolist(),
        "classification_report": classification_report(
            y_true, y_pred, labels=labels, target_names=class_names, zero_division=0, digits=3),
    }


def summary_lines(metrics: dict, class_names: list[str]) -> list[str]:
    """A short human-readable summary of :func:`classification_metrics` output (any task:
    :func:`medclf.evaluation.outputs.summary_lines`)."""
    def ci(key):
        low_high = metrics.get(f"{key}_ci")
        return f" [{low_high[0]:.3f}, {low_high[1]:.3f}]" if low_high else ""

    lines = [f"test images: {metrics['n']}   accuracy: {metrics['accuracy']:.3f}   "
             f"balanced accuracy: {metrics['balanced_accuracy']:.3f}{ci('balanced_accuracy')}   "
             f"ROC AUC: {metrics['roc_auc']:.3f}{ci('roc_auc')}"
             + ("   (95 % bootstrap CI)" if metrics.get("roc_auc_ci") else "")]
    lines += _class_table(metrics, class_names)
    op = metrics.get("operating_point")
    if op:
        lines.append(f"operating threshold {op['threshold']:.3f} for {op['positive_class']} ({op['method']}, "
                     f"chosen on validation): balanced accuracy {op['balanced_accuracy']:.3f}{_ci(op)}"
                     f" (at 0.5: {metrics['balanced_accuracy']:.3f})")
        lines += _class_table(op, class_names)
    cal = metrics.get("calibration")
    if cal:
        line = f"calibration ({cal['method']}, {cal['bins']} bins): ECE {cal['ece']:.3f}  MCE {cal['mce']:.3f}"
        if cal.get("temperature") is not None:
            line += (f"; temperature {cal['temperature']:.3f} (fitted on validation): "
                     f"ECE {cal['ece_after']:.3f}  MCE {cal['mce_after']:.3f}")
        lines.append(line)
    tta = metrics.get("tta")
    if tta:
        one = tta["without_tta"]
        lines.append(f"test-time augmentation: the metrics above average {tta['views']} views; one pass: "
                     f"accuracy {one['accuracy']:.3f}  balanced accuracy {one['balanced_accuracy']:.3f}  "
                     f"ROC AUC {one['roc_auc']:.3f}  ECE {one['ece']:.3f}")
    dup = metrics.get("duplicates")
    if dup and dup.get("n_test_duplicating_train"):
        w = dup.get("metrics_without") or {}
        lines.append(f"WARNING: {dup['n_test_duplicating_train']} test image(s) duplicate training images"
                     + (f"; without them: n={w['n']} balanced accuracy {w['balanced_accuracy']:.3f} "
                        f"ROC AUC {w['roc_auc']:.3f}" if w else "")
                     + (" (dropped from the metrics above)" if dup.get("dropped") else ""))
    return lines


def _ci(block: dict) -> str:
    low_high = block.get("balanced_accuracy_ci")
    return f" [{low_high[0]:.3f}, {low_high[1]:.3f}]" if low_high else ""


def _class_table(metrics: dict, class_names: list[str]) -> list[str]:
    lines = [f"{'class':<24}{'sensitivity':>12}{'specificity':>12}{'PPV':>7}{'NPV':>7}{'F1':>7}{'n':>6}"]
    for name in class_names:
        m = metrics["per_class"][name]
        lines.append(f"{name[:23]:<24}{m['sensitivity']:>12.3f}{m['specificity']:>12.3f}"
                     f"{m.get('ppv', m['precision']):>7.3f}{m.get('npv', math.nan):>7.3f}"
                     f"{m['f1']:>7.3f}{m['support']:>6d}")
    return lines
