"""``medclf train``: dataset -> plan -> preprocess -> fit -> evaluate, into a run directory."""
from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import pandas as pd
import torch
from lightning.pytorch.callbacks import (EarlyStopping, EMAWeightAveraging, ModelCheckpoint,
                                         TQDMProgressBar)
from lightning.pytorch.loggers import TensorBoardLogger

from .. import rundir
from ..config import Config, deep_merge, load_yaml, parse_overrides, validate
from ..diagnostics import build_callbacks as build_diagnostics, write_architecture
from ..postrun import after_evaluation
from ..data.datamodule import ImageDataModule
from ..data.discover import discover
from ..data.prepare import prepare_splits
from ..evaluation.run import pick_device, predict_probabilities, write_evaluation
from ..io import write_csv, write_json, write_yaml
from ..models import create_model
from ..plan import fingerprint, plan_config
from .callbacks import MetricsCSV
from .module import MONITOR_MODES, Classifier

log = logging.getLogger("medclf")


@dataclass
class TrainResult:
    """What :func:`train` returns: the run directory and its test metrics."""

    run_dir: Path
    metrics: dict


def user_tree(config: str | Path | dict | Config | None, overrides) -> dict:
    """The user's settings (YAML file, dict or Config) with ``--set`` overrides, unvalidated."""
    if isinstance(config, Config):
        tree = config.to_dict()
    elif isinstance(config, dict):
        tree = dict(config)
    elif config:
        tree = load_yaml(config)
    else:
        tree = {}
    if isinstance(overrides, dict):
        return deep_merge(tree, overrides)
    return deep_merge(tree, parse_overrides(overrides))


def class_weights(labels: torch.Tensor, num_classes: int, setting) -> torch.Tensor | None:
    """Cross-entropy class weights: ``'auto'`` gives ``N / (K * n_c)`` (scikit-learn's
    'balanced' rule), ``'none'`` gives None, a list is used as given."""
    if setting == "none":
        return None
    if setting == "auto":
        counts = torch.bincount(labels, minlength=num_classes).float().clamp(min=1)
        return counts.sum() / (num_classes * counts)
    if len(setting) != num_classes:
        from ..errors import ConfigError
        raise ConfigError(f"train.class_weights: {len(setting)} weights given for {num_classes} classes")
    return torch.tensor(setting, dtype=torch.float32)


