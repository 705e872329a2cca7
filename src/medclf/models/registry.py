"""A name -> builder registry of networks, in the manner of timm's ``register_model``.

The registry knows no architecture: network modules register themselves with
:func:`register_model`, and :mod:`medclf.models.factory` builds them by name.
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from ..errors import ConfigError

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str):
    """Decorator: register ``builder(model_config, in_channels, num_classes) -> nn.Module``."""
    def wrap(builder):
        _REGISTRY[name] = builder
        return builder
    return wrap


def available_models() -> list[str]:
    return sorted(_REGISTRY)


def get_builder(name: str) -> Callable[..., nn.Module]:
    """The builder registered as ``name``.

    Raises:
        ConfigError: no network of that name (lists the registered ones).
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"model.name: unknown model {name!r}; available: {', '.join(available_models())}") from None
