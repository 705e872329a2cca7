"""The task kind of a run, and what depends on it: loss, output activation, per-epoch
metrics, the planned settings, and what is folded into the network after training.

Three kinds (``data.task``; unset means classification, as before):

- ``classification``: one class per image; softmax over ``num_classes`` logits,
  cross-entropy (:class:`~medclf.training.module.Classifier`, unchanged).
- ``multilabel``: ``K`` findings per image, each 0/1; one sigmoid per finding,
  ``BCEWithLogitsLoss``, optionally with per-finding ``pos_weight = negatives / positives``
  of the training split (``train.class_weights='auto'``, PyTorch's documented use of
  ``pos_weight`` for imbalance; planned off, see :func:`plan_task`).
- ``regression``: one number per image; the network's single output predicts the target
  standardised with the training mean and standard deviation; the loss (``train.loss``:
  ``l1``, planned, ``mse`` or ``huber`` with ``delta=1``, i.e. one training standard
  deviation) is on that scale; after training the scale is folded into the last linear layer
  (:func:`fold_target_scale`), so the network outputs the target's units.

Other stages ask this module (``task_of(config)``, :func:`activate`,
:func:`finalize_outputs`) instead of testing the kind themselves. It imports no Lightning,
so that the commands that only predict (``evaluate``, ``predict``, ``explain``, ``export``)
start without it; the training modules of each task are in
:mod:`medclf.training.task_modules`.
"""
from __future__ import annotations

import logging
import math

import numpy as np
import torch
from sklearn.metrics import average_precision_score, roc_auc_score
from torch.nn import functional as F

from ..errors import ConfigError
from ..models.prior import add_logit_shift, apply_output_prior, last_linear

log = logging.getLogger("medclf")

CLASSIFICATION, MULTILABEL, REGRESSION = "classification", "multilabel", "regression"
LOSSES = {CLASSIFICATION: ("cross_entropy",), MULTILABEL: ("bce",), REGRESSION: ("l1", "huber", "mse")}
PLANNED = {  # train.* settings planned per task (classification: the planner's own choices)
    MULTILABEL: {"loss": "bce", "monitor": "val_map", "sampler": "shuffle", "class_weights": "none",
                 "label_smoothing": 0.0, "output_prior": "balanced", "output_bias": "none"},
    REGRESSION: {"loss": "l1", "monitor": "val_mae", "sampler": "shuffle", "class_weights": "none",
                 "label_smoothing": 0.0, "output_prior": "balanced", "output_bias": "none"},
}


def task_of(config) -> str:
    """The task kind of a configuration (``data.task``; None is classification)."""
    return getattr(config.data, "task", None) or CLASSIFICATION


MONITORS = {CLASSIFICATION: ("val_roc_auc", "val_loss", "val_accuracy", "val_balanced_accuracy"),
            MULTILABEL: ("val_map", "val_roc_auc", "val_loss"), REGRESSION: ("val_mae", "val_r2", "val_loss")}


def check_loss(task: str, loss: str, monitor: str | None = None) -> None:
    """Raise ConfigError when ``train.loss`` (or ``train.monitor``) does not fit the task
    (e.g. cross_entropy for regression, val_map for classification)."""
    if loss not in LOSSES[task]:
        raise ConfigError(f"train.loss={loss} does not fit data.task={task}; use one of {', '.join(LOSSES[task])}")
    if monitor is not None and monitor not in MONITORS[task]:
        raise ConfigError(f"train.monitor={monitor} is not logged for data.task={task}; use one of "
                          f"{', '.join(MONITORS[task])}")


def activate(logits: torch.Tensor, task: str) -> torch.Tensor:
    """Network outputs ``(N, K)`` to predictions: softmax probabilities ``(N, K)``
    (classification), sigmoid probabilities ``(N, K)`` (multilabel), or the values
    themselves ``(N, 1)`` (regression, already in target units after :func:`finalize_outputs`)."""
    if task == MULTILABEL:
        return torch.sigmoid(logits)
    if task == REGRESSION:
        return logits
    return logits.softmax(dim=1)


