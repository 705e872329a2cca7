"""The training loop's library parts: the Lightning Trainer of a run (checkpoints, early
stopping, weight averaging, metrics record, diagnostics), class weights of the loss, and
the process rank of multi-process runs."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, EMAWeightAveraging, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger

from .. import rundir
from ..config import Config
from ..data.datamodule import ImageDataModule
from ..diagnostics import build_callbacks as build_diagnostics
from ..errors import ConfigError
from ..testing.faults import fault_callbacks
from .batchnorm import CleanBatchNormStatistics
from .callbacks import MetricsCSV, ValidateLastEpoch
from .finetune import FreezeBackbone
from .module import MONITOR_MODES
from .reliability import AtomicCheckpointIO, EpochSeeder
from .safety import advise_on_out_of_memory

RUN_DIR_ENV = "MEDCLF_RUN_DIR"  # rank 0 tells the DDP processes it launches where its run is


def launcher_variables_set() -> bool:
    """True in a process started by a launcher (Lightning's DDP, torchrun, SLURM): one of
    ``WORLD_SIZE``, ``LOCAL_RANK`` or ``RANK`` is set, whatever its value."""
    return any(name in os.environ for name in ("WORLD_SIZE", "LOCAL_RANK", "RANK"))


def launch_rank() -> int:
    """This process's global rank as set by the launcher (Lightning, torchrun, SLURM); 0 alone.

    Reads ``RANK``, ``SLURM_PROCID``, ``LOCAL_RANK`` and ``NODE_RANK``: any non-zero value
    means this process is not rank 0 of a multi-process run.
    """
    for name in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK"):
        value = os.environ.get(name, "0")
        if value.isdigit() and int(value) != 0:
            return int(value)
    return 0


def class_weights(labels: torch.Tensor, num_classes: int, setting,
                  sampler: str = "shuffle") -> torch.Tensor | None:
    """Cross-entropy class weights ``(num_classes,)`` from training labels ``(N,)``.

    ``'auto'`` gives ``N / (K * n_c)`` (scikit-learn's 'balanced' rule), or None with the
    class-balanced sampler (``sampler='balanced'``), whose batches are balanced already
    (weighting them as well would over-correct); ``'none'`` gives None; a list is used as
    given. Raises ConfigError for a list of the wrong length."""
    if setting == "none" or (setting == "auto" and sampler == "balanced"):
        return None
    if setting == "auto":
        counts = torch.bincount(labels, minlength=num_classes).float().clamp(min=1)
        return counts.sum() / (num_classes * counts)
    if len(setting) != num_classes:
        raise ConfigError(f"train.class_weights: {len(setting)} weights given for {num_classes} classes")
    return torch.tensor(setting, dtype=torch.float32)


def stopped_early(checkpoint: dict) -> bool:
    """True when the checkpoint's EarlyStopping state had already stopped the run."""
    for key, state in (checkpoint.get("callbacks") or {}).items():
        if str(key).startswith("EarlyStopping") and isinstance(state, dict):
            if state.get("stopped_epoch", 0) > 0 or state.get("wait_count", 0) >= state.get("patience", 1 << 30):
                return True
    return False


def build_trainer(cfg: Config, run_dir: Path, progress: bool = True, n_train: int = 0,
                  train=None) -> L.Trainer:
    """A Lightning Trainer with the run's checkpoints, early stopping, weight averaging and
    metrics record. ``n_train`` (training images) sets the EMA decay per step;
    ``train`` = ``(images, labels)`` of the training split (images ``(N, C, *spatial)``,
    un-augmented) gives the batch-norm statistics that validation uses
    (``train.clean_bn_statistics``, :mod:`medclf.training.batchnorm`)."""
    mode = MONITOR_MODES[cfg.train.monitor]
    callbacks = [
        # best.ckpt only when the run is to keep the best epoch's weights (train.keep_weights)
        *([ModelCheckpoint(dirpath=run_dir / rundir.CHECKPOINTS, filename="best", monitor="val_selection",
                           mode=mode, save_top_k=1, save_last=False, enable_version_counter=False)]
          if cfg.train.keep_weights == "best" else []),
        # last.ckpt after every epoch, for --resume (Lightning 2.6's save_last=True writes it
        # only in epochs where the best checkpoint was also written)
        ModelCheckpoint(dirpath=run_dir / rundir.CHECKPOINTS, filename="last", monitor=None, save_top_k=1,
                        enable_version_counter=False, save_on_train_epoch_end=True),  # also between validations
        MetricsCSV(run_dir / rundir.METRICS),
        EpochSeeder(cfg.seed),
        *fault_callbacks(),
    ]
    if cfg.train.check_val_every_n_epoch > 1:
        callbacks.append(ValidateLastEpoch())
    if cfg.train.early_stopping.enabled:
        callbacks.append(EarlyStopping(monitor="val_selection", mode=mode,
                                       patience=cfg.train.early_stopping.patience,
                                       min_delta=cfg.train.early_stopping.min_delta, check_finite=True))
    if cfg.train.ema_epochs > 0 and n_train > 0:
        steps_per_epoch = max(1, n_train // cfg.train.batch_size)
        decay = 1.0 - 1.0 / max(1.0, cfg.train.ema_epochs * steps_per_epoch)
        callbacks.append(EMAWeightAveraging(decay=decay))  # Lightning's EMA of the weights
    if cfg.train.clean_bn_statistics and cfg.augment.enabled and train is not None:
        # after the EMA callback: it swaps the averaged weights in for validation first
        images, labels = train
        balanced = labels if cfg.train.sampler == "balanced" and labels.dim() == 1 \
            and not labels.is_floating_point() else None
        # fold models keep their last weights: only the last validation's statistics matter
        callbacks.append(CleanBatchNormStatistics(images, cfg.train.batch_size, balanced,
                                                  last_epoch_only=cfg.train.folds >= 2))
    if cfg.train.freeze_epochs > 0:
        callbacks.append(FreezeBackbone(cfg.train.freeze_epochs))  # fine-tuning: head first
    callbacks += build_diagnostics(cfg.diagnostics, run_dir)  # empty unless diagnostics.enabled
    if progress:
        callbacks.append(TQDMProgressBar(refresh_rate=5))
    return L.Trainer(
        max_epochs=cfg.train.max_epochs, accelerator=cfg.trainer.accelerator,
        devices=cfg.trainer.devices, strategy=cfg.trainer.strategy, num_nodes=cfg.trainer.num_nodes,
        precision=cfg.trainer.precision, deterministic=cfg.trainer.deterministic,
        gradient_clip_val=cfg.train.gradient_clip, callbacks=callbacks,
        logger=TensorBoardLogger(str(run_dir), name=rundir.TENSORBOARD, version="", default_hp_metric=False),
        enable_progress_bar=progress, enable_model_summary=False, num_sanity_val_steps=0,
        log_every_n_steps=10, plugins=[AtomicCheckpointIO()],
        check_val_every_n_epoch=cfg.train.check_val_every_n_epoch,
        reload_dataloaders_every_n_epochs=1,  # per-epoch seeded loaders (see EpochSeeder)
    )


def fit(trainer: L.Trainer, module: L.LightningModule, splits: dict, cfg, run_dir: Path,
        ckpt_path: str | None) -> None:
    """``trainer.fit`` on the preprocessed ``splits`` (``{split: (images, labels)}``), from
    ``ckpt_path`` when resuming; the processes that DDP launches learn the run directory
    from ``$MEDCLF_RUN_DIR``.

    Raises:
        OutOfMemory: training ran out of memory (with advice).
    """
    previous = os.environ.get(RUN_DIR_ENV)
    os.environ[RUN_DIR_ENV] = str(run_dir)  # inherited by the processes DDP launches
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*number of training batches.*")
        warnings.filterwarnings("ignore", ".*Checkpoint directory.*exists and is not empty.*")
        warnings.filterwarnings("ignore", ".*isinstance\\(treespec, LeafSpec\\).*")  # Lightning 2.6 on torch 2.13, every epoch
        try:
            with advise_on_out_of_memory(cfg, "training"):
                trainer.fit(module, datamodule=ImageDataModule(splits, cfg), ckpt_path=ckpt_path)
        finally:
            if previous is None:
                os.environ.pop(RUN_DIR_ENV, None)
            else:
                os.environ[RUN_DIR_ENV] = previous
