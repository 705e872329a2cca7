"""The run directories a service exposes: safe name lookup, summaries, and a model cache."""
from __future__ import annotations

import copy
import json
import logging
import math
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from .. import rundir
from ..errors import ConfigError, MedclfError, RunDirError
from ..evaluation.outputs import predict_outputs
from ..evaluation.predict import load_model, pick_device
from ..training.tasks import task_of
from .batching import MicroBatcher

log = logging.getLogger("medclf")
PLOT_SUFFIXES = (".png", ".svg", ".jpg")
BACKENDS = ("torch", "onnx")


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
    """A run with its model in memory: one copy for predictions, one (lazy) for Grad-CAM.

    With ``session`` (an ONNX Runtime session of the same network) predictions go through
    ONNX Runtime; Grad-CAM always uses the PyTorch model. With ``batcher``, concurrent
    requests are predicted together (:class:`~medclf.serve.batching.MicroBatcher`)."""

    name: str
    run: rundir.Run
    model: torch.nn.Module
    device: torch.device
    stamp: tuple
    session: object | None = None
    batcher: MicroBatcher | None = None
    _cam_model: torch.nn.Module | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def probabilities(self, images: torch.Tensor) -> np.ndarray:
        """Softmax probabilities ``(N, num_classes)`` for preprocessed images ``(N, C, *spatial)``
        (multilabel: a sigmoid probability per finding; regression: the value ``(N, 1)``)."""
        if self.session is not None:
            from ..export.export import onnx_probabilities
            return onnx_probabilities(self.session, images)
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

    Args:
        backend: ``torch`` (eager PyTorch) or ``onnx`` (the network exported to ONNX in
            memory, predicted by ONNX Runtime on the CPU).
        batch_window_ms: micro-batching of concurrent requests: how long the first waits
            for others, milliseconds; 0 turns it off.
        max_batch: micro-batching: most images per forward pass.
        on_load: called with ``(run name, backend, seconds)`` after each model load and
            warm-up (one prediction of a blank input).

    Raises:
        RunDirError: ``root`` is not a folder.
        ConfigError: unknown backend.
    """

    def __init__(self, root: str | Path, accelerator: str = "cpu", backend: str = "torch",
                 batch_window_ms: float = 0.0, max_batch: int = 32,
                 on_load: Callable[[str, str, float], None] | None = None,
                 on_batch: Callable[[int], None] | None = None):
        if backend not in BACKENDS:
            raise ConfigError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        self.backend, self.batch_window_ms, self.max_batch = backend, batch_window_ms, max_batch
        self.on_load, self.on_batch = on_load, on_batch
        self._warm: bool | None = None  # None: not started; False: warming; True: every model loaded
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
        """The run with its model loaded (once, then cached; reloaded when its checkpoint changes)."""
        with self._lock:
            cached = self._models.get(name)
        if cached is not None and _stamp(Path(cached.stamp[0])) == cached.stamp:
            # per request: one stat, no listing of the runs folder and no configuration read.
            # The name was checked (self.path) when the model was loaded; its checkpoint still
            # being there, unchanged, means the run is.
            return cached
        path = self.path(name)
        run = self.load(name)
        try:  # an ensemble run: its last fold's weights stand for the whole (they are written last)
            checkpoint = run.fold_checkpoints()[-1] if run.is_ensemble else run.checkpoint
        except RunDirError as err:
            raise RunNotFound(str(err)) from None
        stamp = _stamp(checkpoint)
        with self._lock:
            loaded = self._models.get(name)
            if loaded is None or loaded.stamp != stamp or loaded.run.path != path:
                loaded = self._load(name, run, checkpoint, stamp)
                self._models[name] = loaded
        return loaded

    def _load(self, name: str, run: rundir.Run, checkpoint: Path, stamp: tuple) -> LoadedRun:
        """Load the network (and its ONNX Runtime session), predict one blank input (warm-up)."""
        start = time.perf_counter()
        model = load_model(run, None if run.is_ensemble else checkpoint).to(self.device).eval()
        loaded = LoadedRun(name, run, model, self.device, stamp)
        shape = [run.config.data.in_channels, *run.config.data.image_size]
        if self.backend == "onnx" and task_of(run.config) != "classification":
            log.warning("serve: run %s (%s) is served by PyTorch: the ONNX backend exports softmax "
                        "probabilities, for classification runs", name, task_of(run.config))
        elif self.backend == "onnx":
            from ..export.export import onnx_session_for
            try:
                # no busy-waiting threads: they would take the cores from decoding the next uploads
                loaded.session = onnx_session_for(model.cpu(), shape, spinning=False)
            except (RuntimeError, ValueError) as err:
                raise RunDirError(f"run {name!r}: the network cannot be run by ONNX Runtime: {err}") from err
        if self.batch_window_ms > 0:
            loaded.batcher = MicroBatcher(lambda images: loaded.probabilities(torch.from_numpy(images)),
                                          self.batch_window_ms, self.max_batch, self.on_batch)
        if len(shape) == run.config.model.spatial_dims + 1:
            loaded.probabilities(torch.zeros(1, *shape))  # warm-up: the first pass allocates and plans
        if self.on_load is not None:
            self.on_load(name, self.backend, time.perf_counter() - start)
        return loaded

    def warm_up(self) -> None:
        """Load every run that has a checkpoint (runs that fail to load are logged and left
        out); :meth:`ready` is then true."""
        with self._lock:
            if self._warm is not None:
                return
            self._warm = False
        for name in self.names():
            try:
                self.model(name)
            except (MedclfError, OSError, RuntimeError, ValueError) as err:
                log.warning("serve: run %s not loaded: %s", name, err)
        self._warm = True

    def loaded_count(self) -> int:
        """Models in memory."""
        return len(self._models)

    def ready(self) -> bool | None:
        """True when :meth:`warm_up` has loaded every model, False while it runs, None
        before it started."""
        return self._warm


def _has_checkpoint(path: Path) -> bool:
    return (path / rundir.BEST).is_file() or (path / rundir.LAST).is_file() \
        or (path / rundir.OOF_PREDICTIONS).is_file()  # an ensemble run whose folds have finished


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _stamp(checkpoint: Path) -> tuple | None:
    """``(path, mtime_ns, size)`` of a checkpoint, None when it cannot be read."""
    try:
        stat = checkpoint.stat()
    except OSError:
        return None
    return str(checkpoint), stat.st_mtime_ns, stat.st_size
