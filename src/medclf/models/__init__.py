"""Model stage: networks by name from one registry (see :func:`create_model`)."""
from .registry import available_models, create_model, register_model

from . import small_cnn, monai_nets  # noqa: F401,E402  (register the networks)

__all__ = ["available_models", "create_model", "register_model"]
