"""Class-per-folder trees as a split manifest (path, label, split).

Two layouts are recognised:

* ``root/{train,test[,val]}/<class>/...``: the given splits are used; when there is no
  ``val/`` folder a stratified validation split is carved out of ``train/``; when there is
  no ``test/`` folder, a stratified test split is carved out too.
* ``root/<class>/...``: a flat tree, split stratified into train/val/test.

Class folders hold 2D images (PNG, JPEG, BMP, TIFF), DICOM files (single or multi-frame),
NIfTI volumes (``.nii``, ``.nii.gz``), or DICOM series folders: a sub-folder of a class
folder that contains DICOM files is one volume (one manifest row whose path is the
folder). Other sub-folders are searched recursively. Hidden files and folders
(``.DS_Store``, ``._x.png``), ``Thumbs.db`` and ``desktop.ini`` are ignored, and so are
files that are neither of these formats.

With ``data.patient_id_pattern`` (a regular expression on the file name) every image gets
a ``patient_id`` and the splits carved here keep each patient's images together
(:func:`~.manifest.carve_split`), as a CSV manifest's ``patient_id`` column does.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import pandas as pd

from ...errors import DataError
from ..formats.dicom import looks_like_dicom, series_files
from .manifest import SPLIT_ALIASES, SPLITS, Manifest, carve_split, check_classes

log = logging.getLogger("medclf")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom", ".nii", ".nii.gz")
IGNORED_NAMES = {"thumbs.db", "desktop.ini", "__macosx"}


def is_hidden(path: Path) -> bool:
    return path.name.startswith(".") or path.name.lower() in IGNORED_NAMES


def is_image_file(path: Path) -> bool:
    """An image or volume by extension, or an extension-less DICOM file (``DICM`` magic)."""
    name = path.name.lower()
    if name.endswith(IMAGE_EXTENSIONS):
        return True
    return "." not in name and looks_like_dicom(path)


def _is_series_folder(folder: Path) -> bool:
    try:
        return bool(series_files(folder))
    except OSError:
        return False


def ignore_reason(path: str | os.PathLike) -> str:
    """Why discovery left ``path`` out (for the run's ``ignored_files.csv``)."""
    path = Path(path)
    if is_hidden(path):
        return "hidden or system file"
    if path.is_symlink() and not path.exists():
        return "symbolic link to nothing (broken or a loop)"
    if path.is_dir():
        return "folder (linked folders are not followed)"
    return f"extension {path.suffix or '(none)'} is not an image extension ({', '.join(IMAGE_EXTENSIONS)})"


def _list_files(folder: Path, ignored: list[str]) -> list[str]:
    """Image files and DICOM series folders under ``folder`` (recursive), sorted; everything
    else goes to ``ignored``.

    Hidden files and folders are left out, linked folders are not followed (no loops), a
    sub-folder holding DICOM files is one series (listed, not descended into), and a
    folder named like an image (``x.png/``) is searched like any other folder.
    """
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        for d in list(dirnames):
            if is_hidden(Path(d)) or os.path.islink(os.path.join(dirpath, d)):
                ignored.append(str(Path(dirpath) / d))
        dirnames[:] = sorted(d for d in dirnames if not is_hidden(Path(d))
                             and not os.path.islink(os.path.join(dirpath, d)))
        series = [d for d in dirnames if _is_series_folder(Path(dirpath) / d)]
        found += [os.path.abspath(Path(dirpath) / d) for d in series]
        dirnames[:] = [d for d in dirnames if d not in series]
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if is_hidden(path):
                ignored.append(str(path))
                continue
            if is_image_file(path):
                found.append(os.path.abspath(path))
            else:
                ignored.append(str(path))
    return found


def _class_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not is_hidden(p))


def patient_ids(paths, pattern: str) -> list[str]:
    """The patient id of each path: the first group of ``pattern`` (Python ``re``, searched
    in the file or series folder's name), or its whole match when it has no group.

    Raises:
        DataError: the pattern matches no (or an empty) id in some names; the message gives
            their number and the first of them.
    """
    regex = re.compile(pattern)
    ids, unmatched = [], []
    for path in paths:
        match = regex.search(Path(path).name)
        found = (match.group(1) if regex.groups else match.group(0)) if match else None
        if not found:
            unmatched.append(str(path))
        ids.append(found or "")
    if unmatched:
        raise DataError(f"data.patient_id_pattern {pattern!r} finds no patient id in the name of "
                        f"{len(unmatched)} file(s), e.g. {unmatched[0]}; change the pattern so that it "
                        "matches every file name (its first group is the id)")
    return ids


