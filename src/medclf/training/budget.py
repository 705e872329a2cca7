"""Training time from the network's arithmetic: the epochs that fit a time budget, and the
planned time that ``medclf train`` prints before it starts.

The cost of a training step is counted, not timed: PyTorch's ``FlopCounterMode`` counts
the floating-point operations of one image's forward and backward pass through the planned
network, and :data:`SECONDS_PER_GFLOP` converts them to seconds on a 2-core laptop CPU. A
count does not depend on how busy the machine is, so the same data and settings always plan
the same epochs (runs repeat), and the estimate scales with image size, width and depth.
"""
from __future__ import annotations

import math

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..models import create_model

SECONDS_PER_GFLOP = 0.022
"""Seconds of training per GFLOP (forward + backward) on a 2-core CPU for the k-fold
ensemble, whose fold models train in parallel processes: whole epochs of the default
``small_cnn`` in channels-last layout with batched augmentation, validation and checkpoints
(Lightning), measured on ``covid19-xray`` (0.0216)."""

ONE_MODEL_SECONDS_PER_GFLOP = 0.029
"""The same for one model trained in one process with every core: the Python of each step
runs on one core while the others wait, so the arithmetic runs slower (measured on whole
epochs of ``chest-xray-pneumonia`` at 224 px, 35-47 s for 4434 images: 0.026-0.034)."""


def training_gflop(config) -> float:
    """GFLOP of one image's forward and backward pass through the configured network.

    Args:
        config: a :class:`~medclf.config.Config` (``model``, ``data.in_channels``,
            ``data.image_size``).
    """
    with torch.random.fork_rng():  # counting must not move the run's random state
        network = create_model(config.model.model_copy(update={"weights": None}), config.data.in_channels, 2)
    example = torch.zeros(2, config.data.in_channels, *config.data.image_size)  # 2: batch norm needs > 1
    with FlopCounterMode(display=False) as counter:
        network(example).sum().backward()
    return counter.get_total_flops() / 2 / 1e9


def images_per_epoch(config, n_pool: int, n_train: int) -> int:
    """Training images of one epoch of every model together: ``n_pool * (k - 1)`` for a
    k-fold ensemble (each fold trains on the other folds), else ``n_train``."""
    k = config.train.folds
    return n_pool * (k - 1) if k >= 2 else n_train


def planned_seconds(config, n_pool: int, n_train: int, epochs: int | None = None) -> float:
    """Estimated training seconds of a run on a 2-core CPU (all folds together)."""
    epochs = config.train.max_epochs if epochs is None else epochs
    per_gflop = SECONDS_PER_GFLOP if config.train.folds >= 2 else ONE_MODEL_SECONDS_PER_GFLOP
    return epochs * images_per_epoch(config, n_pool, n_train) * training_gflop(config) * per_gflop


def epochs_for_budget(config, n_pool: int, n_train: int, min_epochs: int, max_epochs: int) -> int:
    """The most epochs whose estimated time fits ``train.time_budget_s``, within
    ``min_epochs``-``max_epochs``.

    Args:
        config: the resolved configuration (``train.time_budget_s`` set).
        n_pool: training plus validation images; n_train: training images.
    """
    per_epoch = planned_seconds(config, n_pool, n_train, epochs=1)
    fitting = math.floor(config.train.time_budget_s / per_epoch) if per_epoch > 0 else max_epochs
    return int(max(min_epochs, min(max_epochs, fitting)))