def train(data: str | Path, config=None, overrides=None, out: str | Path = "runs",
          name: str | None = None, progress: bool = True) -> TrainResult:
    """Train a classifier on a dataset folder and evaluate it on the test split.

    Args:
        data: class-per-folder tree (see :func:`medclf.data.discover.discover`).
        config: YAML path, dict or :class:`~medclf.config.Config` with user settings; the
            dataset plan fills in everything not given.
        overrides: ``["train.lr=3e-4", ...]`` or a nested dict, applied last.
        out: folder that receives the run directory.
        name: run name (default ``<data>-<timestamp>``); an existing name gets a suffix.
        progress: show Lightning's progress bar.

    Returns:
        :class:`TrainResult` with the run directory and the test metrics.

    Raises:
        MedclfError: bad configuration, bad data, or a diverged training (with advice).
    """
    started = time.perf_counter()
    for noisy in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    tree = user_tree(config, overrides)
    early = validate(tree)  # the user's settings alone, to find and split the data
    data = Path(data if data is not None else early.data.source or "")
    manifest = discover(data, early.data.val_fraction, early.data.test_fraction, early.seed)
    fp = fingerprint(manifest)
    cfg = validate(deep_merge(plan_config(fp), deep_merge(tree, {"data": {"source": str(data)}})))

    run_dir = rundir.create_run_dir(out, name, data.resolve().name)
    write_yaml(run_dir / rundir.CONFIG, cfg.to_dict())
    splits, manifest, bad = prepare_splits(manifest, cfg)
    write_csv(run_dir / rundir.SPLIT, manifest.frame)
    if bad:
        write_csv(run_dir / rundir.BAD_FILES, pd.DataFrame(bad, columns=["path", "reason"]))
        log.warning("skipped %d unreadable file(s), listed in %s", len(bad), run_dir / rundir.BAD_FILES)
    write_json(run_dir / rundir.DATASET, {**fp, "counts": manifest.counts(), "n_skipped": len(bad)})

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    train_labels = splits["train"][1]
    weights = class_weights(train_labels, manifest.num_classes, cfg.train.class_weights)
    network = create_model(cfg.model, cfg.data.in_channels, manifest.num_classes)
    module = Classifier(network, manifest.num_classes, cfg.train, weights)
    with torch.random.fork_rng():  # drawing the graph must not change the training's randomness
        write_architecture(network, (cfg.data.in_channels, *cfg.data.image_size), run_dir)
    trainer = build_trainer(cfg, run_dir, progress, n_train=len(train_labels))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*number of training batches.*")
        trainer.fit(module, datamodule=ImageDataModule(splits, cfg))

    best = run_dir / rundir.BEST
    checkpoint = best if best.exists() else run_dir / rundir.LAST
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    module.load_state_dict(saved["state_dict"])
    test_images, test_labels = splits["test"]
    probabilities = predict_probabilities(module.model, test_images, cfg.eval.batch_size,
                                          pick_device(cfg.trainer.accelerator))
    test_frame = manifest.frame[manifest.frame.split == "test"]
    extra = {"checkpoint_epoch": saved.get("epoch"), "epochs_run": trainer.current_epoch,
             "train_time_s": round(time.perf_counter() - started, 1)}
    metrics = write_evaluation(run_dir, test_frame, probabilities, test_labels.numpy(),
                               manifest.class_names, str(checkpoint.relative_to(run_dir)), extra)
    after_evaluation(run_dir, cfg)  # gallery and report.html (plug-ins; failures only warn)
    return TrainResult(run_dir, metrics)


def build_trainer(cfg: Config, run_dir: Path, progress: bool = True, n_train: int = 0) -> L.Trainer:
    """A Lightning Trainer with the run's checkpoints, early stopping, weight averaging and
    metrics record. ``n_train`` (training images) sets the EMA decay per step."""
    mode = MONITOR_MODES[cfg.train.monitor]
    callbacks = [
        ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best", monitor="val_selection",
                        mode=mode, save_top_k=1, save_last=True, enable_version_counter=False),
        MetricsCSV(run_dir / rundir.METRICS),
    ]
    if cfg.train.early_stopping.enabled:
        callbacks.append(EarlyStopping(monitor="val_selection", mode=mode,
                                       patience=cfg.train.early_stopping.patience,
                                       min_delta=cfg.train.early_stopping.min_delta, check_finite=True))
    if cfg.train.ema_epochs > 0 and n_train > 0:
        steps_per_epoch = max(1, n_train // cfg.train.batch_size)
        decay = 1.0 - 1.0 / max(1.0, cfg.train.ema_epochs * steps_per_epoch)
        callbacks.append(EMAWeightAveraging(decay=decay))  # Lightning's EMA of the weights
    callbacks += build_diagnostics(cfg.diagnostics, run_dir)  # empty unless diagnostics.enabled
    if progress:
        callbacks.append(TQDMProgressBar(refresh_rate=5))
    return L.Trainer(
        max_epochs=cfg.train.max_epochs, accelerator=cfg.trainer.accelerator,
        devices=cfg.trainer.devices, strategy=cfg.trainer.strategy, num_nodes=cfg.trainer.num_nodes,
        precision=cfg.trainer.precision, deterministic=cfg.trainer.deterministic,
        gradient_clip_val=cfg.train.gradient_clip, callbacks=callbacks,
        logger=TensorBoardLogger(str(run_dir), name="tensorboard", version="", default_hp_metric=False),
        enable_progress_bar=progress, enable_model_summary=False, num_sanity_val_steps=0,
        log_every_n_steps=10,
    )
