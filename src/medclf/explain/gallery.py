"""The top-predictions gallery: the most confident correct and wrong test predictions
("top losses") of a run, each with its Grad-CAM overlay."""
from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from .. import rundir
from ..errors import MedclfError
from ..io import atomic_write, write_csv
from .explain import Explainer

log = logging.getLogger("medclf")

GALLERY_DIR = "plots/gallery"
GALLERY_CSV = "plots/gallery/gallery.csv"


def select_gallery(predictions: pd.DataFrame, class_names: list[str], k: int = 4) -> pd.DataFrame:
    """The ``k`` most confident correct and ``k`` most confident wrong predictions.

    Args:
        predictions: ``predictions.csv`` rows (``path``, ``label``, ``predicted``,
            ``prob_<class>``).

    Returns:
        rows with ``kind`` ('correct' or 'wrong'), ``rank`` (1 = most confident),
        ``confidence`` (probability of the predicted class) and ``true_probability``
        (probability given to the true class; low for the top losses).
    """
    frame = predictions.copy()
    frame["confidence"] = [row[f"prob_{row.predicted}"] for _, row in frame.iterrows()]
    frame["true_probability"] = [row.get(f"prob_{row.label}", float("nan")) for _, row in frame.iterrows()]
    parts = []
    for kind, mask in (("correct", frame.label == frame.predicted), ("wrong", frame.label != frame.predicted)):
        top = frame[mask].sort_values("confidence", ascending=False, kind="stable").head(k).copy()
        top.insert(0, "rank", range(1, len(top) + 1))
        top.insert(0, "kind", kind)
        parts.append(top)
    return pd.concat(parts, ignore_index=True)


def write_gallery(run_dir: str | Path, k: int = 4, method: str = "gradcam") -> Path | None:
    """Write ``plots/gallery/{correct,wrong}_<rank>.png`` and ``gallery.csv`` for a run.

    Uses the run's ``predictions.csv`` (written by evaluation); each image is read with the
    run's preprocessing, like in evaluation, and the heatmap explains the predicted class.
    Images that cannot be read any more are skipped with a warning.

    Returns:
        the gallery CSV path, or None when the run has no predictions.
    """
    run_dir = Path(run_dir)
    if not (run_dir / rundir.PREDICTIONS).is_file():
        return None
    run = rundir.load_run(run_dir)
    predictions = pd.read_csv(run_dir / rundir.PREDICTIONS, dtype={"label": str, "predicted": str})
    chosen = select_gallery(predictions, run.class_names, k)  # class names stay text ("0", not 0)
    explainer = Explainer.from_run(run, method)
    pngs = []
    for _, row in chosen.iterrows():
        try:  # read exactly as evaluation read it (medclf.explain.explain.read_input)
            result = explainer.explain(row.path, row.predicted)
        except MedclfError as err:
            log.warning("gallery: skipped %s", err)
            pngs.append("")
            continue
        name = f"{row.kind}_{row['rank']}.png"
        atomic_write(run_dir / GALLERY_DIR / name, lambda tmp: Path(tmp).write_bytes(result.png))
        pngs.append(name)
    chosen["png"] = pngs
    columns = ["kind", "rank", "path", "label", "predicted", "confidence", "true_probability", "png"]
    return write_csv(run_dir / GALLERY_CSV, chosen[columns])
