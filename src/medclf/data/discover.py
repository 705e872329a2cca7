"""Turn a dataset into a split manifest (path, label, split).

:func:`discover_source` dispatches on the source: a MedMNIST ``.npz`` file or
``medmnist:NAME`` (:mod:`.medmnist`, official splits), a CSV manifest
(:mod:`.manifest_csv`), or a class-per-folder tree (:func:`discover`).

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
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from sklearn.model_selection import train_test_split

from ..errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom", ".nii", ".nii.gz")
IGNORED_NAMES = {"thumbs.db", "desktop.ini", "__macosx"}
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
    """

    frame: pd.DataFrame
    class_names: list[str]
    ignored: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def labels(self, split: str) -> list[int]:
        """Class indices of ``split``, in manifest order."""
        index = {name: i for i, name in enumerate(self.class_names)}
        return [index[label] for label in self.frame.loc[self.frame.split == split, "label"]]

    def counts(self) -> dict[str, dict[str, int]]:
        """``{split: {class: count}}`` for the summary."""
        table = self.frame.groupby(["split", "label"]).size()
        return {split: {name: int(table.get((split, name), 0)) for name in self.class_names}
                for split in SPLITS if split in set(self.frame.split)}


def is_hidden(path: Path) -> bool:
    return path.name.startswith(".") or path.name.lower() in IGNORED_NAMES


def is_image_file(path: Path) -> bool:
    """An image or volume by extension, or an extension-less DICOM file (``DICM`` magic)."""
    from .dicom import looks_like_dicom
    name = path.name.lower()
    if name.endswith(IMAGE_EXTENSIONS):
        return True
    return "." not in name and looks_like_dicom(path)


def _is_series_folder(folder: Path) -> bool:
    from .dicom import series_files
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


def discover_source(source: str | os.PathLike, data_config, seed: int = 42) -> Manifest:
    """The split manifest of any supported source (see the module docstring).

    Args:
        source: folder, ``.csv`` manifest, ``.npz`` file or ``medmnist:NAME``.
        data_config: the ``data`` config section (fractions, ``medmnist_root``).
        seed: seed of any random split.

    Raises:
        DataError: the source does not exist or cannot be used (the message says why).
    """
    from . import manifest_csv, medmnist
    text = str(source)
    if medmnist.is_npz_source(text):
        frame, class_names = medmnist.discover_npz(text, data_config.medmnist_root)
        if "val" not in set(frame.split):
            frame = _carve(frame, "train", "val", data_config.val_fraction, seed)
        return Manifest(_ordered(frame, sort_paths=False), class_names)
    if text.lower().endswith(".csv") and not Path(text).is_dir():
        frame = manifest_csv.read_manifest_csv(text)
        frame = manifest_csv.split_manifest(frame, data_config.val_fraction, data_config.test_fraction, seed)
        class_names = sorted(set(frame.label))
        _check_classes(frame[frame.split == "train"], sorted(set(frame[frame.split == "train"].label)), Path(text))
        if "patient_id" in frame and (frame.patient_id == "").all():
            frame = frame.drop(columns="patient_id")
        return Manifest(_ordered(frame), class_names)
    return discover(source, data_config.val_fraction, data_config.test_fraction, seed)


def _ordered(frame: pd.DataFrame, sort_paths: bool = True) -> pd.DataFrame:
    """Rows ordered by split (train, val, test), then label and path (or kept order)."""
    order = {s: i for i, s in enumerate(SPLITS)}
    frame = frame.assign(_split=frame.split.map(order), _pos=range(len(frame)))
    keys = ["_split", "label", "path"] if sort_paths else ["_split", "_pos"]
    return frame.sort_values(keys, kind="stable").drop(columns=["_split", "_pos"]).reset_index(drop=True)


def discover(root: str | os.PathLike, val_fraction: float = 0.15, test_fraction: float = 0.15,
             seed: int = 42) -> Manifest:
    """Build the split manifest of a class-per-folder tree.

    Args:
        root: dataset folder.
        val_fraction: share of the training images carved out as validation when there is
            no ``val/`` folder (stratified by class, seeded).
        test_fraction: share held out as test when there is no ``test/`` folder.
        seed: seed of the random split.

    Raises:
        DataError: the folder does not exist, a class folder has no images, there are
            fewer than two classes, or the split folders disagree on the classes.
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
        frame = pd.DataFrame(rows, columns=["path", "label", "split"])
        _check_classes(frame[frame.split == "train"], class_names, split_dirs["train"])
        if "test" not in split_dirs:
            frame = _carve(frame, "train", "test", test_fraction, seed)
        if "val" not in split_dirs:
            frame = _carve(frame, "train", "val", val_fraction, seed)
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
        frame = pd.DataFrame(rows, columns=["path", "label", "split"])
        _check_classes(frame, class_names, root)
        frame = _carve(frame, "train", "test", test_fraction, seed)
        frame = _carve(frame, "train", "val", val_fraction / (1 - test_fraction), seed)

    order = {s: i for i, s in enumerate(SPLITS)}
    frame = frame.sort_values(["split", "label", "path"], key=lambda col: col.map(order) if col.name == "split" else col)
    return Manifest(frame.reset_index(drop=True), class_names, ignored)


def _check_classes(frame: pd.DataFrame, class_names: list[str], root: Path) -> None:
    if len(class_names) < 2:
        found = ", ".join(class_names) or "none"
        raise DataError(f"{root}: need at least two class folders with images to train a "
                        f"classifier; found {len(class_names)} ({found})")


def _carve(frame: pd.DataFrame, source: str, target: str, fraction: float, seed: int) -> pd.DataFrame:
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
