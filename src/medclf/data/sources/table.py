"""Any CSV as a dataset: named path, label, group and split columns, and the task the labels imply.

``data.path_column`` names the column of image paths, ``data.label_columns`` the label
column(s), ``data.group_column`` the patient (all images of a group go to one split),
``data.split_column`` the given splits. The task (``data.task``) is what the label columns
hold:

- ``classification``: one column of class names (as a ``path,label`` manifest);
- ``multilabel``: several 0/1 columns, one per finding (ODIR's N, D, G, ...; CheXpert's 14);
- ``regression``: one numeric column (bone age in months, ejection fraction).

Unset, it is inferred (several columns: multilabel; one column whose every value is a
number with more than :data:`REGRESSION_MIN_DISTINCT` distinct values: regression; else
classification) and the choice is logged. Every bad value (a finding that is not 0/1, a
target that is not a number, an empty cell, a missing file) is listed with its CSV row
number in one :class:`~medclf.errors.DataError`.

Rows without a split are split as by :func:`medclf.data.sources.csv.split_manifest`,
stratified by a coarse key: the rarest positive finding of the row (multilabel) or the
target's quintile (regression), so every split sees every finding and the whole range.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from ...errors import DataError
from .csv import _file_of, read_cells, split_manifest
from .manifest import SPLIT_ALIASES, Manifest, ordered

log = logging.getLogger("medclf")

TASKS = ("classification", "multilabel", "regression")
REGRESSION_MIN_DISTINCT = 20  # one numeric column with more distinct values than this is a target
MAX_LISTED = 20


def wants_table(data_config) -> bool:
    """True when the ``data`` settings name CSV columns or a task beyond classification
    (the plain ``path,label[,split,patient_id]`` manifest is read as before otherwise)."""
    return any(getattr(data_config, key, None) for key in ("path_column", "label_columns", "group_column",
                                                            "split_column")) \
        or getattr(data_config, "task", None) in ("multilabel", "regression")


def _column(frame: pd.DataFrame, name: str) -> str | None:
    """The frame's column called ``name`` (exact, else ignoring case and surrounding spaces)."""
    if name in frame.columns:
        return name
    folded = {str(c).strip().lower(): c for c in frame.columns}
    return folded.get(name.strip().lower())


def _listed(problems: list[str]) -> str:
    more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    return "\n".join(f"  {p}" for p in problems[:MAX_LISTED]) + more


def _is_number(text: str) -> bool:
    try:
        return np.isfinite(float(text))
    except ValueError:
        return False


def infer_task(values: pd.DataFrame) -> tuple[str, str]:
    """The task that label columns ``values`` (text cells) imply, with the reason.

    Returns:
        ``(task, reason)``: several columns -> multilabel; one column of numbers with more
        than :data:`REGRESSION_MIN_DISTINCT` distinct values -> regression; else classification.
    """
    if values.shape[1] > 1:
        return "multilabel", f"{values.shape[1]} label columns (one 0/1 finding each)"
    column = values.iloc[:, 0]
    filled = column[column != ""]
    distinct = filled.nunique()
    if len(filled) and filled.map(_is_number).all() and distinct > REGRESSION_MIN_DISTINCT:
        return "regression", f"column {column.name!r} holds numbers with {distinct} distinct values"
    return "classification", f"column {column.name!r} holds {distinct} distinct value(s), read as class names"


