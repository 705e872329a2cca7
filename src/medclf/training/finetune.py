"""Fine-tuning: a lower learning rate for the backbone than for the head (parameter groups),
and a first phase with the backbone frozen (Lightning's :class:`BaseFinetuning`).

The head is the classifier layer of :func:`medclf.models.transfer.head_prefix`; everything
else is the backbone. Discriminative learning rates: Howard & Ruder 2018 (ULMFiT), fastai's
``fine_tune`` (freeze, train the head, unfreeze)."""
from __future__ import annotations

from lightning.pytorch.callbacks import BaseFinetuning
from torch import nn

from ..models.transfer import head_prefix


def split_parameters(model: nn.Module, num_classes: int) -> tuple[list, list]:
    """``(backbone parameters, head parameters)``; no head found: all are backbone."""
    head = head_prefix(model, num_classes)
    backbone, own_head = [], []
    for name, parameter in model.named_parameters():
        (own_head if head and name.startswith(head + ".") else backbone).append(parameter)
    return backbone, own_head


def parameter_groups(model: nn.Module, num_classes: int, train_cfg) -> list[dict]:
    """Optimiser parameter groups: backbone at ``train.lr * train.backbone_lr_scale``, head at
    ``train.lr``; one group at ``train.lr`` when the scale is 1. Each group keeps its
    ``lr_scale`` (schedules that set their own peak, such as one-cycle, multiply by it)."""
    if train_cfg.backbone_lr_scale == 1:
        return [{"params": list(model.parameters()), "lr": train_cfg.lr, "lr_scale": 1.0}]
    backbone, head = split_parameters(model, num_classes)
    scale = train_cfg.backbone_lr_scale
    return [group for group in ({"params": backbone, "lr": train_cfg.lr * scale, "lr_scale": scale},
                                {"params": head, "lr": train_cfg.lr, "lr_scale": 1.0}) if group["params"]]


class FreezeBackbone(BaseFinetuning):
    """Backbone frozen (``requires_grad=False``; batch-norm layers stay trainable) for the
    first ``epochs`` epochs, then trainable. Its parameters stay in their optimiser group
    from the start (so learning-rate schedules see every group), and the optimiser skips
    them while they have no gradient. A resumed run past ``epochs`` is unfrozen at once."""

    def __init__(self, epochs: int):
        super().__init__()
        self.epochs = epochs

    def _backbone(self, pl_module) -> list[nn.Module]:
        return _modules_outside(pl_module.model, head_prefix(pl_module.model, pl_module.num_classes))

    def freeze_before_training(self, pl_module) -> None:
        self.freeze(self._backbone(pl_module), train_bn=True)

    def finetune_function(self, pl_module, current_epoch: int, optimizer) -> None:
        if current_epoch >= self.epochs:
            self.make_trainable(self._backbone(pl_module))


def _modules_outside(model: nn.Module, head: str) -> list[nn.Module]:
    """Leaf modules (and modules with own parameters) that are not the head or inside it."""
    out = []
    for name, module in model.named_modules():
        inside = head and (name == head or name.startswith(head + "."))
        if not inside and (not list(module.children()) or module._parameters):
            out.append(module)
    return out
