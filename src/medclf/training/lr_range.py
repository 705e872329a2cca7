"""Leslie Smith's learning-rate range test (Smith, "Cyclical learning rates for training neural
networks", WACV 2017) through Lightning's ``Tuner.lr_find``."""
from __future__ import annotations

import contextlib
import io
import tempfile
import warnings
from pathlib import Path

import lightning as L
import matplotlib
import matplotlib.pyplot as plt
from lightning.pytorch.tuner import Tuner
from torch import nn

from .. import rundir
from ..data.datamodule import ImageDataModule
from ..io import atomic_write
from .module import Classifier

matplotlib.use("Agg")


def lr_range_test(model: nn.Module, images, labels, cfg, out: Path | None, num_training: int = 40,
                  num_classes: int | None = None, progress: bool = True):
    """Leslie Smith's LR range test with Lightning's ``Tuner.lr_find`` on the subset.

    Used by ``medclf sanity`` and by ``train.lr=auto`` (:mod:`medclf.training.auto_lr`).
    ``lr_find`` saves the model to a temporary checkpoint first and restores it when the test
    ends, also when its training loop raises (a ``finally`` block in Lightning 2.6).

    Args:
        images: ``(N, C, *spatial)``; labels: ``(N,)`` class indices.
        num_training: learning rates tried (one step each), from 1e-6 to 1.
        num_classes: classes of the model (default: ``labels.max() + 1``).
        progress: show lr_find's progress bar (on stderr).

    Returns:
        the suggested learning rate (steepest descent of the smoothed loss) or None; writes
        ``lr_range_test.png`` into ``out``.
    """
    run_cfg = cfg.model_copy(deep=True)
    run_cfg.augment.enabled = False
    run_cfg.train.schedule = "none"
    run_cfg.train.batch_size = min(run_cfg.train.batch_size, len(labels))
    run_cfg.train.label_smoothing = 0.0
    run_cfg.train.mixup_alpha = 0.0  # the range test reads the plain loss, as augmentation is off
    if run_cfg.train.lr == "auto":
        run_cfg.train.lr = 1e-3  # any number: lr_find sets the learning rate of every step
    module = Classifier(model, num_classes or int(labels.max()) + 1, run_cfg.train)
    data = ImageDataModule({"train": (images, labels), "val": (images, labels)}, run_cfg)
    with tempfile.TemporaryDirectory(prefix="medclf-lr-find-") as root, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # default_root_dir: where lr_find keeps its temporary checkpoint of the initial weights
        trainer = L.Trainer(accelerator=cfg.trainer.accelerator, devices=1, logger=False,
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                            num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=root)
        quiet = contextlib.nullcontext() if progress else contextlib.redirect_stderr(io.StringIO())
        with quiet:  # lr_find always draws a tqdm bar
            finder = Tuner(trainer).lr_find(module, datamodule=data, min_lr=1e-6, max_lr=1.0,
                                            num_training=num_training, early_stop_threshold=4.0,
                                            update_attr=False)
    if finder is None:
        return None
    suggestion = finder.suggestion()
    if out is not None:
        figure = finder.plot(suggest=suggestion is not None)
        figure.axes[0].set_title("LR range test (Smith 2017)")
        atomic_write(out / rundir.LR_RANGE_PLOT, lambda tmp: figure.savefig(tmp, format="png", dpi=100))
        plt.close(figure)
    return float(suggestion) if suggestion else None