def read_table(csv_path: str | os.PathLike, data_config, seed: int = 42) -> Manifest:
    """Read any CSV into a split :class:`~medclf.data.sources.manifest.Manifest`.

    Args:
        csv_path: the CSV file; relative image paths are resolved against its folder.
        data_config: the ``data`` config section (``path_column``, ``label_columns``,
            ``group_column``, ``split_column``, ``task``, fractions).
        seed: seed of the split of rows without one.

    Returns:
        the manifest with ``task`` set; its frame has ``path``, ``label``, ``split``,
        ``patient_id`` (when grouped) and, for multilabel/regression, the label columns
        (0/1 ints per finding, or the float target) under their own names.

    Raises:
        DataError: the file is missing or unreadable, a named column is missing (lists the
            columns there are), or bad values (lists every row: not 0/1, not a number,
            empty cells, missing files, unknown split names, a patient in two given
            splits), or a finding without positive or without negative training images.
    """
    csv_path = Path(csv_path)
    raw = read_cells(csv_path, "CSV")
    if raw.empty:
        raise DataError(f"{csv_path}: the CSV has no rows")
    wanted = {"data.path_column": data_config.path_column or "path"}
    labels_given = data_config.label_columns or ["label"]
    for i, name in enumerate(labels_given):
        wanted[f"data.label_columns[{i}]"] = name
    if data_config.group_column:
        wanted["data.group_column"] = data_config.group_column
    if data_config.split_column:
        wanted["data.split_column"] = data_config.split_column
    found = {key: _column(raw, name) for key, name in wanted.items()}
    missing = [f"{wanted[key]!r} ({key})" for key, col in found.items() if col is None]
    if missing:
        raise DataError(f"{csv_path}: missing column(s) {', '.join(missing)}; the CSV has: "
                        f"{', '.join(map(str, raw.columns))}. Name the columns with data.path_column, "
                        "data.label_columns (e.g. --set data.label_columns=[N,D,G]), data.group_column "
                        "and data.split_column.")
    path_col = found["data.path_column"]
    label_cols = [found[f"data.label_columns[{i}]"] for i in range(len(labels_given))]
    if len(set(label_cols)) != len(label_cols):
        raise DataError(f"data.label_columns names a column twice: {labels_given}")
    group_col = found.get("data.group_column") or (None if data_config.group_column else _column(raw, "patient_id"))
    split_col = found.get("data.split_column") or (None if data_config.split_column else _column(raw, "split"))
    cells = raw[label_cols].apply(lambda c: c.str.strip())
    task = data_config.task
    if task is None:
        task, reason = infer_task(cells)
        log.info("data.task inferred: %s (%s); set data.task to choose", task, reason)
    problems = _check_values(raw, path_col, cells, task, group_col)
    base = csv_path.resolve().parent
    paths = [str(p if os.path.isabs(p) else base / p) for p in raw[path_col].str.strip()]
    problems += [f"row {i + 2}: file {p} does not exist" for i, p in enumerate(paths)
                 if raw[path_col].iloc[i].strip() and not os.path.exists(_file_of(p))]
    split = pd.Series([""] * len(raw))
    if split_col is not None:
        text = raw[split_col].str.strip().str.lower()
        problems += [f"row {i + 2}: column {split_col!r}: unknown split {v!r} (use train, val or test)"
                     for i, v in enumerate(text) if v and v not in SPLIT_ALIASES]
        split = text.map(lambda v: SPLIT_ALIASES.get(v, ""))
    if problems:
        problems.sort(key=lambda p: int(p.split(":")[0].split()[1]))
        raise DataError(f"{csv_path}: {len(problems)} bad value(s) for data.task={task}:\n{_listed(problems)}")
    frame = pd.DataFrame({"path": paths, "split": split.to_numpy(),
                          "patient_id": raw[group_col].str.strip().to_numpy() if group_col else ""})
    if task == "classification":
        class_names = sorted(set(cells.iloc[:, 0]))
        frame["label"] = cells.iloc[:, 0].to_numpy()
        strata = frame.label
    elif task == "multilabel":
        class_names = [str(c) for c in label_cols]
        for name, col in zip(class_names, label_cols):
            frame[name] = cells[col].astype(float).astype(int).to_numpy()
        findings = frame[class_names].to_numpy()
        frame["label"] = ["|".join(n for n, v in zip(class_names, row) if v) or "none" for row in findings]
        rarity = findings.sum(axis=0)
        strata = pd.Series([class_names[min(np.flatnonzero(row), key=lambda j: rarity[j])] if row.any() else "none"
                            for row in findings])
    else:
        class_names = [str(label_cols[0])]
        values = cells.iloc[:, 0].astype(float).to_numpy()
        frame[class_names[0]] = values
        frame["label"] = cells.iloc[:, 0].to_numpy()
        strata = pd.Series(pd.qcut(values, q=min(5, len(np.unique(values))), labels=False,
                                   duplicates="drop")).map(lambda q: f"q{q}")
    carved = tuple(name for name in ("val", "test") if name not in set(frame.split))
    frame = _split(frame, strata, data_config, seed)
    if not group_col:
        frame = frame.drop(columns="patient_id")
    manifest = Manifest(ordered(frame), class_names, task=task, carved=carved)
    _check_training(manifest, csv_path)
    return manifest


