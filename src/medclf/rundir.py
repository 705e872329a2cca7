"""The run directory: naming, creation, and reading a finished run back."""
from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from .config import Config, validate
from .errors import RunDirError

CONFIG = "config.yaml"
SPLIT = "split.csv"
DATASET = "dataset.json"
PLAN = "plan.json"
METRICS = "metrics.csv"
TEST_METRICS = "test_metrics.json"
PREDICTIONS = "predictions.csv"
BAD_FILES = "bad_files.csv"
IGNORED_FILES = "ignored_files.csv"
PROVENANCE = "provenance.json"
INSPECTION = "inspection.json"
CHECKPOINTS = "checkpoints"
BEST = "checkpoints/best.ckpt"
LAST = "checkpoints/last.ckpt"
TENSORBOARD = "tensorboard"
PLOTS = "plots"
LEARNING_CURVES_PLOT = "plots/learning_curves.png"
CONFUSION_MATRIX_PLOT = "plots/confusion_matrix.png"
ROC_PLOT = "plots/roc_curves.png"
RELIABILITY_PLOT = "plots/reliability.png"
GALLERY_DIR = "plots/gallery"
GALLERY_CSV = "plots/gallery/gallery.csv"
REPORT = "report.html"
ARCHITECTURE_TEXT = "architecture.txt"
ARCHITECTURE_GRAPH = "architecture.png"
DIAGNOSTICS_DIR = "diagnostics"
LR_RANGE_PLOT = "lr_range_test.png"
EVALUATIONS_DIR = "evaluations"
EXPLANATIONS_DIR = "explanations"
SANITY = "sanity.json"
VALIDATION_METRICS = "validation_metrics.json"
FOLDS_DIR = "folds"
OOF_PREDICTIONS = "oof_predictions.csv"
FOLD_DONE = "fold_predictions.csv"  # in folds/fold_K/: its out-of-fold predictions, written last
OVERFIT_PLOT = "plots/overfit_loss.png"


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.") or "run"


def create_run_dir(out: str | Path, name: str | None, data_name: str, overwrite: bool = False) -> Path:
    """Create a new, empty run directory under ``out``; never reuse an existing one.

    The default name is ``<data>-<YYYYmmdd-HHMMSS>``; when the name exists, ``-2``, ``-3``
    ... is appended, unless ``overwrite`` is set: then an existing run directory of that
    name is deleted first (a folder that is not a medclf run directory never is).

    Raises:
        RunDirError: ``out`` cannot be created or written, or ``overwrite`` would delete a
            folder that is not a run directory.
    """
    out = Path(out)
    base = slug(name) if name else f"{slug(data_name)}-{time.strftime('%Y%m%d-%H%M%S')}"
    target = out / base
    if overwrite and (target.exists() or target.is_symlink()):
        if target.is_symlink() or not target.is_dir() or not (target / CONFIG).is_file():
            raise RunDirError(f"--overwrite: {target} exists but is not a medclf run directory "
                              f"(no {CONFIG}); it is left alone")
        try:
            shutil.rmtree(target)
        except OSError as err:
            raise RunDirError(f"--overwrite: cannot delete {target}: {err.strerror or err}") from None
    try:
        out.mkdir(parents=True, exist_ok=True)
        for i in range(1, 1000):
            path = out / (base if i == 1 else f"{base}-{i}")
            try:
                path.mkdir()
                (path / "checkpoints").mkdir()
                (path / "plots").mkdir()
                return path
            except FileExistsError:
                continue
    except OSError as err:
        raise RunDirError(f"cannot create a run directory in {out}: {err.strerror or err}") from None
    raise RunDirError(f"too many runs named {base} in {out}")


def fold_dir(run_dir: str | Path, fold: int) -> Path:
    """The folder of fold ``fold`` (0-based) of an ensemble run: ``folds/fold_<fold>``."""
    return Path(run_dir) / FOLDS_DIR / f"fold_{fold}"


@dataclass
class Run:
    """A finished (or interrupted) run read back from its directory."""

    path: Path
    config: Config
    class_names: list[str]
    dataset: dict

    @property
    def checkpoint(self) -> Path:
        for name in (BEST, LAST):
            if (self.path / name).exists():
                return self.path / name
        raise RunDirError(f"{self.path} has no checkpoint ({BEST} or {LAST}): the run did not "
                          "finish its first epoch")

    @property
    def is_ensemble(self) -> bool:
        """True for a k-fold ensemble run (``train.folds >= 2``)."""
        return self.config.train.folds >= 2

    def fold_checkpoints(self) -> list[Path]:
        """The members' weights of an ensemble run: ``folds/fold_K/checkpoints/last.ckpt``
        (the protocol trains each fold for the planned epochs and keeps the last weights).

        Raises:
            RunDirError: a fold has not finished (no checkpoint or no out-of-fold predictions).
        """
        paths = []
        for k in range(self.config.train.folds):
            folder = fold_dir(self.path, k)
            if not (folder / FOLD_DONE).is_file() or not (folder / LAST).is_file():
                raise RunDirError(f"{self.path}: fold {k} of {self.config.train.folds} has not finished "
                                  f"(no {folder / FOLD_DONE}); resume the run with 'medclf train --resume'")
            paths.append(folder / LAST)
        return paths

    def split(self) -> pd.DataFrame:
        return pd.read_csv(self.path / SPLIT, dtype={"label": str, "path": str})


def load_run(path: str | Path) -> Run:
    """Read config.yaml and dataset.json of a run directory.

    Raises:
        RunDirError: the folder is not a medclf run directory.
    """
    path = Path(path)
    if not (path / CONFIG).is_file() or not (path / DATASET).is_file():
        raise RunDirError(f"{path} is not a medclf run directory (needs {CONFIG} and {DATASET})")
    config = validate(yaml.safe_load((path / CONFIG).read_text(encoding="utf-8")))
    dataset = json.loads((path / DATASET).read_text(encoding="utf-8"))
    return Run(path, config, dataset["class_names"], dataset)
