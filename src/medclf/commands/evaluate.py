"""``medclf evaluate``: re-evaluate a run's kept checkpoint on its test split or new data."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import rundir
from ..data.prepare import prepare_images
from ..data.sources import Manifest, discover_labelled, discover_source
from ..errors import DataError, RunDirError
from ..evaluation.checkpoint import EvaluationSplit, evaluate_model
from ..evaluation.outputs import evaluate_task, summary_lines
from ..evaluation.predict import load_model, pick_device
from ..inspect import leaked_paths
from ..training.tasks import task_of
from .postrun import after_evaluation


def evaluate_run(run_dir: str | Path, data: str | Path | None = None) -> tuple[Path, dict]:
    """Evaluate the run's kept checkpoint (best.ckpt, else last.ckpt; an ensemble's fold models).

    Args:
        run_dir: a run directory written by ``medclf train``.
        data: optional class-per-folder tree to evaluate on instead of the run's own test
            split; its ``test/`` folder if it has one, else every image. Its class folders
            must be classes the run knows. A CSV manifest, MedMNIST ``.npz`` or
            ``medmnist:NAME`` contributes its test split.

    Returns:
        ``(output_dir, metrics)``: the run directory itself (own test split) or
        ``run_dir/evaluations/<data name>/``, and the metrics dict.

    Raises:
        RunDirError, DataError: not a run directory; unknown classes; unreadable files.
    """
    run = rundir.load_run(run_dir)
    split = run.split()
    if data is None:
        frame = split[split.split == "test"].reset_index(drop=True)
        out = run.path
    elif str(data).lower().endswith((".npz", ".csv")) or str(data).startswith("medmnist:"):
        labelled = discover_source(str(data), run.config.data, run.config.seed).frame
        frame = labelled[labelled.split == "test"].reset_index(drop=True)
    else:
        frame = discover_labelled(data)
    if data is not None:
        unknown = sorted(set(frame.label) - set(run.class_names))
        if unknown and task_of(run.config) == "classification":
            raise DataError(f"{data}: class folder(s) {', '.join(unknown)} are not classes of this run "
                            f"({', '.join(run.class_names)})")
        out = run.path / rundir.EVALUATIONS_DIR / rundir.slug(Path(data).resolve().name)
        (out / rundir.PLOTS).mkdir(parents=True, exist_ok=True)
    task = task_of(run.config)
    columns = ["path", "label"] + (run.class_names if task != "classification" else [])
    manifest = Manifest(frame[columns].assign(split="test"), run.class_names, task=task)
    images, kept, bad = prepare_images(manifest, run.config)
    test = EvaluationSplit(images, kept.targets("test"), kept.frame)
    val_frame = split[split.split == "val"]
    val = out_of_fold = None
    if run.is_ensemble:  # the threshold and temperature come from the out-of-fold predictions
        val, out_of_fold = _out_of_fold(run)
    elif len(val_frame):  # the operating threshold and temperature come from the run's validation split
        val_manifest = Manifest(val_frame[columns].assign(split="test").reset_index(drop=True),
                                run.class_names, task=task)
        val_images, val_kept, _ = prepare_images(val_manifest, run.config.model_copy(
            update={"data": run.config.data.model_copy(update={"on_bad_file": "skip"})}))
        val = EvaluationSplit(val_images, val_kept.targets("test"), val_kept.frame)
    leaked = _leaked(run)
    if data is not None:  # the inspection knows the run's own test split only
        leaked["test"] = set()
    checkpoint = f"{rundir.FOLDS_DIR}/fold_*/{rundir.LAST}" if run.is_ensemble \
        else str(run.checkpoint.relative_to(run.path))
    extra = {"data": str(data) if data else run.config.data.source, "n_skipped": len(bad)}
    if task != "classification":  # multilabel / regression (medclf.evaluation.outputs)
        metrics = evaluate_task(load_model(run), out, run.class_names, test, val, run.config, checkpoint, extra,
                                {**run.dataset, "task": task}, pick_device(run.config.trainer.accelerator))
    else:
        metrics = evaluate_model(load_model(run), out, run.class_names, test, val, run.config, checkpoint,
                                 extra, leaked, pick_device(run.config.trainer.accelerator), out_of_fold=out_of_fold)
    if data is None:  # the run's own test split: refresh its gallery and report
        after_evaluation(run.path, run.config)
    return out, metrics


def _leaked(run: rundir.Run) -> dict[str, set[str]]:
    """Validation and test images that the run's ``inspection.json`` found duplicating
    training images (none when the run has no inspection). An ensemble trained on its
    validation images too: test copies of them count, and no out-of-fold image does."""
    path = run.path / rundir.INSPECTION
    if not path.is_file():
        return {"val": set(), "test": set()}
    inspection = json.loads(path.read_text(encoding="utf-8"))
    if run.is_ensemble:
        return {"val": set(), "test": leaked_paths(inspection, "test", ("train", "val"))}
    return {split: leaked_paths(inspection, split) for split in ("val", "test")}


def _out_of_fold(run: rundir.Run) -> tuple[EvaluationSplit, np.ndarray]:
    """An ensemble run's out-of-fold predictions (``oof_predictions.csv``) as the validation
    split: ``(split without images, probabilities (N, num_classes))``.

    Raises:
        RunDirError: the file is missing (the run has not finished its folds).
    """
    path = run.path / rundir.OOF_PREDICTIONS
    if not path.is_file():
        raise RunDirError(f"{run.path} is an ensemble run without {rundir.OOF_PREDICTIONS}: its folds have not "
                          "finished; resume it with 'medclf train --resume'")
    table = pd.read_csv(path, dtype={"path": str, "label": str})
    labels = np.array([run.class_names.index(name) for name in table.label])
    probabilities = table[[f"prob_{name}" for name in run.class_names]].to_numpy(dtype=np.float64)
    return EvaluationSplit(torch.empty(0), labels, table), probabilities


def main(args) -> int:
    """``medclf evaluate RUN [--data DIR]``: print the metrics and the output folder."""
    out, metrics = evaluate_run(args.run, data=args.data)
    print("\n".join(summary_lines(metrics, metrics["class_names"])))
    print(out)
    return 0
