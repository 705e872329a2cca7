"""A run's network with its weights, and its class probabilities for preprocessed images
(one pass or test-time augmentation)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import rundir
from ..errors import ConfigError, RunDirError
from ..models import create_model
from ..models.ensemble import Ensemble
from ..training.tasks import finalize_outputs, task_of
from .clinical import tta_chunks, tta_views


def pick_device(accelerator: str = "auto") -> torch.device:
    """CUDA when available (and not forced to CPU), else CPU."""
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


@torch.no_grad()
def predict_probabilities(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 64,
                          device: torch.device | None = None) -> np.ndarray:
    """Softmax probabilities ``(N, num_classes)`` for images ``(N, C, *spatial)``."""
    device = device or pick_device()
    model = model.to(device).eval()
    chunks = [model(images[i:i + batch_size].to(device)).float().softmax(dim=1).cpu()
              for i in range(0, len(images), batch_size)]
    return torch.cat(chunks).numpy() if chunks else np.zeros((0, 0))


def tta_flip_axes(config) -> list[int]:
    """The axes that the training augmentation flips (the only flips a test-time view may
    use: a model trained without up-down flips has not learned up-down symmetry): ``-1``
    with ``augment.flip_prob``, ``-2`` with ``vertical_flip_prob``, ``-3`` (volumes) with
    ``depth_flip_prob``."""
    aug = config.augment
    if not aug.enabled:
        return []
    axes = [-1] if aug.flip_prob > 0 else []
    if aug.vertical_flip_prob > 0:
        axes.append(-2)
    if config.model.spatial_dims == 3 and aug.depth_flip_prob > 0:
        axes.append(-3)
    return axes


@torch.no_grad()
def predict_tta(model: torch.nn.Module, images: torch.Tensor, config, device: torch.device | None = None,
                one_pass: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Test-time augmentation: mean softmax probabilities ``(N, num_classes)`` over the views
    of :func:`~medclf.evaluation.clinical.tta_views` (flips along the axes of
    :func:`tta_flip_axes`, in every combination; shifts of ``eval.tta_shift``).
    ``one_pass``: the probabilities ``(N, num_classes)`` of the unchanged images when the
    caller has them already (the first view is then not predicted again).
    Returns ``(probabilities, number of views)``."""
    parts, count = [], 0
    for start, chunk in tta_chunks(images):
        views = tta_views(chunk, tta_flip_axes(config), config.eval.tta_shift)
        count = len(views)
        parts.append(np.mean([one_pass[start:start + len(chunk)] if i == 0 and one_pass is not None
                              else predict_probabilities(model, v, config.eval.batch_size, device)
                              for i, v in enumerate(views)], axis=0))
    return np.concatenate(parts), count


def load_model(run: rundir.Run, checkpoint: str | Path | None = None) -> torch.nn.Module:
    """The run's network with the weights of its best (else last) checkpoint, in eval mode;
    for a k-fold ensemble run (without ``checkpoint``), the :class:`~medclf.models.ensemble.Ensemble`
    of its fold models, each with the output prior of the images it trained on.

    Checkpoints are read with ``weights_only=True``. The logits are shifted to
    ``train.output_prior`` (:func:`medclf.models.prior.apply_output_prior`), as after training;
    a regression network gets its target scale (:func:`medclf.training.tasks.finalize_outputs`).

    Raises:
        RunDirError: the checkpoint is missing, damaged, holds code or objects that are not
            weights, or does not fit the run's network (names the file).
    """
    if run.is_ensemble and checkpoint is None:
        split = run.split()
        return Ensemble([_network(run, path, training_counts(fold_training_rows(split, k), run.class_names))
                         for k, path in enumerate(run.fold_checkpoints())]).eval()
    return _network(run, checkpoint or run.checkpoint, training_counts(run.split(), run.class_names))


def _network(run: rundir.Run, checkpoint: str | Path, counts) -> torch.nn.Module:
    model_cfg = run.config.model.model_copy(update={"weights": str(checkpoint)})
    try:
        model = create_model(model_cfg, run.config.data.in_channels, len(run.class_names)).eval()
    except ConfigError as err:  # the weights are the run's checkpoint, not the user's model.weights
        raise RunDirError(str(err).replace("model.weights: ", "checkpoint: ", 1)) from None
    # the output prior (classification) or the target scale (regression), as after training
    finalize_outputs(model, task_of(run.config), counts, run.config.train, run.dataset)
    return model


def fold_training_rows(split: pd.DataFrame, fold: int) -> pd.DataFrame:
    """The rows of a split table that fold ``fold``'s model of an ensemble run trained on:
    the pooled training rows (``fold >= 0``) of the other folds, as split ``train``."""
    rows = split[(split.fold >= 0) & (split.fold != fold)].copy()
    rows["split"] = "train"
    return rows


def training_counts(split: pd.DataFrame, class_names: list[str]) -> np.ndarray:
    """Training images per class ``(num_classes,)``, in class-name order, from a split table
    (``path``, ``label``, ``split``)."""
    train = split[split.split == "train"].label.astype(str).value_counts()
    return np.array([int(train.get(name, 0)) for name in class_names])
