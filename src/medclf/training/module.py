"""The LightningModule: model, weighted cross-entropy, optimiser, schedule, epoch metrics, and
:func:`roc_auc`, the project's one ROC AUC (re-exported by :mod:`medclf.evaluation.metrics`)."""
from __future__ import annotations

import math

import lightning as L
import torch
from torch import nn
from torch.nn import functional as F

from ..errors import TrainingDivergedError
from .finetune import parameter_groups
from .metrics import roc_auc
from .optim import build_optimizer

MONITOR_MODES = {"val_roc_auc": "max", "val_loss": "min", "val_accuracy": "max",
                 "val_balanced_accuracy": "max", "val_map": "max", "val_mae": "min", "val_r2": "max"}


class Classifier(L.LightningModule):
    """Wraps a network ``(N, C, *spatial) -> (N, num_classes)`` for training.

    Per epoch it logs ``{train,val}_{loss,accuracy,balanced_accuracy,roc_auc}`` (ROC AUC is
    one-vs-rest macro, which for two classes equals the binary AUC) and ``val_selection``:
    the monitored metric with ties broken by the lower validation loss, used to pick the
    best checkpoint.

    Args:
        model: the network.
        num_classes: number of classes.
        train_config: the ``train`` config section.
        class_weights: float tensor ``(num_classes,)`` for the cross-entropy, or None.
    """

    def __init__(self, model: nn.Module, num_classes: int, train_config, class_weights=None):
        super().__init__()
        self.model = model
        self.num_classes = num_classes
        self.cfg = train_config
        self.register_buffer("class_weights", None if class_weights is None
                             else torch.as_tensor(class_weights, dtype=torch.float32))
        self._outputs = {"train": [], "val": []}

    def on_fit_start(self) -> None:
        # 2D convolutions run faster on channels-last tensors (oneDNN on CPUs, tensor cores on
        # GPUs; PyTorch's "channels last" memory format); the values are unchanged
        if not any(p.dim() == 5 for p in self.model.parameters()):  # 3D networks keep their layout
            self.model.to(memory_format=torch.channels_last)

    def on_train_epoch_start(self) -> None:
        # the training figures of a validated epoch are that epoch's alone, also when the
        # epochs before it were not validated (train.check_val_every_n_epoch)
        self._outputs["train"].clear()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)

    def _loss(self, logits, labels):
        return F.cross_entropy(logits, labels, weight=self.class_weights,
                               label_smoothing=self.cfg.label_smoothing)

    def _mixup_loss(self, images, labels):
        """Logits ``(N, num_classes)`` of a mixup batch and its loss (``train.mixup_alpha``).

        mixup (Zhang et al. 2018): image ``i`` becomes ``lam_i * x_i + (1 - lam_i) * x_perm(i)``
        with ``lam_i ~ Beta(alpha, alpha)``, and its loss is the same combination of the
        cross-entropies against both labels (normalised by the mixed class weights, as the
        weighted mean of the plain loss is). MONAI's ``MixUp`` mixes segmentation-shaped
        labels only, hence these few lines. The draws come from torch's global generator,
        which :class:`~medclf.training.reliability.EpochSeeder` seeds from ``(seed, epoch)``.
        """
        n = len(labels)
        lam = torch.distributions.Beta(self.cfg.mixup_alpha, self.cfg.mixup_alpha).sample((n,))
        perm = torch.randperm(n)
        lam, perm = lam.to(images.device), perm.to(images.device)
        weight = lam.view(-1, *[1] * (images.dim() - 1)).to(images.dtype)
        mixed = weight * images + (1 - weight) * images[perm]
        logits = self(mixed)
        losses = [F.cross_entropy(logits, y, weight=self.class_weights, reduction="none",
                                  label_smoothing=self.cfg.label_smoothing) for y in (labels, labels[perm])]
        total = (lam * losses[0] + (1 - lam) * losses[1]).sum()
        if self.class_weights is None:
            return logits, total / n
        weights = lam * self.class_weights[labels] + (1 - lam) * self.class_weights[labels[perm]]
        return logits, total / weights.sum()

    def training_step(self, batch, batch_idx):
        images, labels = batch
        if self.cfg.mixup_alpha > 0 and len(labels) > 1:
            logits, loss = self._mixup_loss(images, labels)
        else:
            logits = self(images)
            loss = self._loss(logits, labels)
        if not torch.isfinite(loss):
            raise TrainingDivergedError(
                f"the training loss became {loss.item()} at epoch {self.current_epoch}, step "
                f"{self.global_step}. Likely causes: a learning rate too high (train.lr="
                f"{self.cfg.lr}; try 10x lower), inputs that are not normalised "
                f"(preprocess.normalization), or gradient clipping switched off "
                f"(train.gradient_clip). The run stopped instead of training on garbage.")
        self._outputs["train"].append((logits.detach().float(), labels, loss.detach() * len(labels)))
        self.log("train_loss_step", loss, prog_bar=True, on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch, batch_idx):
        images, labels = batch
        logits = self(images)
        loss = self._loss(logits, labels)
        self._outputs["val"].append((logits.float(), labels, loss * len(labels)))

    def on_validation_epoch_end(self):
        if self.trainer.sanity_checking:
            self._outputs["val"].clear()
            return
        metrics = {}
        for split in ("train", "val"):
            if self._outputs[split]:
                outputs = self._outputs[split]
                if self.trainer.world_size > 1:  # DDP: every rank computes on all ranks' outputs
                    outputs = self._gather(outputs)
                metrics.update(self.epoch_metrics(split, outputs))
            self._outputs[split].clear()
        monitor = self.cfg.monitor
        if monitor in metrics and "val_loss" in metrics and monitor != "val_loss":
            # among equal AUCs (frequent on a small validation split) prefer the lower loss
            sign = 1.0 if MONITOR_MODES[monitor] == "max" else -1.0  # a lower loss always wins the tie
            metrics["val_selection"] = metrics[monitor] - sign * 1e-4 * min(metrics["val_loss"], 10.0)
        elif monitor in metrics:
            metrics["val_selection"] = metrics[monitor]
        for key, value in metrics.items():
            self.log(key, torch.tensor(value, dtype=torch.float32), prog_bar=key in ("val_loss", "val_roc_auc"))

    def epoch_metrics(self, split: str, outputs) -> dict[str, float]:
        """The epoch's ``{split}_*`` metrics from its ``(logits, labels, loss_sum)`` tuples
        (:func:`epoch_metrics`; the task modules of :mod:`medclf.training.tasks` override it)."""
        return epoch_metrics(split, outputs, self.num_classes)

    def _gather(self, outputs):
        """Concatenate one rank's ``(logits, labels, loss_sum)`` tuples and all-gather them
        across ranks (Lightning's DistributedSampler gives every rank the same count)."""
        logits = torch.cat([o[0] for o in outputs])
        labels = torch.cat([o[1] for o in outputs])
        loss_sum = torch.stack([torch.as_tensor(o[2], dtype=torch.float32) for o in outputs]).sum()
        logits, labels, loss_sum = (self.all_gather(t) for t in (logits, labels, loss_sum))
        return [(logits.flatten(0, 1), labels.flatten(0, 1), loss_sum.sum())]

    def configure_optimizers(self):
        cfg = self.cfg
        params = parameter_groups(self.model, self.num_classes, cfg)  # backbone_lr_scale (fine-tuning)
        optimizer = build_optimizer(params, cfg)
        scheduler = build_scheduler(optimizer, cfg, self.trainer)
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": scheduler}


