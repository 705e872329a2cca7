"""Predictions of any task kind (:mod:`medclf.training.tasks`) and the evaluation of
multilabel and regression runs (classification keeps :mod:`.checkpoint`'s path)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import rundir
from ..training.safety import advise_on_out_of_memory
from ..training.tasks import MULTILABEL, REGRESSION, activate, task_of
from . import multilabel, plots, regression
from .clinical import tta_chunks, tta_views
from .metrics import summary_lines as classification_summary
from .multilabel import write_multilabel_evaluation
from .predict import load_model, pick_device, tta_flip_axes
from .regression import write_regression_evaluation


@torch.no_grad()
def predict_outputs(model: torch.nn.Module, images: torch.Tensor, task: str, batch_size: int = 64,
                    device: torch.device | None = None) -> np.ndarray:
    """Predictions ``(N, K)`` for images ``(N, C, *spatial)``: softmax probabilities
    (classification), per-finding sigmoid probabilities (multilabel), or values ``(N, 1)``
    in target units (regression)."""
    device = device or pick_device()
    if next(model.parameters()).device != device:  # a service calls this per request: move once
        model = model.to(device)
    if model.training:
        model.eval()
    chunks = [activate(model(images[i:i + batch_size].to(device)).float(), task).cpu()
              for i in range(0, len(images), batch_size)]
    return torch.cat(chunks).numpy() if chunks else np.zeros((0, 0))


def predict_views(model: torch.nn.Module, images: torch.Tensor, config, task: str,
                  device: torch.device | None = None) -> np.ndarray:
    """Predictions of every test-time view ``(V, N, K)`` (flips the training augmentation
    used, and shifts: :func:`~medclf.evaluation.clinical.tta_views`; the first view is the
    image itself). Their mean is the TTA prediction, their spread an uncertainty."""
    return np.concatenate([np.stack([predict_outputs(model, v, task, config.eval.batch_size, device)
                                     for v in tta_views(chunk, tta_flip_axes(config), config.eval.tta_shift)])
                           for _, chunk in tta_chunks(images)], axis=1)


def evaluate_task(model: torch.nn.Module, out: str | Path, class_names: list[str], test, val, config,
                  checkpoint: str, extra: dict, facts: dict, device: torch.device) -> dict:
    """Evaluate a multilabel or regression network on ``test`` (and ``val`` for thresholds /
    the prediction interval) and write the run's evaluation files.

    Args:
        model: the network, its outputs finalised (target scale folded in), in eval mode.
        test: :class:`~medclf.evaluation.checkpoint.EvaluationSplit` (labels: ``(N, K)`` 0/1
            findings, or ``(N,)`` targets).
        val: the validation split alike, or None.
        facts: the run's task facts (``task``, ``train_prevalence`` or ``target_mean``).

    Returns:
        the metrics written to ``test_metrics.json``.
    """
    task = facts["task"]
    with advise_on_out_of_memory(config, "evaluation (lower eval.batch_size)"):
        if config.eval.tta or task == REGRESSION:  # regression: the TTA spread is reported per image
            views = predict_views(model, test.images, config, task, device)
            test_pred = views.mean(axis=0) if config.eval.tta else views[0]
            spread = views.std(axis=0)
        else:
            test_pred, spread = predict_outputs(model, test.images, task, config.eval.batch_size, device), None
        val_pred = None
        if val is not None:
            val_pred = predict_views(model, val.images, config, task, device).mean(axis=0) if config.eval.tta \
                else predict_outputs(model, val.images, task, config.eval.batch_size, device)
    extra = {**extra, "tta": bool(config.eval.tta)}
    val_labels = np.asarray(val.labels) if val is not None else None
    if (Path(out) / rundir.METRICS).exists():
        plots.learning_curves(Path(out) / rundir.METRICS, Path(out) / rundir.LEARNING_CURVES_PLOT,
                              ("loss", "roc_auc", "map") if task == MULTILABEL else ("loss", "mae", "r2"))
    if task == MULTILABEL:
        return write_multilabel_evaluation(Path(out), test.frame, test_pred, np.asarray(test.labels), class_names,
                                           checkpoint, extra, config, val_labels, val_pred,
                                           facts.get("train_prevalence"))
    return write_regression_evaluation(Path(out), test.frame, test_pred[:, 0], np.asarray(test.labels),
                                       class_names[0], checkpoint, extra, config, val_labels,
                                       None if val_pred is None else val_pred[:, 0], facts.get("target_mean"),
                                       None if spread is None else spread[:, 0])


def task_prediction_table(run, paths: list[str], arrays: list, errors: dict, tta: bool) -> pd.DataFrame:
    """``medclf predict`` for a multilabel or regression run.

    Args:
        run: the :class:`~medclf.rundir.Run`.
        paths: the image paths, in order.
        arrays: their preprocessed ``(C, *spatial)`` arrays (None where unreadable).
        errors: ``{path: why}`` of unreadable files.
        tta: average over the test-time views (the views are predicted either way for a
            regression run: their spread is reported).

    Returns:
        one row per path. Multilabel: ``prob_<finding>`` for every finding (sigmoid), and
        ``predicted``: the findings at or above their validation-chosen threshold (from
        ``test_metrics.json``; 0.5 before the run was evaluated) joined by ``|``.
        Regression: ``predicted`` (target units), ``interval_low``/``interval_high``
        (the split-conformal interval of the run's evaluation, see
        :mod:`medclf.evaluation.regression`), ``tta_sd`` (spread of the test-time views).
        Both: ``tta_views`` and ``error``.
    """
    task = task_of(run.config)
    good = [i for i, a in enumerate(arrays) if a is not None]
    names = run.class_names
    values = np.full((len(paths), len(names)), np.nan)
    spread = np.full(len(paths), np.nan)
    views_count = 0
    if good:
        model = load_model(run)
        device = pick_device(run.config.trainer.accelerator)
        images = torch.from_numpy(np.stack([arrays[i] for i in good]))
        if tta or task == REGRESSION:
            views = predict_views(model, images, run.config, task, device)
            values[good] = views.mean(axis=0) if tta else views[0]
            spread[good] = views.std(axis=0)[:, 0]
            views_count = len(views) if tta else 0
        else:
            values[good] = predict_outputs(model, images, task, run.config.eval.batch_size, device)
    stored = _stored_metrics(run)
    frame = pd.DataFrame({"path": paths})
    if task == MULTILABEL:
        thresholds = {n: (stored.get("per_label", {}).get(n) or {}).get("threshold", 0.5) for n in names}
        frame["predicted"] = ["|".join(n for k, n in enumerate(names) if row[k] >= thresholds[n]) or "none"
                              if p not in errors else "" for row, p in zip(values, paths)]
        for k, name in enumerate(names):
            frame[f"prob_{name}"] = values[:, k]
    else:
        half = (stored.get("interval") or {}).get("half_width")
        frame["predicted"] = values[:, 0]
        frame["interval_low"] = values[:, 0] - half if half is not None else np.nan
        frame["interval_high"] = values[:, 0] + half if half is not None else np.nan
        frame["tta_sd"] = spread
    frame["tta_views"] = views_count
    frame["error"] = [errors.get(p, "") for p in paths]
    return frame


def _stored_metrics(run) -> dict:
    """The run's ``test_metrics.json`` ({} before its evaluation)."""
    path = run.path / rundir.TEST_METRICS
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def summary_lines(metrics: dict, class_names: list[str]) -> list[str]:
    """A short human-readable summary of a run's test metrics, for its task: the summaries
    of :mod:`.multilabel`, :mod:`.regression` or :func:`.metrics.summary_lines`."""
    if metrics.get("task") == MULTILABEL:
        return multilabel.summary_lines(metrics)
    if metrics.get("task") == REGRESSION:
        return regression.summary_lines(metrics)
    return classification_summary(metrics, class_names)