def target_scale(targets) -> dict:
    """``{"target_mean", "target_std"}`` of training targets ``(N,)`` (population sd; 1 when constant)."""
    values = np.asarray(targets, dtype=np.float64)
    std = float(values.std())
    return {"target_mean": float(values.mean()), "target_std": std if std > 0 else 1.0}


def task_facts(manifest) -> dict:
    """What a run stores about its task in ``dataset.json`` and ``plan.json``: ``task``, and
    for regression the training target scale (:func:`target_scale`); ``{}`` for classification."""
    if manifest.task == CLASSIFICATION:
        return {}
    facts = {"task": manifest.task}
    if manifest.task == REGRESSION:
        facts.update(target_scale(manifest.targets("train")))
    else:
        facts["train_prevalence"] = [float(v) for v in manifest.targets("train").mean(axis=0)]
    return facts


def plan_task(cfg, fp: dict) -> None:
    """Planner decision for multilabel/regression fingerprints (``fp["task"]``): record
    ``data.task`` and set the loss, monitor, sampler and weights of :data:`PLANNED`
    (class-balanced batches are a classification idea). Classification: unchanged.

    Multilabel plans weigh every image the same (``train.class_weights='none'``: no positive
    weight per finding). The per-finding thresholds are chosen on validation anyway, so
    up-weighting rare positives only distorted the ranking and the calibration. Decided on
    ODIR validation figures (160 px, seed 42, the epoch chosen by validation mAP): mAP 0.395
    with negatives/positives weights -> 0.431 without, macro ROC AUC 0.772 -> 0.782.

    Multilabel 2D plans that train with left-right flips also predict with them
    (``eval.tta``, the image and its mirror averaged, no shifts), as 2D classification
    plans do. Decided on validation figures of ODIR fundus photographs, in
    each of three runs (224, 160 and 128 px): macro ROC AUC +0.004, +0.009, +0.004 and mAP
    +0.022, +0.019, +0.011. Regression keeps one pass: on bone age the mirror did not lower
    the validation error (20.46 -> 20.61 months).
    """
    task = fp.get("task", CLASSIFICATION)
    if task == CLASSIFICATION:
        return
    cfg.data.task = task
    for key, value in PLANNED[task].items():
        setattr(cfg.train, key, value)
    if task == MULTILABEL and cfg.model.spatial_dims == 2 and cfg.augment.flip_prob > 0:
        cfg.eval.tta = True
        cfg.eval.tta_shift = 0.0


def pos_weight(targets: torch.Tensor, setting="auto") -> torch.Tensor:
    """Per-finding positive weights ``(K,)``, the ``pos_weight`` of ``BCEWithLogitsLoss``, from
    ``train.class_weights``: 'auto', negatives / positives in training targets ``(N, K)``
    (clamped to [0.1, 100]); 'none', ones (every image counts the same); a list, one weight
    per finding.

    Raises:
        ConfigError: a list whose length is not the number of findings.
    """
    k = targets.shape[1]
    if setting == "none":
        return torch.ones(k)
    if isinstance(setting, (list, tuple)):
        if len(setting) != k:
            raise ConfigError(f"train.class_weights: {len(setting)} weights given for {k} findings")
        return torch.as_tensor(setting, dtype=torch.float32)
    positives = targets.float().sum(dim=0)
    negatives = len(targets) - positives
    return (negatives / positives.clamp(min=1)).clamp(0.1, 100.0)