def _warn_shared_patients(frame: pd.DataFrame) -> None:
    """Log the patient ids that recur across given split folders (the same patients, or a
    numbering that restarts per folder: only the dataset's documentation can tell)."""
    train = set(frame.patient_id[frame.split == "train"])
    for split in ("val", "test"):
        shared = sorted(train & set(frame.patient_id[frame.split == split]))
        if shared:
            log.warning("%d patient id(s) of the train/ folder also name images of the %s/ folder (e.g. %s): "
                        "if they are the same patients, the %s split is not independent of training",
                        len(shared), split, shared[0], split)


def discover(root: str | os.PathLike, val_fraction: float = 0.15, test_fraction: float = 0.15,
             seed: int = 42, patient_id_pattern: str | None = None) -> Manifest:
    """Build the split manifest of a class-per-folder tree.

    Args:
        root: dataset folder.
        val_fraction: share of the training images carved out as validation when there is
            no ``val/`` folder (stratified by class, seeded).
        test_fraction: share held out as test when there is no ``test/`` folder.
        seed: seed of the random split.
        patient_id_pattern: ``data.patient_id_pattern`` (:func:`patient_ids`): the frame gets a
            ``patient_id`` column and the carved splits keep each patient's images together.

    Raises:
        DataError: the folder does not exist, a class folder has no images, there are
            fewer than two classes, the split folders disagree on the classes, the pattern
            misses a file name, or there are too few patients to carve a split.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"dataset folder not found: {root}")
    if not root.is_dir():
        raise DataError(f"{root} is not a folder; expected a folder with one sub-folder per class")
    ignored: list[str] = []
    split_dirs = {SPLIT_ALIASES[p.name.lower()]: p for p in _class_folders(root)
                  if p.name.lower() in SPLIT_ALIASES}

    if "train" in split_dirs:
        rows = []
        class_sets = {}
        for split, folder in split_dirs.items():
            classes = _class_folders(folder)
            class_sets[split] = {c.name for c in classes}
            for cls in classes:
                files = _list_files(cls, ignored)
                if not files and split == "train":
                    raise DataError(f"class folder {cls} contains no image files "
                                    f"(looked for {', '.join(IMAGE_EXTENSIONS)})")
                rows += [(f, cls.name, split) for f in files]
        class_names = sorted(class_sets["train"])
        for split, names in class_sets.items():
            extra = names - set(class_names)
            if extra:
                raise DataError(f"{split_dirs[split]} has class folders that train/ lacks: "
                                f"{', '.join(sorted(extra))}")
        frame = _with_patients(pd.DataFrame(rows, columns=["path", "label", "split"]), patient_id_pattern)
        check_classes(frame[frame.split == "train"], class_names, split_dirs["train"])
        if patient_id_pattern:
            _warn_shared_patients(frame)
        carved = tuple(s for s in ("val", "test") if s not in split_dirs)
        if "test" not in split_dirs:
            frame = carve_split(frame, "test", test_fraction, seed)
        if "val" not in split_dirs:
            frame = carve_split(frame, "val", val_fraction, seed)
    else:
        classes = _class_folders(root)
        rows = []
        for cls in classes:
            files = _list_files(cls, ignored)
            if not files:
                raise DataError(f"class folder {cls} contains no image files "
                                f"(looked for {', '.join(IMAGE_EXTENSIONS)})")
            rows += [(f, cls.name, "train") for f in files]
        class_names = [c.name for c in classes]
        frame = _with_patients(pd.DataFrame(rows, columns=["path", "label", "split"]), patient_id_pattern)
        check_classes(frame, class_names, root)
        frame = carve_split(frame, "test", test_fraction, seed)
        frame = carve_split(frame, "val", val_fraction / (1 - test_fraction), seed)
        carved = ("val", "test")

    order = {s: i for i, s in enumerate(SPLITS)}
    frame = frame.sort_values(["split", "label", "path"], key=lambda col: col.map(order) if col.name == "split" else col)
    return Manifest(frame.reset_index(drop=True), class_names, ignored, carved=carved)


def _with_patients(frame: pd.DataFrame, pattern: str | None) -> pd.DataFrame:
    if pattern:
        frame["patient_id"] = patient_ids(frame.path, pattern)
    return frame


def discover_labelled(root: str | os.PathLike) -> pd.DataFrame:
    """Labelled images of a folder for evaluation: its ``test/`` split if it has split
    folders, else every class folder. Returns a DataFrame with ``path`` and ``label``.

    Raises:
        DataError: the folder does not exist or holds no images.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset folder not found: {root}")
    subdirs = {p.name.lower(): p for p in _class_folders(root)}
    folder = subdirs.get("test", subdirs.get("testing", root))
    ignored: list[str] = []
    rows = [(f, cls.name) for cls in _class_folders(folder) for f in _list_files(cls, ignored)]
    if not rows:
        raise DataError(f"{folder} holds no image files in class folders")
    return pd.DataFrame(rows, columns=["path", "label"])
