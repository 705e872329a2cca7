"""Carved splits hold no copy of a training image.

A validation or test split that medclf carves at random out of the training images can
receive an exact or near copy of a training image (the same X-ray saved twice, a re-scan),
and that copy then validates a model trained on its twin: the validation figures, the
epoch, the operating threshold and the output bias chosen on them all lean optimistic.
The k-fold protocol keeps copies in one fold (:func:`medclf.data.folds.assign_folds`); for
the carved splits of one model, :func:`copies_of_training` finds the carved images whose
duplicate group (and patient) reaches the training split, and :func:`move_to_train` moves
them there. Splits given by the data (``val/``, ``test/`` folders, a CSV's ``split``
column) are never changed: their copies are reported (``inspection.json``) and
``eval.drop_duplicates`` can leave them out of the evaluation.
"""
from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import pandas as pd
import torch

from .folds import fold_groups
from .sources import Manifest
from .store import DiskImages

log = logging.getLogger("medclf")


def copies_of_training(frame: pd.DataFrame, pairs: list[tuple[str, str]], carved,
                       keep_classes: bool = True) -> list[str]:
    """Paths of the ``carved`` splits whose group reaches the training split.

    Groups are those of the folds (:func:`medclf.data.folds.fold_groups`: duplicate pairs
    joined transitively, and the images of one patient when the frame has ``patient_id``).
    No carved split is emptied, and with ``keep_classes`` (classification) no class of one:
    if all of a split's (or a class's) images in it are copies, they stay (with a warning),
    as a split without them could not be evaluated.

    Args:
        frame: the manifest rows (``path``, ``label``, ``split``, optional ``patient_id``).
        pairs: ``(path, path)`` exact or near copies (:func:`medclf.data.folds.duplicate_pairs`).
        carved: names of the splits medclf carved (``Manifest.carved``).
        keep_classes: keep every class in every carved split (False for multi-label
            findings and regression targets, whose ``label`` texts are not classes: only the
            split is kept).
    """
    groups = fold_groups(frame, pairs)
    in_train = np.isin(groups, groups[(frame.split == "train").to_numpy()])
    in_carved = frame.split.isin(list(carved)).to_numpy()
    moving = in_carved & in_train
    carved_rows = frame[in_carved]
    keys = ["split", "label"] if keep_classes else ["split"]
    for key, rows in carved_rows.groupby(keys):
        positions = frame.index.get_indexer(rows.index)
        if moving[positions].all():
            moving[positions] = False
            what = f"of class {key[1]} " if keep_classes else ""
            log.warning("all %d %s image(s) %scopy training images; they stay so that the split keeps them",
                        len(rows), key[0], what)
    return list(frame.path[moving])


def _take(images, index: np.ndarray):
    if isinstance(images, DiskImages):
        return DiskImages(images.path, images.rows[index])
    return images[torch.as_tensor(index, dtype=torch.long)]


def _join(first, second):
    if isinstance(first, DiskImages):
        return DiskImages(first.path, np.concatenate([first.rows, second.rows]))
    return torch.cat([first, second])


def move_to_train(splits: dict, manifest: Manifest, paths) -> tuple[dict, Manifest]:
    """Move the images ``paths`` of the validation and test splits to the training split.

    Args:
        splits: ``{split: (images, labels)}`` of :func:`medclf.data.prepare.prepare_splits`
            (images ``(N, C, H, W)`` or ``(N, C, D, H, W)``, a tensor or a
            :class:`~medclf.data.store.DiskImages` view), in the manifest's row order.
        manifest: the run's manifest; its rows of each split are in the order of ``splits``.
        paths: paths to move (rows already in train are left alone).

    Returns:
        ``(splits, manifest)``: the moved images appended to the training split, in manifest
        order; the manifest's rows reordered the same way (train, moved, the rest).
    """
    frame = manifest.frame
    moving = frame.path.isin(set(paths)).to_numpy() & (frame.split != "train").to_numpy()
    if not moving.any():
        return splits, manifest
    images, labels = splits["train"]
    new = dict(splits)
    for split in ("val", "test"):
        in_split = (frame.split == split).to_numpy()
        picked = moving[in_split]
        if not picked.any():
            continue
        split_images, split_labels = splits[split]
        images = _join(images, _take(split_images, np.flatnonzero(picked)))
        labels = torch.cat([labels, split_labels[torch.as_tensor(picked)]])
        new[split] = (_take(split_images, np.flatnonzero(~picked)), split_labels[torch.as_tensor(~picked)])
    new["train"] = (images, labels)
    train = (frame.split == "train").to_numpy()
    moved = frame[moving & (frame.split == "val").to_numpy()], frame[moving & (frame.split == "test").to_numpy()]
    reordered = pd.concat([frame[train], *moved, frame[~train & ~moving]])
    reordered.loc[reordered.path.isin(set(paths)), "split"] = "train"
    return new, replace(manifest, frame=reordered.reset_index(drop=True))
