"""The run directories a service exposes: safe name lookup, summaries, and a model cache."""
from __future__ import annotations

import copy
import json
import logging
import math
import os
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import rundir
from ..errors import MedclfError, RunDirError
from ..evaluation.outputs import predict_outputs
from ..evaluation.predict import load_model, pick_device
from ..training.tasks import task_of

log = logging.getLogger("medclf")
PLOT_SUFFIXES = (".png", ".svg", ".jpg")


class RunNotFound(MedclfError):
    """The name is not a run directory directly inside the runs folder."""


def clean(value):
    """JSON-safe copy: NaN/inf -> None, numpy scalars -> Python numbers."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, (np.generic,)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@dataclass
class LoadedRun:
    """A run with its model in memory: one copy for predictions, one (lazy) for Grad-CAM."""

    name: str
    run: rundir.Run
    model: torch.nn.Module
    device: torch.device
    stamp: tuple
    _cam_model: torch.nn.Module | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def probabilities(self, images: torch.Tensor) -> np.ndarray:
        """Softmax probabilities ``(N, num_classes)`` for preprocessed images ``(N, C, *spatial)``
        (multilabel: a sigmoid probability per finding; regression: the value ``(N, 1)``)."""
        return predict_outputs(self.model, images, task_of(self.run.config), self.run.config.eval.batch_size,
                               self.device)

    @property
    def cam_model(self) -> torch.nn.Module:
        """A copy of the model reserved for Grad-CAM (its hooks never touch ``model``)."""
        with self._lock:
            if self._cam_model is None:
                self._cam_model = copy.deepcopy(self.model).cpu().eval()
            return self._cam_model


class RunStore:
    """Run directories directly inside ``root``, looked up by name only.

    A name is accepted only if it is, literally, the name of a subfolder of ``root``
    (no separators, not hidden), that subfolder resolves to a direct child of ``root``
    (a symlink pointing elsewhere is refused) and holds a run (config.yaml, dataset.json).
    Anything else is :class:`RunNotFound`, so ``../x``, absolute or encoded paths never
    read outside ``root``. Models are loaded once (``weights_only=True``) and kept; a run
    whose checkpoint file changes is reloaded.

    Raises:
        RunDirError: ``root`` is not a folder.
    """

    def __init__(self, root: str | Path, accelerator: str = "cpu"):
        root = Path(root)
        if not root.is_dir():
            raise RunDirError(f"runs folder not found: {root}")
        self.root = root.resolve()
        self.device = pick_device(accelerator)
        self._models: dict[str, LoadedRun] = {}
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        """Names of the run directories in ``root``, newest first."""
        found = []
        for entry in os.scandir(self.root):
            try:
                path = self.path(entry.name)
            except RunNotFound:
                continue
            found.append((path.stat().st_mtime, entry.name))
        return [name for _, name in sorted(found, reverse=True)]

    def path(self, name: str) -> Path:
        """The directory of run ``name``; :class:`RunNotFound` unless it is a safe, real run."""
        if (not name or name.startswith(".") or "/" in name or "\\" in name or "\x00" in name
                or name not in os.listdir(self.root)):
            raise RunNotFound(f"no run named {name!r}")
        path = (self.root / name).resolve()
        if path.parent != self.root or not (path / rundir.CONFIG).is_file() \
                or not (path / rundir.DATASET).is_file():
            raise RunNotFound(f"no run named {name!r}")
        return path

    def file(self, name: str, folder: str, filename: str, suffixes: tuple[str, ...]) -> Path:
        """A file directly inside ``<run>/<folder>`` (``folder`` '' for the run itself)."""
        base = self.path(name) / folder if folder else self.path(name)
        if (not filename.lower().endswith(suffixes) or filename.startswith(".") or "/" in filename
                or not base.is_dir() or filename not in os.listdir(base)):
            raise RunNotFound(f"run {name!r} has no file {filename!r}")
        path = (base / filename).resolve()
        if path.parent != base.resolve() or not path.is_file():
            raise RunNotFound(f"run {name!r} has no file {filename!r}")
        return path

    def load(self, name: str) -> rundir.Run:
        path = self.path(name)
        try:
            return rundir.load_run(path)
        except (MedclfError, OSError, ValueError, KeyError) as err:
            raise RunNotFound(f"run {name!r} cannot be read: {err}") from None

    def summary(self, name: str) -> dict:
        """Name, data, model, date and key test metrics of a run (for the runs list)."""
        run = self.load(name)
        metrics = _read_json(run.path / rundir.TEST_METRICS)
        config = run.config
        return clean({
            "name": name,
            "data": Path(config.data.source).name if config.data.source else None,
            "model": config.model.name,
            "spatial_dims": config.model.spatial_dims,
            "image_size": list(config.data.image_size),
            "class_names": run.class_names,
            "date": datetime.fromtimestamp((run.path / rundir.CONFIG).stat().st_mtime, timezone.utc)
            .isoformat(timespec="seconds"),
            "has_model": _has_checkpoint(run.path),
            "metrics": {k: metrics.get(k) for k in ("n", "accuracy", "balanced_accuracy", "roc_auc")}
            if metrics else None,
        })

    def detail(self, name: str) -> dict:
        """Configuration, per-epoch metrics, test metrics and links to plots and report."""
        run = self.load(name)
        epochs = []
        if (run.path / rundir.METRICS).is_file():
            try:
                epochs = pd.read_csv(run.path / rundir.METRICS).to_dict(orient="records")
            except (OSError, ValueError, pd.errors.ParserError) as err:
                log.warning("cannot read %s: %s", run.path / rundir.METRICS, err)
        plots_dir = run.path / rundir.PLOTS
        plots = sorted(p.name for p in plots_dir.iterdir()
                       if p.is_file() and p.suffix.lower() in PLOT_SUFFIXES) if plots_dir.is_dir() else []
        base = f"/api/runs/{name}"
        return clean({
            **self.summary(name),
            "config": run.config.to_dict(),
            "dataset": run.dataset,
            "epochs": epochs,
            "test_metrics": _read_json(run.path / rundir.TEST_METRICS),
            "plots": {p.rsplit(".", 1)[0]: f"{base}/plots/{p}" for p in plots},
            "report": f"{base}/{rundir.REPORT}" if (run.path / rundir.REPORT).is_file() else None,
        })

    def model(self, name: str) -> LoadedRun:
        """The run with its model loaded (once, then cached)."""
        path = self.path(name)
        run = self.load(name)
        try:
            checkpoint = run.checkpoint
        except RunDirError as err:
            raise RunNotFound(str(err)) from None
        stat = checkpoint.stat()
        stamp = (str(checkpoint), stat.st_mtime_ns, stat.st_size)
        with self._lock:
            loaded = self._models.get(name)
            if loaded is None or loaded.stamp != stamp or loaded.run.path != path:
                model = load_model(run, checkpoint).to(self.device).eval()
                loaded = LoadedRun(name, run, model, self.device, stamp)
                self._models[name] = loaded
        return loaded


def _has_checkpoint(path: Path) -> bool:
    return (path / rundir.BEST).is_file() or (path / rundir.LAST).is_file()


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
