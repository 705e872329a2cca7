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

That shift assumes the network learned the prior its training was set up for. When the
validation split shows it did not (a seed whose arg-max calls most images positive),
``train.output_bias: validation`` fits a per-class logit bias on the validation split by
likelihood (the bias of bias-corrected calibration, Alexandari et al. 2020, ICML, "Maximum
likelihood with bias-corrected calibration is hard-to-beat at label shift adaptation"),
converts it to ``train.output_prior``, and keeps it only when a likelihood-ratio test
rejects the assumed prior (:func:`fit_output_bias`).
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import minimize
from scipy.special import log_softmax
from scipy.stats import chi2
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
    shift = np.log(target_prior(counts, train_cfg)) - np.log(trained_prior(counts, train_cfg))
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


def target_prior(counts, train_cfg) -> np.ndarray:
    """The class prior ``(num_classes,)`` that ``train.output_prior`` asks the outputs to assume."""
    counts = np.asarray(counts, dtype=np.float64).clip(min=1)
    return counts / counts.sum() if train_cfg.output_prior == "training" else np.full(len(counts), 1 / len(counts))


def _mean_nll(bias: np.ndarray, log_p: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of ``labels`` under ``softmax(log_p + bias)``."""
    return float(-log_softmax(log_p + bias, axis=1)[np.arange(len(labels)), labels].mean())


def fit_output_bias(probabilities, labels, counts, train_cfg, significance: float = 0.05) -> dict:
    """A per-class logit bias, fitted on validation, that makes the outputs assume
    ``train.output_prior`` when the network did not learn the prior it was trained for.

    The bias ``b`` maximising the validation likelihood of ``softmax(log p + b)`` calibrates
    the outputs to the validation split's class frequencies ``v`` (Alexandari et al. 2020);
    ``b + log(target) - log(v)`` then converts them to the target prior. If the network's
    outputs already assume the target, the best bias is ``log(v) - log(target)``; the
    fitted one is kept only when a likelihood-ratio test rejects that (chi-squared with
    ``num_classes - 1`` degrees of freedom at ``significance``), so a well-calibrated run is
    left exactly as it was.

    Args:
        probabilities: validation probabilities ``(N, num_classes)`` of the network with the
            output prior applied (:func:`apply_output_prior`).
        labels: int ``(N,)`` class indices.
        counts: training images per class ``(num_classes,)``.
        train_cfg: the ``train`` config section (``output_prior``).

    Returns:
        ``{"shift": [...] or None (not kept), "likelihood_ratio", "p_value", "n"}``; the
        shift ``(num_classes,)`` is what :func:`add_logit_shift` adds.
    """
    labels = np.asarray(labels, dtype=int)
    log_p = np.log(np.clip(np.asarray(probabilities, dtype=np.float64), 1e-12, 1.0))
    k = log_p.shape[1]
    validation_prior = np.bincount(labels, minlength=k).clip(min=1) / len(labels)
    target = target_prior(counts, train_cfg)
    assumed = np.log(validation_prior) - np.log(target)
    found = minimize(lambda b: _mean_nll(np.r_[0.0, b], log_p, labels), (assumed - assumed[0])[1:],
                     method="L-BFGS-B").x
    best = np.r_[0.0, found]
    ratio = max(0.0, 2 * len(labels) * (_mean_nll(assumed, log_p, labels) - _mean_nll(best, log_p, labels)))
    p_value = float(chi2.sf(ratio, k - 1))
    shift = best - assumed
    return {"shift": [float(v) for v in shift - shift.mean()] if p_value < significance else None,
            "likelihood_ratio": round(ratio, 3), "p_value": p_value, "n": int(len(labels))}


def add_logit_shift(model: nn.Module, shift) -> None:
    """Add ``shift`` ``(num_classes,)`` to the bias of the model's last linear layer (of each
    branch of a fusion), in place.

    Raises:
        ConfigError: the network has no final linear layer with a bias (:func:`last_linear`).
    """
    shift = np.asarray(shift, dtype=np.float64)
    layers = [last_linear(branch, len(shift)) for branch in getattr(model, "branches", lambda: [model])()]
    with torch.no_grad():
        for layer in layers:
            layer.bias.add_(torch.as_tensor(shift, dtype=layer.bias.dtype, device=layer.bias.device))


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
        add_logit_shift(model, shift)  # a fusion (mean of several networks' logits) shifts each branch
    return shift
