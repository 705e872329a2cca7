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
    """Rewrite ``metrics.csv`` atomically after each epoch: one row per epoch with train and
    validation loss, accuracy, balanced accuracy, ROC AUC, learning rate and seconds.

    On resume, rows of epochs after the restored one are dropped and new rows appended.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.rows: list[dict] = []
        self._start = None

    def on_train_start(self, trainer, pl_module):
        if self.path.exists():
            old = pd.read_csv(self.path)
            self.rows = old[old.epoch < trainer.current_epoch].to_dict("records")

    def on_train_epoch_start(self, trainer, pl_module):
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        metrics = trainer.callback_metrics
        row = {"epoch": trainer.current_epoch}
        for column in COLUMNS[1:-2]:
            value = metrics.get(column)
            row[column] = float(value) if value is not None else math.nan
        row["lr"] = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else math.nan
        row["epoch_time_s"] = round(time.perf_counter() - (self._start or time.perf_counter()), 3)
        self.rows.append(row)
        if trainer.is_global_zero:  # one writer in multi-process (DDP) training
            write_csv(self.path, pd.DataFrame(self.rows, columns=COLUMNS))