def _check_values(raw: pd.DataFrame, path_col: str, cells: pd.DataFrame, task: str, group_col) -> list[str]:
    """One ``"row R: ..."`` line per bad cell (CSV row numbers: the header is row 1)."""
    if task not in TASKS:
        raise DataError(f"data.task: {task!r} is not one of {', '.join(TASKS)}")
    problems = [f"row {i + 2}: column {path_col!r} is empty" for i, v in enumerate(raw[path_col]) if not v.strip()]
    if group_col:
        problems += [f"row {i + 2}: column {group_col!r} is empty" for i, v in enumerate(raw[group_col])
                     if not v.strip()]
    if task in ("classification", "regression") and cells.shape[1] != 1:
        raise DataError(f"data.task={task} needs one label column; data.label_columns names "
                        f"{cells.shape[1]}: {', '.join(map(str, cells.columns))}")
    for col in cells.columns:
        for i, value in enumerate(cells[col]):
            if value == "":
                problems.append(f"row {i + 2}: column {col!r} is empty")
            elif task == "multilabel" and value not in ("0", "1", "0.0", "1.0"):
                problems.append(f"row {i + 2}: column {col!r} is {value!r}, not 0 or 1 (a multilabel finding)")
            elif task == "regression" and not _is_number(value):
                problems.append(f"row {i + 2}: column {col!r} is {value!r}, not a number (a regression target)")
    return problems


def _split(frame: pd.DataFrame, strata: pd.Series, data_config, seed: int) -> pd.DataFrame:
    """Fill the empty splits, stratified by ``strata`` (the label column is restored after)."""
    labels = frame.label.copy()
    work = frame.assign(label=strata.to_numpy())
    grouped = (work.patient_id != "").all() if "patient_id" in work else False
    if not grouped:
        work["patient_id"] = ""
    work = split_manifest(work, data_config.val_fraction, data_config.test_fraction, seed)
    return work.assign(label=labels.loc[work.index].to_numpy())


def _check_training(manifest: Manifest, csv_path: Path) -> None:
    """A finding needs positive and negative training images; a target needs two values."""
    train = manifest.frame[manifest.frame.split == "train"]
    if manifest.task == "multilabel":
        positives = train[manifest.class_names].sum()
        bad = [f"{n} ({int(positives[n])} of {len(train)} positive)" for n in manifest.class_names
               if positives[n] == 0 or positives[n] == len(train)]
        if bad:
            raise DataError(f"{csv_path}: finding(s) without both positive and negative training images: "
                            f"{', '.join(bad)}")
    elif manifest.task == "regression":
        if train[manifest.class_names[0]].nunique() < 2:
            raise DataError(f"{csv_path}: the regression target {manifest.class_names[0]!r} has fewer than "
                            "two distinct training values")
    elif len(set(train.label)) < 2:
        raise DataError(f"{csv_path}: need at least two classes in the training split to train a classifier; "
                        f"found {sorted(set(train.label))}")
