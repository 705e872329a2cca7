"""The split manifest (path, label, split) that every data source produces, and the
stratified split helpers they share."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, train_test_split

from ...errors import DataError

SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                 "validation": "val", "test": "test", "testing": "test"}
SPLITS = ("train", "val", "test")


@dataclass
class Manifest:
    """The exact list of images a run uses.

    Attributes:
        frame: DataFrame with columns ``path`` (str), ``label`` (class name), ``split``
            (train / val / test), one row per image, in a stable order.
        class_names: sorted class names; the class index used everywhere is the position
            in this list.
        ignored: paths that were skipped because of their name or extension.
        task: ``classification`` (``label`` is the class name), ``multilabel`` (one 0/1
            column per finding, named as in ``class_names``; ``label`` joins the positive
            findings with ``|``) or ``regression`` (the target column named
            ``class_names[0]``, a number; ``label`` is its text). See
            :mod:`medclf.data.sources.table`.
        carved: the splits medclf carved at random out of the training images (not given
            by the data), which may be regrouped: copies of training images found by the
            inspection go back to training (:mod:`medclf.data.regroup`).
    """

    frame: pd.DataFrame
    class_names: list[str]
    ignored: list[str] = field(default_factory=list)
    task: str = "classification"
    carved: tuple[str, ...] = ()

    def targets(self, split: str) -> np.ndarray:
        """Training targets of ``split``: int64 ``(N,)`` class indices (classification),
        float32 ``(N, K)`` 0/1 findings (multilabel) or float32 ``(N,)`` numbers (regression)."""
        rows = self.frame[self.frame.split == split]
        if self.task == "multilabel":
            return rows[self.class_names].to_numpy(dtype=np.float32).reshape(len(rows), -1).copy()
        if self.task == "regression":
            return rows[self.class_names[0]].to_numpy(dtype=np.float32).copy()
        return np.asarray(self.labels(split), dtype=np.int64)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def labels(self, split: str) -> list[int]:
        """Class indices of ``split``, in manifest order."""
        index = {name: i for i, name in enumerate(self.class_names)}
        return [index[label] for label in self.frame.loc[self.frame.split == split, "label"]]

    def counts(self) -> dict[str, dict[str, int]]:
        """``{split: {class: count}}`` for the summary (multilabel: positives per finding;
        regression: ``{target: images}``)."""
        if self.task != "classification":
            present = [s for s in SPLITS if s in set(self.frame.split)]
            rows = {s: self.frame[self.frame.split == s] for s in present}
            if self.task == "multilabel":
                return {s: {n: int(rows[s][n].astype(float).sum()) for n in self.class_names} for s in present}
            return {s: {self.class_names[0]: len(rows[s])} for s in present}
        table = self.frame.groupby(["split", "label"]).size()
        return {split: {name: int(table.get((split, name), 0)) for name in self.class_names}
                for split in SPLITS if split in set(self.frame.split)}


def ordered(frame: pd.DataFrame, sort_paths: bool = True) -> pd.DataFrame:
    """Rows ordered by split (train, val, test), then label and path (or kept order)."""
    order = {s: i for i, s in enumerate(SPLITS)}
    frame = frame.assign(_split=frame.split.map(order), _pos=range(len(frame)))
    keys = ["_split", "label", "path"] if sort_paths else ["_split", "_pos"]
    return frame.sort_values(keys, kind="stable").drop(columns=["_split", "_pos"]).reset_index(drop=True)


def check_classes(frame: pd.DataFrame, class_names: list[str], root: Path) -> None:
    if len(class_names) < 2:
        found = ", ".join(class_names) or "none"
        raise DataError(f"{root}: need at least two class folders with images to train a "
                        f"classifier; found {len(class_names)} ({found})")


def carve(frame: pd.DataFrame, source: str, target: str, fraction: float, seed: int) -> pd.DataFrame:
    """Move a stratified ``fraction`` of the ``source`` rows to split ``target``."""
    pool = frame[frame.split == source]
    counts = pool.label.value_counts()
    too_small = counts[counts < 2]
    if len(too_small):
        raise DataError(f"cannot carve a stratified {target} split: class(es) "
                        f"{', '.join(too_small.index)} have fewer than 2 training images")
    n_target = max(int(round(fraction * len(pool))), len(counts))
    if n_target >= len(pool) - len(counts):
        raise DataError(f"too few images ({len(pool)}) to carve a {target} split of {fraction:.0%}")
    _, picked = train_test_split(pool.index, test_size=n_target, stratify=pool.label,
                                 random_state=seed)
    frame = frame.copy()
    frame.loc[picked, "split"] = target
    return frame


def carve_groups(frame: pd.DataFrame, target: str, fraction: float, seed: int) -> pd.DataFrame:
    """Move about ``fraction`` of the train rows, whole patients at a time and stratified by
    label, to ``target`` (one fold of scikit-learn's ``StratifiedGroupKFold``)."""
    pool = frame[frame.split == "train"]
    n_groups = pool.patient_id.nunique()
    n_splits = int(round(1 / fraction))
    if n_groups < max(n_splits, 3):
        raise DataError(f"too few patients ({n_groups}) to carve a {target} split of {fraction:.0%} "
                        "without splitting a patient")
    folds = StratifiedGroupKFold(n_splits=max(2, n_splits), shuffle=True, random_state=seed)
    _, picked = next(folds.split(np.zeros(len(pool)), pool.label, groups=pool.patient_id))
    frame = frame.copy()
    frame.loc[pool.index[picked], "split"] = target
    return frame


def carve_split(frame: pd.DataFrame, target: str, fraction: float, seed: int) -> pd.DataFrame:
    """A stratified ``fraction`` of the train rows to ``target``: whole patients at a time
    (:func:`carve_groups`) when every row has a ``patient_id``, else image by image (:func:`carve`)."""
    if "patient_id" in frame.columns and (frame.patient_id != "").all():
        return carve_groups(frame, target, fraction, seed)
    return carve(frame, "train", target, fraction, seed)
