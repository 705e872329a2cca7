"""Report per-epoch validation metrics to an Optuna trial and stop hopeless trials."""
from __future__ import annotations

import math

import lightning as L


class OptunaPruning(L.Callback):
    """After each validation epoch, report ``monitor`` to the trial and stop when it should prune.

    The same idea as optuna-integration's ``PyTorchLightningPruningCallback``, written for
    Lightning 2.6: instead of raising inside the fit loop it asks the trainer to stop, so
    the trial's run directory keeps complete checkpoints and metrics; ``pruned`` tells the
    objective to raise :class:`optuna.TrialPruned` afterwards.

    Args:
        trial: the ``optuna.Trial`` of this run.
        monitor: logged validation metric, e.g. ``val_roc_auc`` (epoch index = step).
    """

    def __init__(self, trial, monitor: str):
        self.trial = trial
        self.monitor = monitor
        self.pruned = False

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None or not math.isfinite(float(value)):
            return
        epoch = trainer.current_epoch
        self.trial.report(float(value), step=epoch)
        if self.trial.should_prune():
            self.pruned = True
            trainer.should_stop = True
