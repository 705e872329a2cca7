"""Plots of a run, written as PNG files with matplotlib (Agg backend, no display needed)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay, roc_curve  # noqa: E402

from ..io import atomic_write  # noqa: E402


def _save(fig, path: Path) -> Path:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)
    return path


def learning_curves(metrics_csv: str | Path, path: str | Path,
                    names: tuple[str, ...] = ("loss", "accuracy", "roc_auc")) -> Path:
    """Loss, accuracy and ROC AUC (or other ``names``) per epoch for train and validation (three panels)."""
    frame = pd.read_csv(metrics_csv)
    fig, axes = plt.subplots(1, len(names), figsize=(14, 4))
    for ax, name in zip(axes, names):
        for split, style in (("train", "-"), ("val", "--")):
            column = f"{split}_{name}"
            if column in frame and frame[column].notna().any():
                ax.plot(frame.epoch + 1, frame[column], style, label=split)
        ax.set_xlabel("epoch")
        ax.set_title(name.replace("_", " "))
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, Path(path))


def confusion_matrix_plot(matrix, class_names: list[str], path: str | Path) -> Path:
    """Confusion matrix with counts (rows: true class, columns: predicted class)."""
    size = max(4.0, 1.1 * len(class_names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ConfusionMatrixDisplay(np.asarray(matrix), display_labels=class_names).plot(
        ax=ax, cmap="Blues", colorbar=False, xticks_rotation=30)
    ax.set_title("confusion matrix (test)")
    return _save(fig, Path(path))


def roc_curves(y_true, probabilities, class_names: list[str], path: str | Path) -> Path:
    """One-vs-rest ROC curve per class, with its AUC in the legend."""
    from sklearn.metrics import auc
    y_true = np.asarray(y_true)
    probabilities = np.asarray(probabilities)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    classes = range(len(class_names)) if len(class_names) > 2 else [1]
    for c in classes:
        positives = y_true == c
        if 0 < positives.sum() < len(y_true):
            fpr, tpr, _ = roc_curve(positives, probabilities[:, c])
            ax.plot(fpr, tpr, label=f"{class_names[c]} (AUC {auc(fpr, tpr):.3f})")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set_xlabel("1 - specificity (false positive rate)")
    ax.set_ylabel("sensitivity (true positive rate)")
    ax.set_title("ROC curves (test)")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    return _save(fig, Path(path))


def reliability_diagram(calibration: dict, path: str | Path) -> Path:
    """Reliability diagram: observed frequency against mean confidence per bin (bars), with
    the diagonal of perfect calibration; after temperature scaling too when fitted."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    width = 1.0 / calibration["bins"]
    series = [("before", calibration["table"], "tab:blue")]
    if calibration.get("table_after"):
        series.append((f"after temperature {calibration['temperature']:.2f}", calibration["table_after"], "tab:orange"))
    for label, table, color in series:
        if table:
            ax.bar([b["low"] for b in table], [b["accuracy"] for b in table], width=width, align="edge",
                   alpha=0.45, edgecolor=color, color=color, label=label)
            ax.plot([b["confidence"] for b in table], [b["accuracy"] for b in table], "o-", color=color, ms=3)
    ax.plot([0, 1], [0, 1], ":", color="grey")
    what = "positive-class probability" if calibration["method"] == "positive class" else "confidence (top label)"
    ax.set_xlabel(what)
    ax.set_ylabel("observed frequency")
    title = f"reliability (test): ECE {calibration['ece']:.3f}"
    if calibration.get("ece_after") is not None:
        title += f" -> {calibration['ece_after']:.3f}"
    ax.set_title(title)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    return _save(fig, Path(path))
