"""Evaluate a model on a split: predictions.csv, test_metrics.json and plots of a run."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import rundir
from ..io import write_csv, write_json
from ..models import create_model
from ..models.prior import apply_output_prior
from . import plots
from .clinical import calibration_error, clinical_metrics, tta_views
from .metrics import classification_metrics


def pick_device(accelerator: str = "auto") -> torch.device:
    """CUDA when available (and not forced to CPU), else CPU."""
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


@torch.no_grad()
def predict_probabilities(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 64,
                          device: torch.device | None = None) -> np.ndarray:
    """Softmax probabilities ``(N, num_classes)`` for images ``(N, C, *spatial)``."""
    device = device or pick_device()
    model = model.to(device).eval()
    chunks = [model(images[i:i + batch_size].to(device)).float().softmax(dim=1).cpu()
              for i in range(0, len(images), batch_size)]
    return torch.cat(chunks).numpy() if chunks else np.zeros((0, 0))


def tta_flip_axes(config) -> list[int]:
    """The axes that the training augmentation flips (the only flips a test-time view may
    use: a model trained without up-down flips has not learned up-down symmetry): ``-1``
    with ``augment.flip_prob``, ``-2`` with ``vertical_flip_prob``, ``-3`` (volumes) with
    ``depth_flip_prob``."""
    aug = config.augment
    if not aug.enabled:
        return []
    axes = [-1] if aug.flip_prob > 0 else []
    if aug.vertical_flip_prob > 0:
        axes.append(-2)
    if config.model.spatial_dims == 3 and aug.depth_flip_prob > 0:
        axes.append(-3)
    return axes


@torch.no_grad()
def predict_tta(model: torch.nn.Module, images: torch.Tensor, config, device: torch.device | None = None,
                one_pass: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Test-time augmentation: mean softmax probabilities ``(N, num_classes)`` over the views
    of :func:`~medclf.evaluation.clinical.tta_views` (flips along the axes of
    :func:`tta_flip_axes`, in every combination; shifts of ``eval.tta_shift``).
    ``one_pass``: the probabilities ``(N, num_classes)`` of the unchanged images when the
    caller has them already (the first view is then not predicted again).
    Returns ``(probabilities, number of views)``."""
    views = tta_views(images, tta_flip_axes(config), config.eval.tta_shift)
    probs = [one_pass if i == 0 and one_pass is not None
             else predict_probabilities(model, v, config.eval.batch_size, device) for i, v in enumerate(views)]
    return np.mean(probs, axis=0), len(views)


def load_model(run: rundir.Run, checkpoint: str | Path | None = None) -> torch.nn.Module:
    """The run's network with the weights of its best (else last) checkpoint, in eval mode.

    Checkpoints are read with ``weights_only=True``. The logits are shifted to
    ``train.output_prior`` (:func:`medclf.models.prior.apply_output_prior`), as after training.
    """
    model_cfg = run.config.model.model_copy(update={"weights": str(checkpoint or run.checkpoint)})
    model = create_model(model_cfg, run.config.data.in_channels, len(run.class_names)).eval()
    apply_output_prior(model, training_counts(run.split(), run.class_names), run.config.train)
    return model


def training_counts(split: pd.DataFrame, class_names: list[str]) -> np.ndarray:
    """Training images per class ``(num_classes,)``, in class-name order, from a split table
    (``path``, ``label``, ``split``)."""
    train = split[split.split == "train"].label.astype(str).value_counts()
    return np.array([int(train.get(name, 0)) for name in class_names])


def write_evaluation(run_path: Path, frame: pd.DataFrame, probabilities: np.ndarray,
                     labels: np.ndarray, class_names: list[str], checkpoint: str,
                     extra: dict | None = None, config=None, val_labels=None, val_probabilities=None,
                     tta_probabilities=None, tta_views_count: int = 0, drop: np.ndarray | None = None,
                     val_tta_probabilities=None) -> dict:
    """Write predictions.csv, test_metrics.json, confusion-matrix, ROC and reliability plots.

    Args:
        frame: manifest rows of the evaluated images (``path``, ``label``).
        probabilities: float ``(N, num_classes)``.
        labels: int ``(N,)`` true class indices.
        config: the run's :class:`~medclf.config.Config` (eval settings, seed); None gives
            the defaults.
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
    from ..config import Config
    config = config or Config()
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
                                val_labels, val_probabilities)

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
    plots.confusion_matrix_plot(metrics["confusion_matrix"], class_names, run_path / "plots" / "confusion_matrix.png")
    plots.roc_curves(labels[keep], probabilities[keep], class_names, run_path / "plots" / "roc_curves.png")
    plots.reliability_diagram(metrics["calibration"], run_path / "plots" / "reliability.png")
    if (run_path / rundir.METRICS).exists():
        plots.learning_curves(run_path / rundir.METRICS, run_path / "plots" / "learning_curves.png")
    return metrics
