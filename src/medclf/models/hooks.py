"""One inspection forward pass with temporary forward hooks (PyTorch's ``register_forward_hook``)."""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn

ForwardHook = Callable[[nn.Module, tuple, object], object]


def forward_with_hooks(model: nn.Module, inputs: torch.Tensor,
                       hooks: Iterable[tuple[nn.Module, ForwardHook]]):
    """Run ``model(inputs)`` once in eval mode without gradients, with forward hooks attached
    for that pass only.

    The hooks (``hook(module, inputs, output)``, see ``nn.Module.register_forward_hook``) are
    removed and the model's training mode is restored afterwards, also when the forward pass
    (or a hook) raises.

    Args:
        model: the network; its weights are not changed.
        inputs: ``(N, C, H, W)`` or ``(N, C, D, H, W)``.
        hooks: ``(module, hook)`` pairs, modules of ``model``.

    Returns:
        the model's output, e.g. logits ``(N, num_classes)``.
    """
    handles = []
    was_training = model.training
    try:
        for module, hook in hooks:
            handles.append(module.register_forward_hook(hook))
        model.eval()
        with torch.no_grad():
            return model(inputs)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
