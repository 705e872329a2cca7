"""Multi-label evaluation: per-finding ROC AUC, average precision, sensitivity and
specificity at a threshold chosen on validation, calibration; macro and micro ROC AUC and
mean average precision (mAP) with bootstrap confidence intervals; the training-prevalence
baseline; per-finding ROC and precision-recall curves.

Metrics are scikit-learn's (``roc_auc_score``, ``average_precision_score``); intervals are
:func:`medclf.evaluation.clinical.bootstrap_ci` (scipy's bootstrap, rows resampled with all
their findings); thresholds are :func:`medclf.evaluation.clinical.choose_threshold` per
finding (``eval.threshold``, Youden's J by default).
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve  # noqa: E402

from .. import rundir  # noqa: E402
from ..io import write_csv, write_json  # noqa: E402
from .clinical import bootstrap_ci, calibration_error, choose_threshold  # noqa: E402
from .plots import _save  # noqa: E402

PR_PLOT = "plots/pr_curves.png"


def _usable(labels: np.ndarray) -> list[int]:
    """Findings (columns of ``(N, K)`` 0/1 labels) that have positives and negatives."""
    return [k for k in range(labels.shape[1]) if 0 < labels[:, k].sum() < len(labels)]


def macro_roc_auc(labels, probabilities) -> float:
    """Mean ROC AUC over the findings with both classes present; NaN when none has."""
    usable = _usable(labels)
    return float(np.mean([roc_auc_score(labels[:, k], probabilities[:, k]) for k in usable])) if usable else math.nan


def micro_roc_auc(labels, probabilities) -> float:
    """ROC AUC of all (image, finding) pairs pooled; NaN without positives or negatives."""
    flat = labels.ravel()
    return float(roc_auc_score(flat, probabilities.ravel())) if 0 < flat.sum() < len(flat) else math.nan


def mean_average_precision(labels, probabilities) -> float:
    """Macro average precision (mAP) over the findings with both classes present; NaN when none has."""
    usable = _usable(labels)
    return float(np.mean([average_precision_score(labels[:, k], probabilities[:, k]) for k in usable])) \
        if usable else math.nan


def micro_average_precision(labels, probabilities) -> float:
    """Average precision of all (image, finding) pairs pooled."""
    flat = labels.ravel()
    return float(average_precision_score(flat, probabilities.ravel())) if flat.sum() > 0 else math.nan


def per_label_thresholds(val_labels, val_probabilities, method="youden", target_sensitivity: float = 0.9) -> list[float]:
    """One threshold per finding chosen on validation ``(M, K)`` labels/probabilities
    (:func:`~medclf.evaluation.clinical.choose_threshold`); 0.5 for a finding whose
    validation split lacks positives or negatives."""
    return [choose_threshold(val_labels[:, k], val_probabilities[:, k], method, target_sensitivity)
            if 0 < val_labels[:, k].sum() < len(val_labels) else 0.5 for k in range(val_labels.shape[1])]


def multilabel_metrics(labels, probabilities, class_names: list[str], eval_cfg, seed: int = 0,
                       val_labels=None, val_probabilities=None, train_prevalence=None) -> dict:
    """Metrics of ``(N, K)`` 0/1 labels and sigmoid probabilities.

    Args:
        labels: int/float ``(N, K)`` 0/1 test labels, one column per finding.
        probabilities: float ``(N, K)`` per-finding probabilities.
        class_names: the ``K`` finding names.
        eval_cfg: the ``eval`` config section (bootstrap, threshold, calibration bins).
        val_labels: ``(M, K)`` validation labels choosing the per-finding thresholds (0.5
            without them).
        val_probabilities: ``(M, K)`` validation probabilities, with ``val_labels``.
        train_prevalence: ``(K,)`` training positive fraction per finding: the baseline
            that predicts it for every image (its AP is the test prevalence, its AUC 0.5).

    Returns:
        dict with ``task``, ``n``, ``macro_roc_auc``, ``micro_roc_auc``, ``map``,
        ``micro_average_precision`` (each with a ``_ci``), ``per_label`` (name ->
        ``roc_auc``, ``average_precision``, ``prevalence``, ``threshold``,
        ``sensitivity``, ``specificity``, ``ece``), ``baseline`` and ``thresholds``.
    """
    labels = np.asarray(labels).astype(int)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if val_labels is not None and val_probabilities is not None:
        thresholds = per_label_thresholds(np.asarray(val_labels).astype(int), np.asarray(val_probabilities),
                                          eval_cfg.threshold, eval_cfg.target_sensitivity)
        source = f"validation ({eval_cfg.threshold})"
    else:
        thresholds, source = [0.5] * len(class_names), "fixed 0.5 (no validation split)"
    per_label = {}
    for k, name in enumerate(class_names):
        y, p = labels[:, k], probabilities[:, k]
        predicted = p >= thresholds[k]
        positives, negatives = y.sum(), (1 - y).sum()
        both = 0 < positives < len(y)
        per_label[name] = {
            "n_positive": int(positives), "prevalence": float(y.mean()),
            "roc_auc": float(roc_auc_score(y, p)) if both else math.nan,
            "average_precision": float(average_precision_score(y, p)) if positives else math.nan,
            "threshold": float(thresholds[k]),
            "sensitivity": float((predicted & (y == 1)).sum() / positives) if positives else math.nan,
            "specificity": float((~predicted & (y == 0)).sum() / negatives) if negatives else math.nan,
            "ece": calibration_error(y, np.stack([1 - p, p], axis=1), eval_cfg.calibration_bins)["ece"],
        }
    ci = dict(resamples=eval_cfg.bootstrap, seed=seed, method=eval_cfg.bootstrap_method)
    result = {"task": "multilabel", "n": int(len(labels)), "class_names": class_names,
              "macro_roc_auc": macro_roc_auc(labels, probabilities),
              "macro_roc_auc_ci": bootstrap_ci(labels, probabilities, macro_roc_auc, **ci),
              "micro_roc_auc": micro_roc_auc(labels, probabilities),
              "micro_roc_auc_ci": bootstrap_ci(labels, probabilities, micro_roc_auc, **ci),
              "map": mean_average_precision(labels, probabilities),
              "map_ci": bootstrap_ci(labels, probabilities, mean_average_precision, **ci),
              "micro_average_precision": micro_average_precision(labels, probabilities),
              "micro_average_precision_ci": bootstrap_ci(labels, probabilities, micro_average_precision, **ci),
              "per_label": per_label, "thresholds": {"source": source, "values": dict(zip(class_names, thresholds))}}
    result["roc_auc"] = result["macro_roc_auc"]  # the name other stages (tune, report) know
    if train_prevalence is not None:
        constant = np.tile(np.asarray(train_prevalence, dtype=np.float64), (len(labels), 1))
        result["baseline"] = {"what": "every image gets each finding's training prevalence",
                              "map": mean_average_precision(labels, constant),
                              "macro_roc_auc": macro_roc_auc(labels, constant)}
    return result


def curves_plot(labels, probabilities, class_names: list[str], roc_path: Path, pr_path: Path) -> None:
    """Per-finding ROC curves and precision-recall curves (test), two PNG files."""
    for path, kind in ((roc_path, "roc"), (pr_path, "pr")):
        fig, ax = plt.subplots(figsize=(6, 5.5))
        for k, name in enumerate(class_names):
            y, p = labels[:, k], probabilities[:, k]
            if not 0 < y.sum() < len(y):
                continue
            if kind == "roc":
                fpr, tpr, _ = roc_curve(y, p)
                ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(y, p):.3f})")
            else:
                precision, recall, _ = precision_recall_curve(y, p)
                ax.plot(recall, precision, label=f"{name} (AP {average_precision_score(y, p):.3f}, "
                                                f"prev. {y.mean():.2f})")
        if kind == "roc":
            ax.plot([0, 1], [0, 1], ":", color="grey")
            ax.set_xlabel("1 - specificity")
            ax.set_ylabel("sensitivity")
            ax.set_title("ROC curve per finding (test)")
        else:
            ax.set_xlabel("recall (sensitivity)")
            ax.set_ylabel("precision (PPV)")
            ax.set_title("precision-recall curve per finding (test)")
        ax.legend(loc="lower right" if kind == "roc" else "upper right", fontsize=7)
        ax.grid(alpha=0.3)
        _save(fig, Path(path))


def write_multilabel_evaluation(run_path: Path, frame: pd.DataFrame, probabilities, labels, class_names,
                                checkpoint: str, extra: dict | None, config, val_labels=None,
                                val_probabilities=None, train_prevalence=None) -> dict:
    """Write ``predictions.csv`` (a probability and a 0/1 prediction at its threshold per
    finding), ``test_metrics.json`` and the ROC/PR plots; return the metrics."""
    metrics = multilabel_metrics(labels, probabilities, class_names, config.eval, config.seed,
                                 val_labels, val_probabilities, train_prevalence)
    metrics = {"checkpoint": checkpoint, **metrics, **(extra or {})}
    predictions = pd.DataFrame({"path": frame.path.to_numpy(), "label": frame.label.to_numpy()})
    for k, name in enumerate(class_names):
        predictions[f"true_{name}"] = np.asarray(labels)[:, k].astype(int)
        predictions[f"prob_{name}"] = probabilities[:, k]
        predictions[f"pred_{name}"] = (probabilities[:, k] >= metrics["per_label"][name]["threshold"]).astype(int)
    write_csv(run_path / rundir.PREDICTIONS, predictions)
    write_json(run_path / rundir.TEST_METRICS, metrics)
    curves_plot(np.asarray(labels).astype(int), probabilities, class_names, run_path / rundir.ROC_PLOT,
                run_path / PR_PLOT)
    return metrics


def summary_lines(metrics: dict) -> list[str]:
    """Console summary: macro/micro ROC AUC and mAP with CIs, the baseline, a per-finding table."""
    def ci(key):
        value = metrics.get(f"{key}_ci")
        return f" (95% CI {value[0]:.3f}-{value[1]:.3f})" if value else ""
    lines = [f"test images: {metrics['n']}",
             f"macro ROC AUC: {metrics['macro_roc_auc']:.3f}{ci('macro_roc_auc')}",
             f"micro ROC AUC: {metrics['micro_roc_auc']:.3f}{ci('micro_roc_auc')}",
             f"mAP: {metrics['map']:.3f}{ci('map')}"]
    if "baseline" in metrics:
        lines.append(f"baseline (training prevalence): mAP {metrics['baseline']['map']:.3f}")
    lines.append(f"{'finding':<14}{'n+':>6}{'AUC':>8}{'AP':>8}{'thr':>7}{'sens':>7}{'spec':>7}")
    for name, row in metrics["per_label"].items():
        lines.append(f"{name:<14}{row['n_positive']:>6}{row['roc_auc']:>8.3f}{row['average_precision']:>8.3f}"
                     f"{row['threshold']:>7.2f}{row['sensitivity']:>7.2f}{row['specificity']:>7.2f}")
    return lines
