"""Cross-validation folds of a run's training pool: stratified by class, grouped by patient
and by duplicate group, so that no patient and no copy of an image validates a model that
was trained on it (the 5-fold protocol of nnU-Net, Isensee et al. 2021)."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from sklearn.model_selection import StratifiedGroupKFold

from ..errors import DataError


def duplicate_pairs(inspection: dict) -> list[tuple[str, str]]:
    """Path pairs that the inspection found to be exact or near copies of each other.

    Args:
        inspection: the dict of :func:`medclf.inspect.inspect_manifest` (``inspection.json``),
            read keys ``exact_duplicates`` (groups of ``files``) and ``near_duplicates`` (pairs).
    """
    pairs = []
    for group in inspection.get("exact_duplicates", []):
        files = [f["path"] for f in group["files"]]
        pairs += [(files[0], other) for other in files[1:]]
    pairs += [(n["files"][0]["path"], n["files"][1]["path"]) for n in inspection.get("near_duplicates", [])]
    return pairs


def fold_groups(frame: pd.DataFrame, pairs: list[tuple[str, str]] = ()) -> np.ndarray:
    """One group id per row: rows of one patient (``patient_id`` column, when present) and
    rows linked by a duplicate pair share a group (connected components, scipy).

    Args:
        frame: rows with ``path`` (and optionally ``patient_id``).
        pairs: ``(path, path)`` duplicate pairs; paths not in ``frame`` are ignored.

    Returns:
        int ``(len(frame),)`` group ids.
    """
    n = len(frame)
    index = {p: i for i, p in enumerate(frame.path)}
    rows, cols = [], []
    for a, b in pairs:
        if a in index and b in index:
            rows.append(index[a])
            cols.append(index[b])
    if "patient_id" in frame.columns:
        codes = pd.factorize(frame.patient_id.astype(str))[0]
        first = {}
        for i, code in enumerate(codes):
            rows.append(first.setdefault(code, i))
            cols.append(i)
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def assign_folds(frame: pd.DataFrame, labels: np.ndarray, k: int, seed: int,
                 pairs: list[tuple[str, str]] = ()) -> np.ndarray:
    """Fold of every row: ``k`` stratified folds (scikit-learn ``StratifiedGroupKFold``,
    shuffled with ``seed``) whose groups are :func:`fold_groups`.

    Args:
        frame: the pooled training rows (``path``, optional ``patient_id``).
        labels: int ``(N,)`` class index of each row.
        k: number of folds, at least 2.
        seed: shuffling seed.
        pairs: duplicate path pairs (:func:`duplicate_pairs`).

    Returns:
        int ``(N,)`` fold index in ``0..k-1`` of each row.

    Raises:
        DataError: fewer groups (patients / distinct images) than folds.
    """
    groups = fold_groups(frame, pairs)
    if len(np.unique(groups)) < k:
        raise DataError(f"train.folds={k}: the training pool has only {len(np.unique(groups))} distinct "
                        "patients/images; lower train.folds (0 for one train/validation split)")
    folds = np.full(len(frame), -1, dtype=int)
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # a class rarer than k is reported below, not as a warning
        warnings.filterwarnings("ignore", ".*least populated class.*")
        for fold, (_, held) in enumerate(splitter.split(np.zeros(len(frame)), labels, groups)):
            folds[held] = fold
    return folds