def multilabel_summary(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """Macro ROC AUC and mean average precision over the findings of ``(N, K)`` 0/1
    labels and probabilities that have both classes (scikit-learn); NaN when none has."""
    usable = [k for k in range(labels.shape[1]) if 0 < labels[:, k].sum() < len(labels)]
    if not usable:
        return {"roc_auc": math.nan, "map": math.nan}
    return {"roc_auc": float(np.mean([roc_auc_score(labels[:, k], probabilities[:, k]) for k in usable])),
            "map": float(np.mean([average_precision_score(labels[:, k], probabilities[:, k]) for k in usable]))}


def regression_loss(outputs: torch.Tensor, targets: torch.Tensor, target_mean, target_std, loss: str) -> torch.Tensor:
    """``train.loss`` (``l1``, ``mse`` or ``huber`` with ``delta=1``) between the network's
    outputs ``(N, 1)`` (standardised scale) and targets ``(N,)`` in target units,
    standardised by the training ``target_mean`` and ``target_std``."""
    z = (targets.float() - target_mean) / target_std
    pred = outputs.reshape(-1)
    if loss == "mse":
        return F.mse_loss(pred, z)
    if loss == "l1":
        return F.l1_loss(pred, z)
    return F.huber_loss(pred, z, delta=1.0)


def fold_target_scale(model: torch.nn.Module, scale: dict) -> None:
    """Fold ``y = target_std * z + target_mean`` into the last linear layer (1 output) of
    the model, in place, so that it outputs target units (each branch of a fusion)."""
    std, mean = float(scale["target_std"]), float(scale["target_mean"])
    layers = [last_linear(branch, 1) for branch in getattr(model, "branches", lambda: [model])()]
    with torch.no_grad():
        for layer in layers:
            layer.weight.mul_(std)
            layer.bias.mul_(std).add_(mean)


def finalize_outputs(model: torch.nn.Module, task: str, train_counts, train_config, facts: dict) -> None:
    """What every consumer of a trained network applies after loading its weights, in place:
    the output prior (classification, :func:`medclf.models.prior.apply_output_prior`), the
    target scale (regression, ``facts`` holds ``target_mean``/``target_std``), nothing
    (multilabel). A classification run whose ``facts`` (``dataset.json``) hold an
    ``output_bias`` shift (``train.output_bias``) gets it added after the output prior."""
    if task == REGRESSION:
        if "target_mean" not in facts:
            raise ConfigError("a regression run needs target_mean and target_std (dataset.json)")
        fold_target_scale(model, facts)
    elif task == CLASSIFICATION:
        apply_output_prior(model, train_counts, train_config)
        if facts.get("output_bias"):
            add_logit_shift(model, facts["output_bias"])


def task_subset(manifest, n: int, seed: int):
    """A seeded sample of ``n`` training rows of a multilabel/regression manifest (the
    sanity checks' subset; classification samples per class instead)."""
    from ..data.sources import Manifest  # the data stage, as every caller already has it
    train = manifest.frame[manifest.frame.split == "train"]
    frame = train.sample(n=min(n, len(train)), random_state=seed).sort_index().reset_index(drop=True)
    return Manifest(frame, manifest.class_names, task=manifest.task)


def initial_loss(task: str, logits: torch.Tensor, targets: torch.Tensor, train_config, facts: dict | None = None):
    """``(loss, expected)`` at initialisation, unweighted: the task's loss of ``logits``
    ``(N, K)`` and the loss of an all-zero output, the uninformed guess a fresh network
    should be close to: ``log(K)`` (classification, uniform softmax), ``log(2)``
    (multilabel, p = 0.5 per finding), the loss of predicting the training mean
    (regression; 1 for mse on the standardised target). ``facts``: ``target_mean``/``target_std``."""
    zeros = torch.zeros_like(logits)
    if task == MULTILABEL:
        def loss(out):
            return F.binary_cross_entropy_with_logits(out, targets.float())
    elif task == REGRESSION:
        scale = facts or target_scale(targets.numpy())

        def loss(out):
            return regression_loss(out, targets, float(scale["target_mean"]), float(scale["target_std"]),
                                   train_config.loss)
    else:
        def loss(out):
            return F.cross_entropy(out, targets)
    return loss(logits), float(loss(zeros))
