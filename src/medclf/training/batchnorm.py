"""Batch-norm statistics of clean images: what the network meets at prediction time.

During training, batch normalisation keeps running means and variances of the features of
*augmented* batches (rotations and zooms that pad with black, intensity changes, noise),
and evaluation normalises with them. Clean images give features with other statistics,
and the running averages lag behind weights that move fast (a high learning rate), so a
network whose ranking is good (high ROC AUC) can put most images on one side of the
decision (seen on chest-xray-pneumonia at the third and sixth epoch of a 30-epoch run).

Before every validation, :class:`CleanBatchNormStatistics` re-estimates the running
statistics on :data:`BN_IMAGES` un-augmented training images, drawn as the training
batches are (class-balanced with the balanced sampler), with PyTorch's
``torch.optim.swa_utils.update_bn`` (the re-estimation that stochastic weight averaging
needs for the same reason, Izmailov et al. 2018). Training itself is unchanged: in training
mode batch norm uses the statistics of each batch; only evaluation uses the running ones,
and the checkpoints saved after validation carry the re-estimated statistics.
"""
from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import update_bn

from ..data.datamodule import balanced_weights

BN_IMAGES = 512
"""Most training images whose features give the running statistics (drawn as the training
batches are, the same each time): a few hundred images estimate a channel's mean and
variance over thousands of pixel positions each."""


def has_batch_norm(model: nn.Module) -> bool:
    """True when ``model`` has a batch-norm layer with running statistics."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats for m in model.modules())


def clean_batches(images, batch_size: int, class_balanced_labels=None, limit: int = BN_IMAGES):
    """Up to ``limit`` items of ``images`` ``(N, C, *spatial)`` (a tensor or a disk-streamed
    :class:`~medclf.data.store.DiskImages`) in batches ``(B, C, *spatial)``, drawn as the
    training batches are: the same items in the same order every time (a fixed generator).

    ``class_balanced_labels`` (class indices ``(N,)``, with the class-balanced sampler):
    ``min(limit, N)`` draws with every class equally likely, as that sampler draws; else a
    shuffled subset. Never more items than the split has: the forward passes cost time. Batch norm learnt on batches of that class mix, and a natural mix, or a split
    listed class by class (batches of one class, whose variances miss the differences
    between classes), gives other statistics.
    """
    rng = np.random.default_rng(0)
    if class_balanced_labels is not None:
        weights = balanced_weights(torch.as_tensor(class_balanced_labels)).double().numpy()  # the sampler's
        picked = rng.choice(len(weights), min(limit, len(weights)), replace=True, p=weights / weights.sum())
    else:
        picked = rng.permutation(len(images))[:limit]
    for start in range(0, len(picked), batch_size):
        yield images[picked[start:start + batch_size]]


class CleanBatchNormStatistics(L.Callback):
    """Re-estimate batch-norm running statistics on un-augmented training images before each
    validation (see the module docstring).

    Register it after a weight-averaging callback (EMA), so the averaged weights, which that
    callback swaps in for validation, are the ones whose statistics are re-estimated.

    Args:
        images: training images ``(N, C, H, W)`` or ``(N, C, D, H, W)``, preprocessed and
            not augmented.
        batch_size: images per forward pass: the training batch size, as the running
            variance is an average of per-batch variances.
        class_balanced_labels: training class indices ``(N,)`` when the training sampler is
            class-balanced (:func:`clean_batches` then draws like it), else None.
        last_epoch_only: re-estimate before the last epoch's validation only: for models
            that keep their last weights whatever the validation says (the k-fold
            ensemble's members), where earlier estimates would only cost time.
    """

    def __init__(self, images, batch_size: int, class_balanced_labels=None, last_epoch_only: bool = False):
        self.images = images
        self.batch_size = batch_size
        self.class_balanced_labels = class_balanced_labels
        self.last_epoch_only = last_epoch_only

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not has_batch_norm(pl_module) or len(self.images) == 0:
            return
        if self.last_epoch_only and trainer.current_epoch < trainer.max_epochs - 1:
            return
        batches = (batch.to(pl_module.device) for batch in clean_batches(self.images, self.batch_size,
                                                                       self.class_balanced_labels))
        with torch.no_grad():
            # resets the statistics, averages them over the batches in training mode, then restores
            # each layer's momentum and the module's mode (evaluation, as Lightning set it)
            update_bn(batches, pl_module)
