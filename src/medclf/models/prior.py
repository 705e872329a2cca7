"""Which class prior the output probabilities assume, and the shift of the logits between two priors.

A network trained with class-balanced batches (``train.sampler: balanced``) or with
'balanced' class weights learns as if every class were equally common: its softmax
probabilities over-state a rare class, and its arg-max maximises balanced accuracy, not
accuracy. Adding ``log(training prior) - log(trained-for prior)`` to the logits turns them
into probabilities for the training split's class frequencies (post-hoc logit adjustment:
Saerens, Latinne & Decaestecker 2002, Neural Computation 14(1); Menon et al. 2021, ICLR,
"Long-tail learning via logit adjustment"). The shift is folded into the bias of the
network's last linear layer, so every consumer of the weights (evaluate, predict, serve,
explain) sees the same probabilities.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError


def trained_prior(counts, train_cfg) -> np.ndarray:
    """The class prior ``(num_classes,)`` that training optimised for.

    Args:
        counts: training images per class ``(num_classes,)``.
        train_cfg: the ``train`` config section (``sampler``, ``class_weights``).

    Balanced batches and 'auto' weights: uniform; no weights: the class frequencies; a list
    of weights ``w``: proportional to ``frequency * w`` (a weight scales a class's share
    of the loss as a prior would).
    """
    counts = np.asarray(counts, dtype=np.float64).clip(min=1)
    k = len(counts)
    if train_cfg.sampler == "balanced" or train_cfg.class_weights == "auto":
        return np.full(k, 1.0 / k)
    if train_cfg.class_weights == "none":
        return counts / counts.sum()
    weighted = counts * np.asarray(train_cfg.class_weights, dtype=np.float64)
    return weighted / weighted.sum()


def logit_shift(counts, train_cfg) -> np.ndarray:
    """``(num_classes,)`` to add to the logits so that the softmax assumes
    ``train.output_prior`` instead of the prior training optimised for (all zeros when the
    two agree)."""
    counts = np.asarray(counts, dtype=np.float64).clip(min=1)
    target = counts / counts.sum() if train_cfg.output_prior == "training" else np.full(len(counts), 1 / len(counts))
    shift = np.log(target) - np.log(trained_prior(counts, train_cfg))
    return shift - shift.mean()  # a common offset changes no probability


def last_linear(model: nn.Module, num_classes: int) -> nn.Linear:
    """The classifier layer: the last ``nn.Linear`` with ``num_classes`` outputs and a bias.

    Raises:
        ConfigError: the network has none (its outputs cannot be shifted).
    """
    found = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == num_classes
             and m.bias is not None]
    if not found:
        raise ConfigError(f"train.output_prior: {type(model).__name__} has no final linear layer with a bias "
                          f"and {num_classes} outputs to shift; set train.output_prior=balanced")
    return found[-1]


def apply_output_prior(model: nn.Module, counts, train_cfg) -> np.ndarray:
    """Fold :func:`logit_shift` into the bias of the model's last linear layer, in place.

    Args:
        model: a classifier whose output is the last linear layer's ``(N, num_classes)`` logits.
        counts: training images per class ``(num_classes,)``.
        train_cfg: the ``train`` config section.

    Returns:
        the shift that was added ``(num_classes,)``.
    """
    shift = logit_shift(counts, train_cfg)
    if np.abs(shift).max() > 0:
        # a fusion of several networks (mean of their logits) shifts each one's classifier
        layers = [last_linear(branch, len(shift)) for branch in getattr(model, "branches", lambda: [model])()]
        with torch.no_grad():
            for layer in layers:
                layer.bias.add_(torch.as_tensor(shift, dtype=layer.bias.dtype, device=layer.bias.device))
    return shift
