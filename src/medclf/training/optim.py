"""The optimiser of ``train.optimizer`` (one switch, used by training, the sanity checks and
the LR range test)."""
from __future__ import annotations

import torch


def build_optimizer(params, train_cfg) -> torch.optim.Optimizer:
    """The configured optimiser at a constant learning rate (no schedule)."""
    cfg = train_cfg
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                               nesterov=cfg.nesterov and cfg.momentum > 0, weight_decay=cfg.weight_decay)
    return torch.optim.RMSprop(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