def build_scheduler(optimizer, cfg, trainer):
    """The learning-rate schedule as a Lightning scheduler dict (or None for 'none')."""
    steps_per_epoch = max(1, math.ceil(trainer.estimated_stepping_batches / max(1, trainer.max_epochs)))
    total = max(2, int(trainer.estimated_stepping_batches))
    warmup = min(int(cfg.warmup_epochs * steps_per_epoch), total - 1)
    sched = torch.optim.lr_scheduler
    if cfg.schedule == "none" or (cfg.schedule in ("onecycle", "cosine") and total < 4):
        return None  # too few steps to warm up and anneal: constant learning rate
    if cfg.schedule == "step":
        return {"scheduler": sched.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma),
                "interval": "epoch"}
    if cfg.schedule == "plateau":
        return {"scheduler": sched.ReduceLROnPlateau(optimizer, mode="min", factor=cfg.gamma, patience=5),
                "interval": "epoch", "monitor": "val_loss"}
    if cfg.schedule == "onecycle":
        return {"scheduler": sched.OneCycleLR(optimizer, max_lr=[cfg.lr * g.get("lr_scale", 1.0) for g in optimizer.param_groups], total_steps=total,
                                              pct_start=min(max(warmup, 2) / total, 0.5),
                                              anneal_strategy="cos"), "interval": "step"}
    # cosine with linear warm-up
    cosine = sched.CosineAnnealingLR(optimizer, T_max=max(1, total - warmup))
    if warmup > 0:
        linear = sched.LinearLR(optimizer, start_factor=0.01, total_iters=warmup)
        cosine = sched.SequentialLR(optimizer, [linear, cosine], milestones=[warmup])
    return {"scheduler": cosine, "interval": "step"}


def epoch_metrics(split: str, outputs, num_classes: int) -> dict[str, float]:
    """Loss, accuracy, balanced accuracy and macro one-vs-rest ROC AUC over one epoch.

    ROC AUC is :func:`roc_auc` on the softmax probabilities (NaN when the epoch's split lacks
    a class)."""
    logits = torch.cat([o[0] for o in outputs])
    labels = torch.cat([o[1] for o in outputs])
    loss = float(sum(o[2] for o in outputs) / len(labels))
    preds = logits.argmax(dim=1)
    recalls = [(preds[labels == c] == c).float().mean() for c in range(num_classes) if (labels == c).any()]
    result = {f"{split}_loss": loss,
              f"{split}_accuracy": float((preds == labels).float().mean()),
              f"{split}_balanced_accuracy": float(torch.stack(recalls).mean())}
    # the project's one ROC AUC and absent-class rule (NaN when the split lacks a class)
    result[f"{split}_roc_auc"] = roc_auc(labels.cpu(), logits.softmax(dim=1).cpu())
    return result
