"""``medclf evaluate``: re-evaluate a run's best checkpoint on its test split or new data."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .. import rundir
from ..data.sources import Manifest, discover_labelled
from ..data.prepare import prepare_images
from ..errors import DataError
from .run import load_model, pick_device, predict_probabilities, predict_tta, write_evaluation


def evaluate_run(run_dir: str | Path, data: str | Path | None = None) -> tuple[Path, dict]:
    """Evaluate the run's best checkpoint.

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
    if data is None:
        split = run.split()
        frame = split[split.split == "test"].reset_index(drop=True)
        out = run.path
    elif str(data).lower().endswith((".npz", ".csv")) or str(data).startswith("medmnist:"):
        from ..data.sources import discover_source
        labelled = discover_source(str(data), run.config.data, run.config.seed).frame
        frame = labelled[labelled.split == "test"].reset_index(drop=True)
    else:
        frame = discover_labelled(data)
    if data is not None:
        unknown = sorted(set(frame.label) - set(run.class_names))
        if unknown:
            raise DataError(f"{data}: class folder(s) {', '.join(unknown)} are not classes of this run "
                            f"({', '.join(run.class_names)})")
        out = run.path / "evaluations" / rundir.slug(Path(data).resolve().name)
        (out / "plots").mkdir(parents=True, exist_ok=True)
    manifest = Manifest(frame[["path", "label"]].assign(split="test"), run.class_names)
    images, kept, bad = prepare_images(manifest, run.config)
    labels = pd.Series(kept.labels("test")).to_numpy()
    model = load_model(run)
    device = pick_device(run.config.trainer.accelerator)
    probabilities = predict_probabilities(model, images, run.config.eval.batch_size, device)
    val_labels = val_probabilities = val_tta = None
    split = run.split()
    val_frame = split[split.split == "val"]
    if len(val_frame):  # the operating threshold and temperature come from the run's validation split
        val_manifest = Manifest(val_frame[["path", "label"]].assign(split="test").reset_index(drop=True),
                                run.class_names)
        val_images, val_kept, _ = prepare_images(val_manifest, run.config.model_copy(
            update={"data": run.config.data.model_copy(update={"on_bad_file": "skip"})}))
        val_labels = pd.Series(val_kept.labels("test")).to_numpy()
        val_probabilities = predict_probabilities(model, val_images, run.config.eval.batch_size, device)
        if run.config.eval.tta:
            val_tta = predict_tta(model, val_images, run.config, device, val_probabilities)[0]
        if run.config.eval.drop_duplicates:  # as in training: val copies of training images out
            val_drop = _leaked(run, val_kept.frame, data, split="val", always=True)
            if val_drop is not None:
                val_labels, val_probabilities = val_labels[~val_drop], val_probabilities[~val_drop]
                val_tta = val_tta[~val_drop] if val_tta is not None else None
    tta, views = (predict_tta(model, images, run.config, device, probabilities) if run.config.eval.tta else (None, 0))
    checkpoint = str(run.checkpoint.relative_to(run.path))
    extra = {"data": str(data) if data else run.config.data.source, "n_skipped": len(bad)}
    metrics = write_evaluation(out, kept.frame, probabilities, labels, run.class_names, checkpoint, extra,
                               config=run.config, val_labels=val_labels, val_probabilities=val_probabilities,
                               tta_probabilities=tta, tta_views_count=views, val_tta_probabilities=val_tta,
                               drop=_leaked(run, kept.frame, data))
    if data is None:  # the run's own test split: refresh its gallery and report
        from ..postrun import after_evaluation
        after_evaluation(run.path, run.config)
    return out, metrics


def _leaked(run: rundir.Run, frame: pd.DataFrame, data, split: str = "test",
            always: bool = False) -> "np.ndarray | None":
    """Images of ``split`` that the run's inspection.json found duplicating training images
    (for the run's own test split, or always for its validation split)."""
    import json

    import numpy as np
    path = run.path / "inspection.json"
    if (data is not None and not always) or not path.is_file():
        return None
    from ..inspect import leaked_paths
    leaks = leaked_paths(json.loads(path.read_text(encoding="utf-8")), split)
    return frame.path.isin(leaks).to_numpy()
