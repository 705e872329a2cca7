"""Regression evaluation: mean absolute error, root mean squared error, R^2 and Pearson r
with bootstrap confidence intervals, the predict-the-training-mean baseline, a prediction
interval, and the predicted-vs-true scatter and Bland-Altman plots.

Metrics are scikit-learn's (``mean_absolute_error``, ``mean_squared_error``,
``r2_score``) and scipy's (``pearsonr``); intervals are
:func:`medclf.evaluation.clinical.bootstrap_ci`. The prediction interval is split-conformal
(Lei et al. 2018, JASA 113(523), "Distribution-free predictive inference for regression"):
its half-width is the ``ceil((M + 1) * level) / M`` quantile of the absolute validation
errors, so that about ``level`` of new images fall inside ``prediction +- half-width``.
The Bland-Altman plot is Bland & Altman 1986 (Lancet): the difference against the mean of
prediction and truth, with the mean difference (bias) and its limits of agreement
(bias +- 1.96 sd).
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy.stats import pearsonr  # noqa: E402
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score  # noqa: E402

from .. import rundir  # noqa: E402
from ..io import write_csv, write_json  # noqa: E402
from .clinical import bootstrap_ci  # noqa: E402
from .plots import _save  # noqa: E402

SCATTER_PLOT = "plots/predicted_vs_true.png"
BLAND_ALTMAN_PLOT = "plots/bland_altman.png"
INTERVAL_LEVEL = 0.9


def root_mean_squared_error(y_true, y_pred) -> float:
    """RMSE in target units (square root of scikit-learn's ``mean_squared_error``)."""
    return float(math.sqrt(mean_squared_error(y_true, y_pred)))


def pearson_r(y_true, y_pred) -> float:
    """Pearson correlation (scipy); NaN when either side is constant."""
    if np.std(y_true) == 0 or np.std(y_pred) == 0:
        return math.nan
    return float(pearsonr(y_true, y_pred)[0])


def r2(y_true, y_pred) -> float:
    """Coefficient of determination (scikit-learn ``r2_score``); NaN for a constant truth."""
    return float(r2_score(y_true, y_pred)) if np.std(y_true) > 0 else math.nan


def conformal_half_width(val_true, val_pred, level: float = INTERVAL_LEVEL) -> float | None:
    """Split-conformal half-width: the ``ceil((M + 1) level) / M`` empirical quantile of the
    ``M`` absolute validation errors (target units); None without validation rows; the
    largest error when ``M`` is too small for the level."""
    errors = np.abs(np.asarray(val_true, dtype=np.float64) - np.asarray(val_pred, dtype=np.float64))
    if errors.size == 0:
        return None
    q = min(1.0, math.ceil((errors.size + 1) * level) / errors.size)
    return float(np.quantile(errors, q, method="higher"))


def regression_metrics(y_true, y_pred, eval_cfg, seed: int = 0, train_mean: float | None = None,
                       val_true=None, val_pred=None, name: str = "target") -> dict:
    """Metrics of predictions ``(N,)`` against the truth ``(N,)``, in target units.

    Args:
        y_true: float ``(N,)`` true targets.
        y_pred: float ``(N,)`` predictions.
        eval_cfg: the ``eval`` config section (bootstrap resamples and method).
        train_mean: the training target mean: the baseline that predicts it for every image.
        val_true: validation truth ``(M,)`` for the prediction interval.
        val_pred: validation predictions ``(M,)``, with ``val_true``.
        name: the target's name (the CSV column).

    Returns:
        dict with ``task``, ``n``, ``target``, ``mean_absolute_error``,
        ``root_mean_squared_error``, ``r2``, ``pearson_r`` (each with a ``_ci``), ``bias``
        (mean of prediction - truth), ``limits_of_agreement``, ``baseline`` and
        ``interval`` (``level``, ``half_width``, ``coverage`` on the test split).
    """
    y_true = np.asarray(y_true, dtype=np.float64).reshape(-1)
    y_pred = np.asarray(y_pred, dtype=np.float64).reshape(-1)
    ci = dict(resamples=eval_cfg.bootstrap, seed=seed, method=eval_cfg.bootstrap_method)
    difference = y_pred - y_true

    def stat(fn):
        return lambda t, p: fn(t, p) if np.std(t) > 0 or fn is mean_absolute_error else math.nan

    result = {"task": "regression", "n": int(len(y_true)), "target": name,
              "mean_absolute_error": float(mean_absolute_error(y_true, y_pred)),
              "mean_absolute_error_ci": bootstrap_ci(y_true, y_pred, mean_absolute_error, **ci),
              "root_mean_squared_error": root_mean_squared_error(y_true, y_pred),
              "root_mean_squared_error_ci": bootstrap_ci(y_true, y_pred, root_mean_squared_error, **ci),
              "r2": r2(y_true, y_pred), "r2_ci": bootstrap_ci(y_true, y_pred, stat(r2), **ci),
              "pearson_r": pearson_r(y_true, y_pred),
              "pearson_r_ci": bootstrap_ci(y_true, y_pred, stat(pearson_r), **ci),
              "bias": float(difference.mean()),
              "limits_of_agreement": [float(difference.mean() - 1.96 * difference.std(ddof=1)),
                                      float(difference.mean() + 1.96 * difference.std(ddof=1))]
              if len(y_true) > 1 else None}
    if train_mean is not None:
        constant = np.full_like(y_true, float(train_mean))
        result["baseline"] = {"what": "every image gets the training mean", "prediction": float(train_mean),
                              "mean_absolute_error": float(mean_absolute_error(y_true, constant)),
                              "root_mean_squared_error": root_mean_squared_error(y_true, constant)}
        result["mae_ratio_to_baseline"] = result["mean_absolute_error"] / max(
            result["baseline"]["mean_absolute_error"], 1e-12)
    half = conformal_half_width(val_true, val_pred) if val_true is not None else None
    result["interval"] = {"level": INTERVAL_LEVEL, "half_width": half,
                          "method": "split conformal on the validation errors",
                          "coverage": float((np.abs(difference) <= half).mean()) if half is not None else None}
    return result


def scatter_plot(y_true, y_pred, path: Path, name: str) -> Path:
    """Predicted against true values with the identity line (test)."""
    fig, ax = plt.subplots(figsize=(5.5, 5.2))
    ax.scatter(y_true, y_pred, s=10, alpha=0.6)
    low, high = float(min(np.min(y_true), np.min(y_pred))), float(max(np.max(y_true), np.max(y_pred)))
    ax.plot([low, high], [low, high], ":", color="grey", label="identity")
    ax.set_xlabel(f"true {name}")
    ax.set_ylabel(f"predicted {name}")
    ax.set_title(f"predicted vs true (test; MAE {mean_absolute_error(y_true, y_pred):.3g})")
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    return _save(fig, Path(path))


def bland_altman_plot(y_true, y_pred, path: Path, name: str) -> Path:
    """Bland-Altman plot: prediction - truth against their mean, with bias and 95 % limits of agreement."""
    y_true, y_pred = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
    difference, mean = y_pred - y_true, (y_pred + y_true) / 2
    bias, sd = difference.mean(), difference.std(ddof=1) if len(difference) > 1 else 0.0
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.scatter(mean, difference, s=10, alpha=0.6)
    ax.axhline(bias, color="C1", label=f"bias {bias:.3g}")
    for sign in (-1, 1):
        ax.axhline(bias + sign * 1.96 * sd, color="C3", ls="--",
                   label="bias +- 1.96 sd" if sign > 0 else None)
    ax.set_xlabel(f"mean of predicted and true {name}")
    ax.set_ylabel(f"predicted - true {name}")
    ax.set_title("Bland-Altman (test)")
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, Path(path))


