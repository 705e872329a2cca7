"""Clinical evaluation: bootstrap confidence intervals, a validation-chosen operating
threshold, calibration (ECE, MCE, temperature scaling) and test-time augmentation."""
from __future__ import annotations

import itertools
import math
import warnings
from types import SimpleNamespace

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from scipy.stats import DegenerateDataWarning, bootstrap
from sklearn.metrics import balanced_accuracy_score, roc_curve
from torch.nn import functional as F

from ..errors import ConfigError
from .metrics import classification_metrics, roc_auc  # roc_auc: the project's one ROC AUC

BOOTSTRAP_METHODS = ("percentile", "bca")
_BOOTSTRAP_BATCH_INDICES = 1 << 22  # resample indices held at once (32 MiB of int64)


def bootstrap_ci(y_true, probabilities, statistic, resamples: int = 1000, seed: int = 0,
                 level: float = 0.95, method: str = "percentile") -> list[float] | None:
    """Bootstrap confidence interval of a statistic of paired ``(y_true, probabilities)`` rows,
    by :func:`scipy.stats.bootstrap`.

    Rows are resampled with replacement as pairs (scipy's ``paired=True`` resamples the row
    indices; here the index array is the one sample, so predictions of any shape stay
    with their labels). Methods (Efron & Tibshirani 1993, "An Introduction to the
    Bootstrap", ch. 13 and 14): ``'percentile'`` (the default) and ``'bca'``
    (bias-corrected and accelerated, with the jackknife acceleration).

    The absent-class rule: resamples where the statistic is not finite (ROC AUC or balanced
    accuracy of a resample that lacks a class, see :func:`roc_auc`) are skipped, and the
    interval is taken over the remaining ones (scipy computes it from that distribution,
    given as ``bootstrap_result``). Where BCa is undefined (a degenerate distribution: all
    resamples give the same value, or the jackknife values are not finite) the percentile
    interval is returned.

    Args:
        y_true: int ``(N,)`` labels.
        probabilities: float ``(N, num_classes)`` probabilities, or predictions ``(N,)``.
        statistic: ``f(y_true, probabilities) -> float``; NaN for a resample where it is
            undefined.
        resamples: number of bootstrap resamples; 0 gives None.
        seed: seed of numpy's default generator (``np.random.default_rng(seed)``), passed as
            scipy's ``rng``: the same seed gives the same interval.
        level: confidence level of the two-sided interval.
        method: ``'percentile'`` or ``'bca'``.

    Returns:
        ``[low, high]``, or None (no resamples, no rows, or no finite resample). One row:
        every resample is that row, so ``[value, value]`` (None if not finite).

    Raises:
        ValueError: an unknown ``method``.
    """
    if method not in BOOTSTRAP_METHODS:
        raise ValueError(f"bootstrap method {method!r} is not one of {BOOTSTRAP_METHODS}")
    if resamples <= 0 or len(y_true) == 0:
        return None
    y_true = np.asarray(y_true)
    probabilities = np.asarray(probabilities)
    n = len(y_true)
    if n == 1:  # scipy needs two rows; every resample of one row is that row
        value = float(statistic(y_true, probabilities))
        return [value, value] if np.isfinite(value) else None

    def resampled(rows):
        return statistic(y_true[rows], probabilities[rows])

    common = dict(vectorized=False, confidence_level=level,
                  batch=max(1, min(resamples, _BOOTSTRAP_BATCH_INDICES // n)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DegenerateDataWarning)
        drawn = bootstrap((np.arange(n),), resampled, n_resamples=resamples, method="percentile",
                          rng=np.random.default_rng(seed), **common)
        distribution = np.asarray(drawn.bootstrap_distribution, dtype=np.float64)
        finite = distribution[np.isfinite(distribution)]
        if finite.size == 0:
            return None
        kept = SimpleNamespace(bootstrap_distribution=finite)
        interval = bootstrap((np.arange(n),), resampled, n_resamples=0, method=method,
                             bootstrap_result=kept, **common).confidence_interval
        if method != "percentile" and not (np.isfinite(interval.low) and np.isfinite(interval.high)):
            interval = bootstrap((np.arange(n),), resampled, n_resamples=0, method="percentile",
                                 bootstrap_result=kept, **common).confidence_interval
    return [float(interval.low), float(interval.high)]


def _balanced_accuracy(y_true, y_pred) -> float:
    """Balanced accuracy of int labels ``(N,)`` and predictions ``(N,)``: the mean recall over
    the classes present in ``y_true``, as scikit-learn's ``balanced_accuracy_score``; NaN
    with fewer than two classes present (a bootstrap resample that lacks a class).

    Counted with ``np.bincount``: scikit-learn's input checks take about 2 ms a call, which
    made a 1000-resample interval take 2.4 s, against 0.07 s here; the value is the same
    (tests/test_clinical.py checks it against scikit-learn's).
    """
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    indices = all(np.issubdtype(a.dtype, np.integer) for a in (y_true, y_pred))
    if not indices or (y_true.size and (y_true.min() < 0 or y_pred.min() < 0)):  # scikit-learn's way
        return float(balanced_accuracy_score(y_true, y_pred)) if len(np.unique(y_true)) >= 2 else math.nan
    size = int(max(y_true.max(initial=0), y_pred.max(initial=0))) + 1
    total = np.bincount(y_true, minlength=size)
    hits = np.bincount(y_true[y_true == y_pred], minlength=size)
    present = total > 0
    if present.sum() < 2:
        return math.nan
    return float(np.mean(hits[present] / total[present]))


def choose_threshold(y_true, positive_probability, method="youden", target_sensitivity: float = 0.9) -> float:
    """Operating threshold on the positive-class probability, chosen on validation data.

    ``'youden'``: a threshold maximising J = sensitivity + specificity - 1 (Youden 1950).
    Several thresholds often reach the same maximal J: whenever lowering the threshold
    passes as many positives (share 1/P each) as negatives (share 1/N each), e.g. on a
    balanced or nearly separable validation split. scikit-learn's ``roc_curve`` lists
    thresholds from high to low, so ``argmax`` would take the *highest* of them, an extreme
    threshold that sits right under one validation positive and generalises badly to test
    data; we take the **midpoint** (in probability) between the lowest and the highest
    threshold reaching the maximal J, the threshold with the widest margin on both sides.
    If that midpoint does not reach the maximal J itself (the tied thresholds are not one
    run: a threshold of lower J lies between them), the tied threshold nearest to the
    midpoint is taken.

    ``'target_sensitivity'``: the highest threshold whose sensitivity reaches the target.
    A number is returned as given. Candidate thresholds are every distinct validation
    probability (scikit-learn's ``roc_curve`` with ``drop_intermediate=False``); a
    prediction is positive when its probability is >= the threshold.

    Args:
        y_true: ``(M,)`` validation labels, true/1 for the positive class.
        positive_probability: float ``(M,)`` probability of the positive class.
        method: ``'youden'``, ``'target_sensitivity'`` or a number in [0, 1].
        target_sensitivity: the sensitivity to reach with ``'target_sensitivity'``.

    Raises:
        ConfigError: validation labels of one class only, or an unknown method.
    """
    if not isinstance(method, str):
        return float(method)
    y_true = np.asarray(y_true) == 1  # bool labels too (True == 1)
    positive_probability = np.asarray(positive_probability, dtype=np.float64)
    if len(np.unique(y_true)) < 2:
        raise ConfigError("eval.threshold: the validation split needs both classes to choose a threshold")
    fpr, tpr, thresholds = roc_curve(y_true, positive_probability, drop_intermediate=False)
    thresholds = np.minimum(thresholds, 1.0)
    if method == "youden":
        j = tpr - fpr
        best_j = j.max()
        tied = thresholds[j >= best_j - 1e-9]  # J values are differences of fractions k/P - m/N

        def youden(threshold):
            predicted = positive_probability >= threshold
            return predicted[y_true].mean() - predicted[~y_true].mean()

        middle = float((tied.min() + tied.max()) / 2)
        if youden(middle) < best_j - 1e-9:
            middle = float(tied[np.argmin(np.abs(tied - middle))])
        return middle
    if method == "target_sensitivity":
        return float(thresholds[int(np.flatnonzero(tpr >= target_sensitivity - 1e-12)[0])])
    raise ConfigError(f"eval.threshold: unknown method {method!r}")


def calibration_error(y_true, probabilities, bins: int = 15) -> dict:
    """Expected and maximum calibration error with equal-width bins (Naeini et al. 2015).

    Binary ``(N, 2)``: reliability of the positive-class probability against the label
    (as torchmetrics' ``BinaryCalibrationError``); several classes: top-label confidence
    against correctness (``MulticlassCalibrationError``). Bin ``b`` holds confidences in
    ``[b/bins, (b+1)/bins)``, the last bin also 1.0.

    Returns:
        ``ece`` (sum over bins of share * |accuracy - confidence|), ``mce`` (max over
        non-empty bins), ``method``, ``bins`` and ``table`` (per bin: ``confidence``,
        ``accuracy``, ``count``) for the reliability diagram.
    """
    y_true = np.asarray(y_true)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.shape[1] == 2:
        confidence, correct, method = probabilities[:, 1], (y_true == 1).astype(float), "positive class"
    else:
        confidence = probabilities.max(axis=1)
        correct = (probabilities.argmax(axis=1) == y_true).astype(float)
        method = "top label"
    edges = np.linspace(0, 1, bins + 1)
    index = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, bins - 1)
    table, ece, mce = [], 0.0, 0.0
    for b in range(bins):
        members = index == b
        count = int(members.sum())
        if count:
            gap = abs(correct[members].mean() - confidence[members].mean())
            ece += count / len(y_true) * gap
            mce = max(mce, gap)
            table.append({"low": float(edges[b]), "high": float(edges[b + 1]), "count": count,
                          "confidence": float(confidence[members].mean()),
                          "accuracy": float(correct[members].mean())})
    return {"ece": float(ece), "mce": float(mce), "method": method, "bins": bins, "table": table}


def apply_temperature(probabilities, temperature: float) -> np.ndarray:
    """Softmax of ``log(p) / T``: the same as dividing the logits by ``T`` (log-probabilities
    differ from logits by a per-row constant). Float ``(N, num_classes)``."""
    log_p = np.log(np.clip(np.asarray(probabilities, dtype=np.float64), 1e-12, 1.0)) / temperature
    log_p -= log_p.max(axis=1, keepdims=True)
    p = np.exp(log_p)
    return p / p.sum(axis=1, keepdims=True)


def fit_temperature(y_true, probabilities) -> float:
    """Temperature scaling (Guo et al. 2017, "On calibration of modern neural networks"):
    the ``T`` in [0.05, 20] minimising the validation negative log-likelihood of
    ``softmax(logits / T)`` (scipy's bounded scalar minimiser on log T)."""
    y_true = np.asarray(y_true)

    def nll(log_t):
        p = apply_temperature(probabilities, math.exp(log_t))
        return -np.log(np.clip(p[np.arange(len(y_true)), y_true], 1e-12, 1.0)).mean()

    result = minimize_scalar(nll, bounds=(math.log(0.05), math.log(20.0)), method="bounded")
    return float(math.exp(result.x))


TTA_CHUNK_BYTES = 64 << 20
"""Float32 images whose test-time views are built at once (64 volumes of 64^3)."""


def tta_chunks(images, max_bytes: int = TTA_CHUNK_BYTES):
    """``(start, chunk)`` over images ``(N, C, *spatial)`` (a tensor or a view of the disk
    shard, :class:`~medclf.data.store.DiskImages`), each chunk a tensor of at most ``max_bytes``
    of float32 images (at least one image; one empty chunk for ``N = 0``), so that the views
    of :func:`tta_views` need memory that does not grow with ``N``."""
    step = max(1, max_bytes // (4 * int(np.prod(images.shape[1:]))))
    for start in range(0, max(len(images), 1), step):
        chunk = images[start:start + step]  # a disk view reads just these rows
        yield start, chunk if torch.is_tensor(chunk) else torch.as_tensor(chunk)


def tta_views(images: torch.Tensor, flip, shift: float) -> list[torch.Tensor]:
    """Deterministic test-time views of images ``(N, C, H, W)`` or volumes ``(N, C, D, H, W)``.

    The originals; flipped copies along every non-empty subset of the flip axes (``flip``:
    True for the last axis only, or a sequence of axes such as ``(-1, -2, -3)``, which gives
    all 7 flips of a volume); and four shifts by ``shift`` of the image size (edge pixels
    repeated) along the last two axes. Flip TTA: e.g. Simonyan & Zisserman 2015; shifts as
    in the "multi-crop" evaluation of Krizhevsky et al. 2012.
    """
    views = [images]
    axes = [-1] if flip is True else list(flip or [])
    for k in range(1, len(axes) + 1):
        for subset in itertools.combinations(axes, k):
            views.append(torch.flip(images, dims=list(subset)))
    h, w = images.shape[-2:]
    dy, dx = int(round(shift * h)), int(round(shift * w))
    if dy or dx:
        flat = images.reshape(-1, 1, *images.shape[-2:]) if images.ndim == 5 else images
        for sy, sx in ((dy, 0), (-dy, 0), (0, dx), (0, -dx)):
            if not (sy or sx):
                continue
            pad = (abs(sx), abs(sx), abs(sy), abs(sy))  # left, right, top, bottom
            padded = F.pad(flat, pad, mode="replicate")
            top, left = abs(sy) - sy, abs(sx) - sx  # content moves by (+sy, +sx)
            shifted = padded[..., top:top + h, left:left + w]
            views.append(shifted.reshape(images.shape))
    return views


def clinical_metrics(y_true, probabilities, class_names: list[str], eval_cfg, seed: int = 0,
                     val_labels=None, val_probabilities=None, bootstrap_method: str = "percentile") -> dict:
    """Everything a clinician asks of a test evaluation, in one dict.

    Args:
        y_true: int ``(N,)``; probabilities: float ``(N, num_classes)`` on the test split.
        eval_cfg: the ``eval`` config section (bootstrap, threshold, calibration, ...).
        val_labels: int ``(M,)`` labels of the validation split.
        val_probabilities: float ``(M, num_classes)`` validation probabilities from the same
            checkpoint; with ``val_labels`` needed for the operating threshold and temperature
            scaling.
        bootstrap_method: ``'percentile'`` (default) or ``'bca'`` for every bootstrap
            interval (:func:`bootstrap_ci`); recorded in ``bootstrap['method']``.

    Returns:
        :func:`~medclf.evaluation.metrics.classification_metrics` at 0.5 / argmax, plus
        ``roc_auc_ci``, ``balanced_accuracy_ci``, ``bootstrap``, ``calibration`` and, for
        binary tasks with validation predictions, ``operating_point``.
    """
    y_true = np.asarray(y_true, dtype=int)
    probabilities = np.asarray(probabilities, dtype=float)
    metrics = classification_metrics(y_true, probabilities, class_names)
    n_boot = eval_cfg.bootstrap
    metrics["roc_auc_ci"] = bootstrap_ci(y_true, probabilities, roc_auc, n_boot, seed, method=bootstrap_method)
    metrics["balanced_accuracy_ci"] = bootstrap_ci(
        y_true, probabilities.argmax(axis=1), _balanced_accuracy, n_boot, seed, method=bootstrap_method)
    metrics["bootstrap"] = {"resamples": n_boot, "seed": seed, "level": 0.95, "method": bootstrap_method}
    calibration = calibration_error(y_true, probabilities, eval_cfg.calibration_bins)
    calibration["temperature"] = None
    have_val = val_probabilities is not None and len(val_probabilities) > 0
    if eval_cfg.temperature_scaling and have_val:
        t = fit_temperature(val_labels, val_probabilities)
        after = calibration_error(y_true, apply_temperature(probabilities, t), eval_cfg.calibration_bins)
        calibration.update(temperature=t, ece_after=after["ece"], mce_after=after["mce"],
                           table_after=after["table"])
    metrics["calibration"] = calibration
    if len(class_names) == 2 and have_val:
        pos = class_names.index(eval_cfg.positive_class) if eval_cfg.positive_class else 1
        if eval_cfg.positive_class and eval_cfg.positive_class not in class_names:
            raise ConfigError(f"eval.positive_class: {eval_cfg.positive_class!r} is not one of {class_names}")
        threshold = choose_threshold(np.asarray(val_labels) == pos, np.asarray(val_probabilities)[:, pos],
                                     eval_cfg.threshold, eval_cfg.target_sensitivity)
        y_pred = np.where(probabilities[:, pos] >= threshold, pos, 1 - pos)
        op = classification_metrics(y_true, probabilities, class_names, y_pred=y_pred)
        op.pop("classification_report", None)
        op.pop("roc_auc_per_class", None)
        op["balanced_accuracy_ci"] = bootstrap_ci(y_true, y_pred, _balanced_accuracy, n_boot, seed,
                                                  method=bootstrap_method)
        op.update(threshold=threshold, positive_class=class_names[pos],
                  method=eval_cfg.threshold if isinstance(eval_cfg.threshold, str) else "fixed",
                  chosen_on="val")
        metrics["operating_point"] = op
    return metrics
