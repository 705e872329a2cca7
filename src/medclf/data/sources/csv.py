"""CSV manifests: one row per image with ``path``, ``label`` and optional ``split``, ``patient_id``.

Relative paths are resolved against the CSV file's folder. Rows without a split (no
``split`` column, or an empty cell) are split by the usual fractions; when a
``patient_id`` column is present the split is group-stratified (scikit-learn
``StratifiedGroupKFold``), so all images of one patient go to the same split and a patient
never appears in both training and test data.
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from ...errors import DataError
from ..formats.npz import is_npz_item
from .manifest import SPLIT_ALIASES, carve_split

REQUIRED = ("path", "label")


def read_manifest_csv(csv_path: str | os.PathLike) -> pd.DataFrame:
    """Read and check a manifest CSV.

    Returns:
        DataFrame with ``path`` (absolute), ``label`` (str), ``split`` (train/val/test or
        empty) and ``patient_id`` (str or empty) columns.

    Raises:
        DataError: missing file or columns, unknown split names, empty labels, or rows whose
            file does not exist (all listed with their row numbers).
    """
    csv_path = Path(csv_path)
    frame = read_cells(csv_path, "manifest")
    frame.columns = [c.strip().lower() for c in frame.columns]
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise DataError(f"{csv_path}: missing column(s) {', '.join(missing)}; a manifest needs "
                        f"path,label and optionally split,patient_id (has: {', '.join(frame.columns)}); other "
                        "column names: set data.path_column, data.label_columns, data.group_column, data.split_column")
    if frame.empty:
        raise DataError(f"{csv_path}: the manifest has no rows")
    base = csv_path.resolve().parent
    frame["path"] = [str(p if os.path.isabs(p) else base / p) for p in frame.path.str.strip()]
    frame["label"] = frame.label.str.strip()
    empty = frame.index[frame.label == ""].tolist()
    if empty:
        raise DataError(f"{csv_path}: empty label in row(s) {', '.join(str(i + 2) for i in empty[:20])}")
    absent = [(i + 2, p) for i, p in zip(frame.index, frame.path) if not os.path.exists(_file_of(p))]
    if absent:
        listed = "\n".join(f"  row {row}: {path}" for row, path in absent[:20])
        more = f"\n  ... and {len(absent) - 20} more" if len(absent) > 20 else ""
        raise DataError(f"{csv_path}: {len(absent)} row(s) point to files that do not exist:\n{listed}{more}")
    if "split" in frame.columns:
        raw = frame.split.str.strip().str.lower()
        unknown = sorted(set(raw) - set(SPLIT_ALIASES) - {""})
        if unknown:
            raise DataError(f"{csv_path}: unknown split value(s) {', '.join(unknown)}; use train, val or test")
        frame["split"] = raw.map(lambda v: SPLIT_ALIASES.get(v, ""))
    else:
        frame["split"] = ""
    frame["patient_id"] = frame.patient_id.str.strip() if "patient_id" in frame.columns else ""
    return frame[["path", "label", "split", "patient_id"]]


def _file_of(path: str) -> str:
    """The file behind a path (an npz item reference ``file.npz#split/i`` names ``file.npz``)."""
    return path.rsplit("#", 1)[0] if is_npz_item(path) else path


def split_manifest(frame: pd.DataFrame, val_fraction: float, test_fraction: float, seed: int) -> pd.DataFrame:
    """Assign a split to rows without one: test, then val, carved from the unassigned rows.

    With patient ids, splits are group-stratified (no patient in two splits; given splits
    are checked for that too). Returns the frame with every ``split`` filled.

    Raises:
        DataError: a patient appears in more than one given split, or too few rows/patients.
    """
    frame = frame.copy()
    grouped = (frame.patient_id != "").all()
    if grouped:
        given = frame[frame.split != ""]
        spans = given.groupby("patient_id").split.nunique()
        leaking = spans[spans > 1].index.tolist()
        if leaking:
            raise DataError(f"patient(s) {', '.join(map(str, leaking[:10]))} appear in more than one split; "
                            "all images of a patient must be in the same split")
        fixed = dict(zip(given.patient_id, given.split))
        frame.loc[frame.split == "", "split"] = [fixed.get(p, "") for p in frame.patient_id[frame.split == ""]]
    given_splits = set(frame.split) - {""}
    pending = "train"
    frame.loc[frame.split == "", "split"] = pending
    if "test" not in given_splits:
        frame = carve_split(frame, "test", test_fraction, seed)
    if "val" not in given_splits:
        fraction = val_fraction if "test" in given_splits else val_fraction / (1 - test_fraction)
        frame = carve_split(frame, "val", fraction, seed)
    return frame


def read_cells(csv_path: Path, what: str) -> pd.DataFrame:
    """Every cell of a CSV file as a string (empty cells stay ``""``, never NaN).

    Raises:
        DataError: the file is missing (``"<what> not found"``) or is not a readable CSV.
    """
    if not csv_path.is_file():
        raise DataError(f"{what} not found: {csv_path}")
    try:
        return pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
        raise DataError(f"{csv_path}: not a readable CSV file ({err})") from None