def write_regression_evaluation(run_path: Path, frame: pd.DataFrame, predictions, targets, name: str,
                                checkpoint: str, extra: dict | None, config, val_targets=None,
                                val_predictions=None, train_mean: float | None = None, spread=None) -> dict:
    """Write ``predictions.csv`` (true, predicted, interval, TTA spread), ``test_metrics.json``
    and the scatter and Bland-Altman plots; return the metrics."""
    predictions = np.asarray(predictions, dtype=np.float64).reshape(-1)
    targets = np.asarray(targets, dtype=np.float64).reshape(-1)
    metrics = regression_metrics(targets, predictions, config.eval, config.seed, train_mean,
                                 val_targets, val_predictions, name)
    metrics = {"checkpoint": checkpoint, "class_names": [name], **metrics, **(extra or {})}
    half = metrics["interval"]["half_width"]
    table = pd.DataFrame({"path": frame.path.to_numpy(), f"true_{name}": targets, f"pred_{name}": predictions})
    if half is not None:
        table["interval_low"], table["interval_high"] = predictions - half, predictions + half
    if spread is not None:
        table["tta_sd"] = np.asarray(spread).reshape(-1)
    write_csv(run_path / rundir.PREDICTIONS, table)
    write_json(run_path / rundir.TEST_METRICS, metrics)
    scatter_plot(targets, predictions, run_path / SCATTER_PLOT, name)
    bland_altman_plot(targets, predictions, run_path / BLAND_ALTMAN_PLOT, name)
    return metrics


def summary_lines(metrics: dict) -> list[str]:
    """Console summary: MAE, RMSE, R^2, Pearson r with CIs, the baseline and the interval."""
    def ci(key):
        value = metrics.get(f"{key}_ci")
        return f" (95% CI {value[0]:.3g}-{value[1]:.3g})" if value else ""
    lines = [f"test images: {metrics['n']}  target: {metrics['target']}",
             f"mean absolute error: {metrics['mean_absolute_error']:.3g}{ci('mean_absolute_error')}",
             f"root mean squared error: {metrics['root_mean_squared_error']:.3g}{ci('root_mean_squared_error')}",
             f"R^2: {metrics['r2']:.3f}{ci('r2')}", f"Pearson r: {metrics['pearson_r']:.3f}{ci('pearson_r')}"]
    if "baseline" in metrics:
        lines.append(f"baseline (training mean {metrics['baseline']['prediction']:.3g}): MAE "
                     f"{metrics['baseline']['mean_absolute_error']:.3g} (ratio {metrics['mae_ratio_to_baseline']:.2f})")
    interval = metrics.get("interval") or {}
    if interval.get("half_width") is not None:
        lines.append(f"{interval['level']:.0%} interval: +-{interval['half_width']:.3g} (test coverage "
                     f"{interval['coverage']:.2f})")
    return lines
