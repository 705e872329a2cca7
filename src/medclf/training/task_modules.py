"""The LightningModule of each task (:mod:`medclf.training.tasks` describes the kinds):
:class:`~medclf.training.module.Classifier` for classification, and the two below."""
from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from ..errors import ConfigError
from .fit import class_weights
from .module import Classifier
from .tasks import (
    CLASSIFICATION,
    MULTILABEL,
    REGRESSION,
    check_loss,
    multilabel_summary,
    pos_weight,
    regression_loss,
    target_scale,
)


class MultilabelModule(Classifier):
    """One sigmoid per finding: logits ``(N, K)``, targets float ``(N, K)`` of 0/1.

    Per epoch: ``{split}_loss``, ``{split}_roc_auc`` (macro over findings with both
    classes present), ``{split}_map`` (macro average precision), scikit-learn's.
    """

    def __init__(self, model, num_classes: int, train_config, pos_weights: torch.Tensor):
        super().__init__(model, num_classes, train_config, None)
        self.register_buffer("pos_weights", torch.as_tensor(pos_weights, dtype=torch.float32))

    def _loss(self, logits, labels):
        return F.binary_cross_entropy_with_logits(logits, labels.float(), pos_weight=self.pos_weights)

    def epoch_metrics(self, split, outputs):
        logits = torch.cat([o[0] for o in outputs])
        labels = torch.cat([o[1] for o in outputs]).cpu().numpy()
        probs = torch.sigmoid(logits).cpu().numpy()
        loss = float(sum(o[2] for o in outputs) / len(labels))
        return {f"{split}_loss": loss, **{f"{split}_{k}": v for k, v in multilabel_summary(labels, probs).items()}}


class RegressionModule(Classifier):
    """One output, the standardised target: logits ``(N, 1)``, targets float ``(N,)`` in
    target units, standardised inside the loss by the stored training ``target_mean`` and
    ``target_std``.

    Per epoch: ``{split}_loss`` (standardised scale), ``{split}_mae`` and ``{split}_rmse``
    (target units), ``{split}_r2``.
    """

    def __init__(self, model, train_config, scale: dict):
        super().__init__(model, 1, train_config, None)
        self.register_buffer("target_mean", torch.tensor(float(scale["target_mean"])))
        self.register_buffer("target_std", torch.tensor(float(scale["target_std"])))

    def _loss(self, logits, labels):
        return regression_loss(logits, labels, self.target_mean, self.target_std, self.cfg.loss)

    def epoch_metrics(self, split, outputs):
        pred = torch.cat([o[0] for o in outputs]).reshape(-1).double() * self.target_std.double() \
            + self.target_mean.double()
        labels = torch.cat([o[1] for o in outputs]).double().to(pred.device)
        loss = float(sum(o[2] for o in outputs) / len(labels))
        error = pred - labels
        total = ((labels - labels.mean()) ** 2).sum()
        r2 = float(1 - (error ** 2).sum() / total) if total > 0 else math.nan
        return {f"{split}_loss": loss, f"{split}_mae": float(error.abs().mean()),
                f"{split}_rmse": float(error.pow(2).mean().sqrt()), f"{split}_r2": r2}


def build_module(network, manifest, cfg, train_targets: torch.Tensor):
    """The LightningModule for the run's task.

    Args:
        network: ``(N, C, *spatial) -> (N, num_classes)`` (regression: ``(N, 1)``).
        manifest: the run's manifest (``task``, ``class_names``, training targets).
        cfg: the resolved configuration.
        train_targets: the training split's targets (see
            :meth:`~medclf.data.sources.manifest.Manifest.targets`).

    Raises:
        ConfigError: ``train.loss`` does not fit the task, or ``train.mixup_alpha`` is set
            for a task other than classification.
    """
    task = manifest.task
    check_loss(task, cfg.train.loss, cfg.train.monitor)
    if task != CLASSIFICATION and cfg.train.mixup_alpha > 0:
        raise ConfigError(f"train.mixup_alpha={cfg.train.mixup_alpha}: mixup is for classification "
                          f"(one class per image); this run's task is {task}. Set train.mixup_alpha=0.")
    if task == MULTILABEL:
        return MultilabelModule(network, manifest.num_classes, cfg.train,
                                pos_weight(train_targets, cfg.train.class_weights))
    if task == REGRESSION:
        return RegressionModule(network, cfg.train, target_scale(train_targets.numpy()))
    weights = class_weights(train_targets, manifest.num_classes, cfg.train.class_weights, cfg.train.sampler)
    return Classifier(network, manifest.num_classes, cfg.train, weights)
