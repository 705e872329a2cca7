"""Saliency maps of a classifier: Grad-CAM, Grad-CAM++ and occlusion sensitivity (MONAI).

All three work on 2D images ``(N, C, H, W)`` and 3D volumes ``(N, C, D, H, W)`` alike and
return one heatmap per image in [0, 1] with the input's spatial size.

Sources:
    Grad-CAM: Selvaraju et al., "Grad-CAM: Visual explanations from deep networks via
    gradient-based localization", ICCV 2017 (``monai.visualize.GradCAM``).
    Grad-CAM++: Chattopadhyay et al., WACV 2018 (``monai.visualize.GradCAMpp``).
    Occlusion sensitivity: Zeiler & Fergus, ECCV 2014 (``monai.visualize.OcclusionSensitivity``).
"""
from __future__ import annotations

import copy
import warnings

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from ..models.ensemble import Ensemble
from ..models.hooks import forward_with_hooks

METHODS = ("gradcam", "gradcampp", "occlusion")


def find_target_layer(model: nn.Module, example: torch.Tensor) -> str:
    """Name of the last convolutional block of ``model`` (the default Grad-CAM layer).

    One forward pass of ``example`` ``(1, C, *spatial)`` records which modules run and what
    they output; the answer is the outermost module that contains the last executed
    convolution and still outputs a feature map ``(N, C', *spatial')`` (e.g. ``features`` of
    :class:`~medclf.models.small_cnn.SmallCNN`, ``layer4`` of a MONAI ResNet).

    Raises:
        ConfigError: the model has no convolution.
    """
    spatial_dims = example.ndim - 2
    conv_types = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
    outputs: dict[str, int] = {}
    last_conv: list[str] = []

    def hook(name):
        def record(mod, inputs, output):
            if isinstance(output, torch.Tensor):
                outputs[name] = output.ndim
            if isinstance(mod, conv_types):
                last_conv.append(name)
        return record

    forward_with_hooks(model, example, [(module, hook(name)) for name, module in model.named_modules()])
    if not last_conv:
        raise ConfigError("the model has no convolution layer: Grad-CAM needs one (use method=occlusion)")
    parts = last_conv[-1].split(".")
    for depth in range(1, len(parts) + 1):  # outermost first
        name = ".".join(parts[:depth])
        if outputs.get(name) == spatial_dims + 2:
            return name
    return last_conv[-1]


def layer_names(model: nn.Module) -> list[str]:
    """Names of every sub-module (what ``target_layer`` may be set to)."""
    return [name for name, _ in model.named_modules() if name]


def _normalise(maps: torch.Tensor) -> torch.Tensor:
    """Min-max scale each map of ``(N, 1, *spatial)`` to [0, 1] (0 where the map is flat)."""
    flat = maps.reshape(len(maps), -1)
    low = flat.min(dim=1, keepdim=True).values
    span = (flat.max(dim=1, keepdim=True).values - low).clamp(min=1e-12)
    return ((flat - low) / span).reshape(maps.shape)


class Saliency:
    """A reusable saliency explainer of one model (hooks are set up once).

    Args:
        model: network ``(N, C, *spatial) -> (N, num_classes)``; a private copy is explained,
            the caller's model is never changed.
        method: ``gradcam``, ``gradcampp`` or ``occlusion``.
        target_layer: module name for Grad-CAM(++) (see :func:`layer_names`); None picks the
            last convolutional block (:func:`find_target_layer`) on the first call.
        mask_size: occlusion box size, pixels/voxels (None: 1/6 of the smallest side, >= 3).

    An :class:`~medclf.models.ensemble.Ensemble` is explained by the average of its members'
    maps (each min-max scaled, then the mean scaled again), ``target_layer`` naming a layer
    of each member.

    Raises:
        ConfigError: unknown method or layer name.
    """

    def __init__(self, model: nn.Module, method: str = "gradcam", target_layer: str | None = None,
                 mask_size: int | None = None):
        if method not in METHODS:
            raise ConfigError(f"unknown explanation method {method!r}; available: {', '.join(METHODS)}")
        # an ensemble's map is the average of its members' maps (each member at its own layer)
        self.members = [Saliency(m, method, target_layer, mask_size) for m in model.members] \
            if isinstance(model, Ensemble) else None
        if self.members:
            return
        self.model = copy.deepcopy(model).float().eval()
        for p in self.model.parameters():
            p.requires_grad_(True)
        self.method = method
        self.target_layer = target_layer
        self.mask_size = mask_size
        self._cam = None
        if target_layer is not None and target_layer not in layer_names(self.model):
            raise ConfigError(f"unknown target layer {target_layer!r}; layers of this model: "
                              f"{', '.join(layer_names(self.model)[:40])}")

    def _setup(self, example: torch.Tensor) -> None:
        from monai.visualize import GradCAM, GradCAMpp
        if self.target_layer is None:
            self.target_layer = find_target_layer(self.model, example[:1])
        factory = GradCAM if self.method == "gradcam" else GradCAMpp
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._cam = factory(nn_module=self.model, target_layers=self.target_layer,
                                postprocessing=_normalise)

    def __call__(self, images: torch.Tensor, class_index: int | list[int]) -> np.ndarray:
        """Heatmaps of ``images`` ``(N, C, *spatial)`` for class ``class_index`` (one int for
        all images or one per image).

        Returns:
            float32 array ``(N, *spatial)`` in [0, 1]; 1 marks what most supports the class.
        """
        images = torch.as_tensor(images).float()
        if self.members:
            mean = np.mean([member(images, class_index) for member in self.members], axis=0)
            return _normalise(torch.from_numpy(mean)[:, None])[:, 0].numpy().astype(np.float32)
        indices = [class_index] * len(images) if isinstance(class_index, int) else list(class_index)
        if self.method == "occlusion":
            return np.stack([self._occlusion(images[i:i + 1], indices[i]) for i in range(len(images))])
        if self._cam is None:
            self._setup(images)
        maps = []
        with torch.enable_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", ".*Full backward hook is firing.*")
            for i in range(len(images)):
                result = self._cam(x=images[i:i + 1], class_idx=indices[i])
                maps.append(torch.nan_to_num(result.detach().float())[0, 0].cpu().numpy())
        return np.stack(maps).astype(np.float32)

    @torch.no_grad()
    def _occlusion(self, image: torch.Tensor, class_index: int) -> np.ndarray:
        from monai.visualize import OcclusionSensitivity
        spatial = image.shape[2:]
        size = self.mask_size or max(3, min(spatial) // 6)
        occlusion = OcclusionSensitivity(self.model, mask_size=size, n_batch=16, verbose=False,
                                         mode="mean_img", overlap=0.5)
        baseline = self.model(image).softmax(dim=1)[0, class_index]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # MONAI's indexing deprecation notice
            occluded, _ = occlusion(image)  # (1, num_classes, *spatial): probabilities when occluded
        drop = (baseline - occluded[:, class_index:class_index + 1]).clamp(min=0)
        return _normalise(drop)[0, 0].cpu().numpy().astype(np.float32)


def saliency(model: nn.Module, images: torch.Tensor, class_index: int | list[int],
             method: str = "gradcam", target_layer: str | None = None) -> np.ndarray:
    """One-shot :class:`Saliency`: heatmaps ``(N, *spatial)`` in [0, 1] for ``images``
    ``(N, C, *spatial)``."""
    return Saliency(model, method, target_layer)(images, class_index)
