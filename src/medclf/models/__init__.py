"""Model stage: networks by name from one registry (see :func:`create_model`)."""
from .factory import create_model, initialise, load_weights
from .registry import available_models, register_model

__all__ = ["available_models", "create_model", "initialise", "load_weights", "register_model"]
