"""Lightning callbacks that write the run directory's per-epoch record."""
from __future__ import annotations

import math
import time
from pathlib import Path

import lightning as L
import pandas as pd

from ..io import write_csv

COLUMNS = ["epoch", "train_loss", "val_loss", "train_accuracy", "val_accuracy",
           "train_balanced_accuracy", "val_balanced_accuracy", "train_roc_auc", "val_roc_auc",
           "lr", "epoch_time_s"]


class MetricsCSV(L.Callback):
    """Rewrite ``metrics.csv`` atomically after each validation: one row per epoch with train
    and validation loss, accuracy, balanced accuracy, ROC AUC, learning rate and seconds.

    The row of epoch ``e`` is written before the checkpoint of epoch ``e`` (Lightning runs
    checkpoint callbacks last), and the rows are part of the checkpoint (``state_dict``):
    on resume the file is rewritten from the restored rows, so epochs that are repeated
    after a crash appear once. Every column but ``epoch_time_s`` (wall-clock seconds of
    the epoch, training and validation) is identical between two deterministic runs.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.rows: list[dict] = []
        self._start = None

    def state_dict(self) -> dict:
        return {"rows": [dict(row) for row in self.rows]}

    def load_state_dict(self, state_dict: dict) -> None:
        self.rows = [dict(row) for row in state_dict.get("rows", [])]

    def on_train_start(self, trainer, pl_module):
        # fresh run: no rows; resumed run: the rows restored from the checkpoint (a row
        # written after that checkpoint belongs to an epoch that is run again)
        if self.rows or self.path.exists():
            write_csv(self.path, pd.DataFrame(self.rows, columns=_columns(self.rows)))

    def on_train_epoch_start(self, trainer, pl_module):
        self._start = time.perf_counter()

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        row = {"epoch": trainer.current_epoch}
        for column in COLUMNS[1:-2]:
            value = metrics.get(column)
            row[column] = float(value) if value is not None else math.nan
        for key in sorted(metrics):  # the task metrics of multilabel/regression (val_map, val_mae, ...)
            if key.startswith(("train_", "val_")) and key not in COLUMNS and key not in ("val_selection",
                                                                                           "train_loss_step"):
                row[key] = float(metrics[key])
        row["lr"] = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else math.nan
        row["epoch_time_s"] = round(time.perf_counter() - (self._start or time.perf_counter()), 3)
        self.rows = [r for r in self.rows if r["epoch"] != row["epoch"]] + [row]
        if trainer.is_global_zero:  # one writer in multi-process (DDP) training
            write_csv(self.path, pd.DataFrame(self.rows, columns=_columns(self.rows)))


class ValidateLastEpoch(L.Callback):
    """Validate after the last epoch whatever ``check_val_every_n_epoch`` says (Lightning
    validates only when the epoch number is a multiple of it): the last validation
    re-estimates the batch-norm statistics that the kept last weights carry
    (:class:`~medclf.training.batchnorm.CleanBatchNormStatistics`) and gives the curves
    their final point."""

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.max_epochs is not None and trainer.current_epoch == trainer.max_epochs - 1:
            trainer.check_val_every_n_epoch = 1


def _columns(rows: list[dict]) -> list[str]:
    """:data:`COLUMNS` with any task metric columns of the rows after them."""
    extra = sorted({key for row in rows for key in row} - set(COLUMNS))
    return COLUMNS + extra
