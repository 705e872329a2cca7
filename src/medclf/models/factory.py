"""Build a network by name (timm's ``create_model``): the registered builder, the optional
projection branch for volumes, weight initialisation and user-supplied weights."""
from __future__ import annotations

from torch import nn

from ..checkpoints import load_checkpoint
from ..errors import ConfigError
from . import monai_nets, small_cnn, transfer  # noqa: F401  (register the networks)
from .projection import ProjectionCNN, VolumeAndProjections
from .registry import get_builder


def create_model(model_config, in_channels: int, num_classes: int) -> nn.Module:
    """Build the network named by ``model_config.name``.

    The network maps ``(N, in_channels, *spatial)`` with ``spatial_dims`` spatial axes to
    logits ``(N, num_classes)``. With ``model_config.projection_branch`` (3D only) it is
    wrapped in :class:`~medclf.models.projection.VolumeAndProjections`. Weight
    initialisation follows ``model_config.init``; if ``model_config.weights`` names a file,
    those weights are loaded on top; if it names a run directory, the matching layers of
    that run are loaded and the head stays new (:func:`medclf.models.transfer.load_from_run`;
    the report is kept as ``model.transfer_report``).

    Raises:
        ConfigError: unknown model name, a projection branch on 2D images, or weights that
            do not fit the network.
    """
    model = get_builder(model_config.name)(model_config, in_channels, num_classes)
    if model_config.projection_branch:
        if model_config.spatial_dims != 3:
            raise ConfigError("model.projection_branch: needs volumes (model.spatial_dims=3), "
                              f"got spatial_dims={model_config.spatial_dims}")
        projections = ProjectionCNN(in_channels, num_classes, model_config.projection_filters, model_config.dropout)
        model = VolumeAndProjections(model, projections, model_config.volume_pool)
    initialise(model, model_config.init)
    if model_config.weights and transfer.is_run_dir(model_config.weights):  # fine-tuning from another run
        model.transfer_report = transfer.load_from_run(model, model_config.weights, num_classes)
    elif model_config.weights:
        load_weights(model, model_config.weights)
    return model


def initialise(model: nn.Module, scheme: str) -> None:
    """Initialise convolution and linear weights; biases to zero.

    ``he``: Kaiming-normal convolutions (He et al. 2015, fan-out, as torchvision's ResNets),
    with PyTorch's default for linear layers so the initial logits stay small (initial loss
    close to log(num_classes)). ``xavier``: Xavier-uniform everywhere (Glorot & Bengio 2010).
    ``default``: PyTorch's own initialisation.
    """
    if scheme == "default":
        return
    for module in model.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            if scheme == "he":
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            else:
                nn.init.xavier_uniform_(module.weight)
        elif isinstance(module, nn.Linear) and scheme == "xavier":
            nn.init.xavier_uniform_(module.weight)
        else:
            continue
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def load_weights(model: nn.Module, path: str) -> None:
    """Load user-supplied weights: a plain state_dict or a Lightning checkpoint.

    Keys prefixed ``model.`` (as in medclf checkpoints) are stripped. The file is read by
    :func:`medclf.checkpoints.load_checkpoint` (``weights_only=True``), so it cannot execute code.

    Raises:
        ConfigError: the file is missing, unreadable, holds code or objects that are not
            weights, is not a state_dict, or its tensors do not fit the model.
    """
    state = load_checkpoint(path, ConfigError, "model.weights")
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ConfigError(f"model.weights: {path} holds a {type(state).__name__}, not a state_dict "
                          "(a dict of tensors) or a checkpoint with one")
    if any(k.startswith("model.") for k in state):  # a medclf (Lightning) checkpoint
        state = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ConfigError(f"model.weights: {path} does not fit model: {err}") from None
