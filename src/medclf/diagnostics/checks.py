"""Checks of a network before a full training (Karpathy, "A recipe for training neural
networks", 2019): dead activations, gradient flow, and overfitting a small fixed set."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F

from ..data.sources import Manifest
from .callbacks import dead_fraction

ACTIVATIONS = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.PReLU, nn.SELU, nn.SiLU, nn.ReLU6, nn.Tanh,
               nn.Sigmoid, nn.Mish, nn.Hardswish)
LOSS_TARGET = 0.05  # "near-zero" cross-entropy for the overfit check



def subset(manifest: Manifest, per_class: int, seed: int) -> Manifest:
    """``per_class`` training images of every class (fewer where a class has fewer), seeded."""
    train = manifest.frame[manifest.frame.split == "train"]
    parts = [group.sample(n=min(per_class, len(group)), random_state=seed)
             for _, group in train.groupby("label", sort=True)]
    frame = pd.concat(parts).sort_index().reset_index(drop=True)
    return Manifest(frame, manifest.class_names)


def activation_stats(model: nn.Module, images: torch.Tensor) -> dict[str, float]:
    """Fraction of dead channels per activation layer for one batch.

    A channel is dead when its output is never positive for any image and any position of
    the batch (for ReLU: always exactly zero), so no gradient reaches the weights before it
    (:func:`medclf.diagnostics.callbacks.dead_fraction`).

    Args:
        images: ``(N, C, *spatial)``.

    Returns:
        ``{layer name: dead fraction in [0, 1]}``, in forward order.
    """
    stats: dict[str, float] = {}
    hooks = []

    def hook(name):
        def record(module, inputs, output):
            if torch.is_tensor(output) and output.dim() >= 2:
                stats[name] = dead_fraction(output)
        return record

    for name, module in model.named_modules():
        if isinstance(module, ACTIVATIONS):
            hooks.append(module.register_forward_hook(hook(name)))
    try:
        with torch.no_grad():
            model(images)
    finally:
        for h in hooks:
            h.remove()
    return stats


def gradient_norms(model: nn.Module) -> dict[str, float]:
    """Gradient norm of every trainable parameter after a backward pass (NaN if it got none)."""
    return {name: (float(p.grad.norm()) if p.grad is not None else math.nan)
            for name, p in model.named_parameters() if p.requires_grad}


def overfit(model: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor, labels: torch.Tensor, cfg,
            max_steps: int,
            batch_size: int) -> dict:
    """Train on a fixed small set with plain cross-entropy until 100 % accuracy and loss < 0.05.

    ``batch_size`` images per step (the sanity command uses the whole subset as one batch,
    so that the training-mode accuracy it measures sees the same batch statistics).

    Args:
        optimizer: the optimiser of ``model``'s parameters (``medclf.training.optim.build_optimizer``).
        images: ``(N, C, *spatial)``; labels: ``(N,)`` class indices.
        max_steps: step budget.

    Returns:
        dict with ``losses`` (per step), ``accuracy`` and ``loss`` of the last full pass,
        ``steps`` run, ``reached`` (bool), ``nonfinite_step`` (step where the loss became
        NaN/inf, or None), ``stalled`` (stopped after 30+ steps without any progress) and
        ``update_ratio`` (mean over the first 5 steps of the median ||update|| / ||weight||
        of the weight tensors).
    """
    generator = torch.Generator().manual_seed(cfg.seed)
    losses, result = [], {"reached": False, "nonfinite_step": None, "accuracy": 0.0, "loss": math.nan,
                          "stalled": False}
    weights = [p for p in model.parameters() if p.requires_grad and p.dim() > 1]
    ratios = []  # ||update|| / ||weight|| of the first steps (Karpathy: healthy around 1e-3 .. 1e-2)
    n = len(labels)
    step = 0
    while step < max_steps:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            model.train()
            index = order[start:start + batch_size]
            loss = F.cross_entropy(model(images[index]), labels[index])
            losses.append(loss.item())
            if not torch.isfinite(loss):
                result["nonfinite_step"] = step
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.train.gradient_clip:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.train.gradient_clip)
            before = [w.detach().clone() for w in weights] if step < 5 else None
            optimizer.step()
            if before is not None:
                ratios.append(float(np.median([float((w.detach() - b).norm() / b.norm().clamp(min=1e-12))
                                               for w, b in zip(weights, before)])))
            step += 1
        if result["nonfinite_step"] is not None:
            break
        if step >= 30 and min(losses[-10:]) > 0.9 * losses[0]:  # no progress at all: stop early
            result["stalled"] = True
            break
        with torch.no_grad():  # the whole subset in one batch, in training mode (batch statistics)
            logits = model(images)
            full = F.cross_entropy(logits, labels)
            result["loss"] = float(full)
            result["accuracy"] = float((logits.argmax(1) == labels).float().mean())
        if result["accuracy"] == 1.0 and result["loss"] < LOSS_TARGET:
            result["reached"] = True
            break
    result.update(losses=losses, steps=step, update_ratio=float(np.mean(ratios)) if ratios else math.nan)
    return result
