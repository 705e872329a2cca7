"""The inspection of a training run: duplicates and leaks between its splits, and the carved
splits regrouped so that they hold no copy of a training image (:mod:`medclf.data.regroup`)."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from .. import rundir
from ..data.folds import duplicate_pairs
from ..data.regroup import copies_of_training, move_to_train
from ..data.store import ItemsByPath
from ..inspect import inspect_manifest, leaked_paths
from ..io import write_csv, write_json
from ..provenance import manifest_hash
from ..training.fit import launcher_variables_set
from ..training.tasks import task_facts

log = logging.getLogger("medclf")


def _inspect(manifest, splits: dict) -> dict:
    frame = manifest.frame
    decoded = ItemsByPath({split: list(frame.path[frame.split == split]) for split in splits}, splits)
    return inspect_manifest(manifest, decoded=decoded)


def inspect_run(run_dir: Path, manifest, splits: dict, regroup: bool = True) -> tuple[dict, object, dict[str, set[str]]]:
    """Inspect the dataset of a run from its already preprocessed arrays (no decoding),
    move the carved validation/test images that copy training images (or belong to their
    patients) to the training split, write ``inspection.json`` and warn loudly about the
    validation/test images that still duplicate training images (those of given splits).

    Args:
        run_dir: the run directory (``split.csv``, ``dataset.json`` with its counts and task
            facts, and the manifest hash of ``provenance.json`` are rewritten when images move).
        manifest: the run's :class:`~medclf.data.sources.Manifest` (``carved`` names the
            splits that may be regrouped).
        splits: ``{split: (images, labels)}`` of :func:`medclf.data.prepare.prepare_splits`.
        regroup: move the carved splits' copies (False for the k-fold protocol, which pools
            training and validation images and keeps copies in one fold itself).

    Returns:
        ``(splits, manifest, leaks)``: the regrouped splits and manifest, and
        ``{"val": paths, "test": paths}`` of images duplicating a training image.
    """
    inspection = _inspect(manifest, splits)
    # a process of a torchrun/SLURM launch: its peers prepare their own splits at the same time
    carved = manifest.carved if regroup and not launcher_variables_set() else ()
    moving = copies_of_training(manifest.frame, duplicate_pairs(inspection), carved,
                                keep_classes=manifest.task == "classification") if carved else []
    if moving:
        splits, manifest = move_to_train(splits, manifest, moving)
        write_csv(run_dir / rundir.SPLIT, manifest.frame)
        facts = json.loads((run_dir / rundir.DATASET).read_text(encoding="utf-8"))
        write_json(run_dir / rundir.DATASET, {**facts, "counts": manifest.counts(), **task_facts(manifest),
                                              "moved_to_train": len(moving)})
        record = json.loads((run_dir / rundir.PROVENANCE).read_text(encoding="utf-8"))
        write_json(run_dir / rundir.PROVENANCE, {**record, "manifest_sha256": manifest_hash(manifest.frame)})
        log.warning("moved %d image(s) of the carved %s split(s) to training: exact or near copies of training "
                    "images (or other images of their patients), which would validate a model trained on their "
                    "twins", len(moving), "/".join(manifest.carved))
        inspection = _inspect(manifest, splits)
    write_json(run_dir / rundir.INSPECTION, inspection)
    leaks = {s: leaked_paths(inspection, s) for s in ("val", "test")}
    for split, paths in leaks.items():
        if paths:
            bar = "!" * 78
            log.warning("\n%s\n%d %s image(s) duplicate training images (exact or near copies): "
                        "their metrics are inflated. Listed in %s; set eval.drop_duplicates=true to drop them "
                        "from the evaluation.\n  %s\n%s", bar, len(paths), split, run_dir / rundir.INSPECTION,
                        "\n  ".join(sorted(paths)[:10]) + ("\n  ..." if len(paths) > 10 else ""), bar)
    return splits, manifest, leaks


def adopt_moves(run_dir: Path, manifest, splits: dict) -> tuple[dict, object]:
    """In a DDP process launched by rank 0: move to training the images that rank 0 moved
    (its ``split.csv``, written before it launched this process), so that every process
    trains on the same split. Returns ``(splits, manifest)``."""
    stored = Path(run_dir) / rundir.SPLIT
    if not manifest.carved or not stored.is_file():
        return splits, manifest
    table = pd.read_csv(stored, usecols=["path", "split"], dtype=str)
    frame = manifest.frame
    moved = set(table.path[table.split == "train"]) - set(frame.path[frame.split == "train"])
    return move_to_train(splits, manifest, moved)
