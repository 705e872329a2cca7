"""The one ROC AUC of the project (training logs, evaluation, bootstrap intervals), with
its rule for splits that lack a class."""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy.stats import rankdata


def roc_auc(y_true, probabilities) -> float:
    """ROC AUC: binary AUC of class 1, or the one-vs-rest macro average of several classes;
    NaN when the split lacks a class.

    The absent-class rule: the AUC of a class needs positives and negatives, so a split in
    which any of the ``K`` classes (``K = probabilities.shape[1]``) has no sample, or with
    fewer than two classes, has no AUC: NaN, never an exception. Bootstrap intervals skip
    such resamples (:func:`medclf.evaluation.clinical.bootstrap_ci`) and the training log
    writes NaN for such an epoch.

    Two implementations compute the same quantity, chosen by the input type:

    * numpy arrays (or lists): the Mann-Whitney U statistic in float64, from SciPy's
      ``rankdata`` (average ranks for ties): ``AUC_c = (R_c - n_c (n_c + 1) / 2) / (n_c m_c)``
      with ``R_c`` the rank sum of class ``c``'s ``n_c`` rows in column ``c`` and ``m_c`` the
      other rows (Hanley & McNeil 1982). It equals scikit-learn's ``roc_auc_score`` (binary:
      the score of class 1; several classes: ``multi_class='ovr', average='macro'``; tested)
      at a fraction of its per-call cost, which the 1,000 resamples of a bootstrap interval
      pay;
    * torch tensors (the per-epoch training metrics): torchmetrics' ``MulticlassAUROC``
      (exact, ``thresholds=None``; macro over the ``K`` one-vs-rest AUCs, which for two
      classes is the binary AUC), computed in float32 on the CPU as ``metrics.csv`` has
      always recorded it. It can differ from scikit-learn's value by float32 rounding,
      and where near-equal probabilities rank differently by class 0 and by class 1.

    Args:
        y_true: int ``(N,)`` class indices in ``0..K-1``.
        probabilities: float ``(N, K)`` class probabilities (rows summing to 1).

    Returns:
        the AUC in ``[0, 1]``, or NaN.

    Raises:
        ValueError: ``probabilities`` is not ``(N, K)`` or ``y_true`` not ``(N,)``
            (from scikit-learn / torchmetrics).
    """
    if isinstance(probabilities, torch.Tensor):
        labels = torch.as_tensor(y_true).cpu()
        k = int(probabilities.shape[1])
        if k < 2 or len(torch.unique(labels)) < k:
            return math.nan
        from torchmetrics.classification import MulticlassAUROC  # here: the commands that only predict skip its import
        auroc = MulticlassAUROC(num_classes=k, average="macro", thresholds=None)
        return float(auroc(probabilities.detach().cpu(), labels))
    y_true = np.asarray(y_true)
    probabilities = np.asarray(probabilities)
    k = probabilities.shape[1]
    if k < 2 or len(np.unique(y_true)) < k:
        return math.nan
    columns = [1] if k == 2 else range(k)
    ranks = rankdata(probabilities[:, list(columns)], axis=0)
    aucs = []
    for j, c in enumerate(columns):
        positive = y_true == c
        n_pos = int(positive.sum())
        n_neg = len(y_true) - n_pos
        aucs.append((ranks[positive, j].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    return float(np.mean(aucs))
