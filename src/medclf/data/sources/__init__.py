"""Turn a dataset source into a split manifest (path, label, split).

:func:`discover_source` dispatches on the source: a MedMNIST ``.npz`` file or
``medmnist:NAME`` (:mod:`.medmnist`, official splits), a CSV manifest (:mod:`.csv`), or
a class-per-folder tree (:mod:`.folder`).
"""
from __future__ import annotations

import os
from pathlib import Path

from . import csv, folder, medmnist, table
from .folder import discover_labelled, ignore_reason
from .manifest import SPLITS, Manifest, carve, check_classes, ordered

__all__ = ["Manifest", "SPLITS", "carve", "discover_source", "discover_labelled", "ignore_reason"]


def discover_source(source: str | os.PathLike, data_config, seed: int = 42) -> Manifest:
    """The split manifest of any supported source (see the module docstring).

    Args:
        source: folder, ``.csv`` manifest, ``.npz`` file or ``medmnist:NAME``.
        data_config: the ``data`` config section (fractions, ``medmnist_root``).
        seed: seed of any random split.

    Raises:
        DataError: the source does not exist or cannot be used (the message says why).
    """
    text = str(source)
    if medmnist.is_npz_source(text):
        frame, class_names = medmnist.discover_npz(text, data_config.medmnist_root)
        carved = () if "val" in set(frame.split) else ("val",)
        if carved:
            frame = carve(frame, "train", "val", data_config.val_fraction, seed)
        return Manifest(ordered(frame, sort_paths=False), class_names, carved=carved)
    if text.lower().endswith(".csv") and not Path(text).is_dir() and table.wants_table(data_config):
        return table.read_table(text, data_config, seed)  # named columns, multilabel, regression
    if text.lower().endswith(".csv") and not Path(text).is_dir():
        frame = csv.read_manifest_csv(text)
        carved = tuple(split for split in ("val", "test") if split not in set(frame.split))
        frame = csv.split_manifest(frame, data_config.val_fraction, data_config.test_fraction, seed)
        class_names = sorted(set(frame.label))
        check_classes(frame[frame.split == "train"], sorted(set(frame[frame.split == "train"].label)), Path(text))
        if "patient_id" in frame and (frame.patient_id == "").all():
            frame = frame.drop(columns="patient_id")
        return Manifest(ordered(frame), class_names, carved=carved)
    return folder.discover(source, data_config.val_fraction, data_config.test_fraction, seed,
                           data_config.patient_id_pattern)
