"""MedMNIST ``.npz`` files (Yang et al., MedMNIST v2, Scientific Data 2023), 2D and 3D, any size.

An npz holds ``{train,val,test}_images`` (``(N, H, W)``, ``(N, H, W, 3)`` or
``(N, D, H, W)`` uint8) and ``{train,val,test}_labels`` (``(N, 1)`` class indices). Its
official splits are used as given. Each image becomes one manifest row whose path is
``/abs/file.npz#<split>/<index>``, so the rest of the pipeline (preprocessing, cache,
split.csv, evaluation) treats it like a file.

``medmnist:NAME`` (e.g. ``medmnist:pneumoniamnist``, ``medmnist:adrenalmnist3d_64``)
resolves to ``NAME.npz`` in ``data.medmnist_root`` (else ``$MEDMNIST_ROOT``, else
``~/.medmnist``); when missing, it is downloaded through the ``medmnist`` package if that
package is installed and the network is reachable.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ...errors import DataError
from ..formats.npz import item_path, npy_shape

SPLITS = ("train", "val", "test")


def is_npz_source(source) -> bool:
    text = str(source)
    return text.lower().endswith(".npz") or text.startswith("medmnist:")


def resolve(source: str, root: str | None = None) -> Path:
    """The npz file of a source: the path itself, or ``medmnist:NAME`` looked up in the root
    folder (downloaded there through the ``medmnist`` package if possible).

    Raises:
        DataError: the file does not exist and cannot be downloaded (says what to do).
    """
    if not source.startswith("medmnist:"):
        path = Path(source)
        if not path.is_file():
            raise DataError(f"MedMNIST file not found: {path}")
        return path
    name = source.split(":", 1)[1].strip().lower()
    if name.endswith(".npz"):
        name = name[:-4]
    if not re.fullmatch(r"[a-z0-9]+(_\d+)?", name):
        raise DataError(f"{source!r}: expected medmnist:NAME such as medmnist:pneumoniamnist or medmnist:adrenalmnist3d_64")
    folder = Path(root or os.environ.get("MEDMNIST_ROOT") or Path.home() / ".medmnist").expanduser()
    path = folder / f"{name}.npz"
    if path.is_file():
        return path
    flag, _, size = name.partition("_")
    try:
        import medmnist
    except ImportError:
        raise DataError(f"{source}: {path} not found, and the 'medmnist' package is not installed to "
                        f"download it. Put {name}.npz into that folder (or set data.medmnist_root), "
                        f"or pip install medmnist.") from None
    info = getattr(medmnist, "INFO", {}).get(flag)
    if info is None:
        raise DataError(f"{source}: unknown MedMNIST dataset {flag!r}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        dataset_class = getattr(medmnist, info["python_class"])
        kwargs = {"split": "train", "download": True, "root": str(folder)}
        if size:
            kwargs["size"] = int(size)
        dataset_class(**kwargs)
    except Exception as err:  # noqa: BLE001  (network errors of any kind)
        raise DataError(f"{source}: {path} not found and the download failed ({err}). When offline, "
                        f"put {name}.npz into {folder} or set data.medmnist_root.") from None
    if not path.is_file():
        raise DataError(f"{source}: the medmnist package did not create {path}")
    return path


def class_names_for(path: Path, num_classes: int) -> list[str]:
    """Label names from the ``medmnist`` package's INFO when available, else ``'0'..'K-1'``."""
    try:
        import medmnist
        flag = path.name[:-4].split("_")[0].lower()
        labels = medmnist.INFO[flag]["label"]
        names = [str(labels[str(i)]) for i in range(num_classes)]
        if len(set(names)) == num_classes:
            return names
    except Exception:  # noqa: BLE001
        pass
    return [str(i) for i in range(num_classes)]


def discover_npz(source: str, root: str | None = None) -> tuple[pd.DataFrame, list[str]]:
    """Manifest rows (``path, label, split``) of a MedMNIST npz, using its official splits.

    Returns:
        ``(frame, class_names)``; a missing ``val`` split gives a frame without val rows
        (the caller carves one out of train).

    Raises:
        DataError: missing file, missing ``train``/``test`` keys, labels that do not match
            the images, or multi-label targets.
    """
    path = resolve(source, root)
    try:
        with np.load(path, allow_pickle=False) as data:
            keys = set(data.files)
            labels = {s: np.asarray(data[f"{s}_labels"]) for s in SPLITS if f"{s}_labels" in keys}
            shapes = {}
            for s in SPLITS:
                if f"{s}_images" in keys:
                    header = npy_shape(data, f"{s}_images")
                    shapes[s] = header
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001
        raise DataError(f"{path}: not a readable .npz file ({err.__class__.__name__}: {err})") from None
    needed = [f"{s}_{kind}" for s in ("train", "test") for kind in ("images", "labels")]
    missing = [k for k in needed if k not in keys]
    if missing:
        raise DataError(f"{path}: missing key(s) {', '.join(missing)}; a MedMNIST .npz has "
                        f"train_images, train_labels, (val_images, val_labels,) test_images, test_labels; "
                        f"this file has: {', '.join(sorted(keys)) or 'none'}")
    rows = []
    for split, y in labels.items():
        if split not in shapes:
            raise DataError(f"{path}: has {split}_labels but no {split}_images")
        y = y.reshape(len(y), -1) if y.ndim > 1 else y[:, None]
        if y.shape[1] != 1:
            raise DataError(f"{path}: {split}_labels has shape {y.shape}: multi-label targets are not supported")
        if len(y) != shapes[split][0]:
            raise DataError(f"{path}: {split}_labels has {len(y)} rows but {split}_images has {shapes[split][0]}")
        rows += [(item_path(path, split, i), int(v), split) for i, v in enumerate(y[:, 0])]
    frame = pd.DataFrame(rows, columns=["path", "label", "split"])
    num_classes = int(frame.label.max()) + 1
    names = class_names_for(path, num_classes)
    frame["label"] = [names[v] for v in frame.label]
    return frame, names


