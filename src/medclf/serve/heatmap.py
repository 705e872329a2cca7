"""Grad-CAM heatmap of one image as a PNG overlay, for the HTTP service.

MERGE NOTE: this is the service's single Grad-CAM entry point. When the explanations
stage (``medclf.explain``) lands, replace the body of :func:`gradcam_png` with a call to
its function so that both produce the same maps.
"""
from __future__ import annotations

import io
import threading
import weakref

import numpy as np
import torch
from torch import nn

_CAMS: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()
_CAMS_LOCK = threading.Lock()


def last_conv_layer(model: nn.Module) -> str:
    """Name of the last ``Conv2d``/``Conv3d`` module of ``model`` (the Grad-CAM target).

    Raises:
        ValueError: the model has no convolution.
    """
    names = [name for name, module in model.named_modules() if isinstance(module, (nn.Conv2d, nn.Conv3d))]
    if not names:
        raise ValueError("the model has no Conv2d/Conv3d layer for Grad-CAM")
    return names[-1]


def _unit_scale(maps: torch.Tensor) -> torch.Tensor:
    """Scale each map of ``(N, 1, *spatial)`` linearly so its min is 0 and its max 1."""
    flat = maps.reshape(maps.shape[0], -1)
    low = flat.min(dim=1).values.view(-1, *[1] * (maps.ndim - 1))
    high = flat.max(dim=1).values.view(-1, *[1] * (maps.ndim - 1))
    return torch.where(high > low, (maps - low) / (high - low).clamp(min=1e-12), torch.zeros_like(maps))


def gradcam_png(model: nn.Module, image: torch.Tensor, class_index: int, alpha: float = 0.45) -> bytes:
    """Grad-CAM of ``class_index`` overlaid on the image, as PNG bytes.

    Grad-CAM (Selvaraju et al., ICCV 2017) by MONAI's :class:`monai.visualize.GradCAM`
    on the model's last convolution, upsampled to the input size and scaled to [0, 1];
    coloured with matplotlib's ``jet`` colormap and alpha-blended onto the grayscale image.

    The model gets Grad-CAM hooks, so pass a copy reserved for Grad-CAM (calls on the same
    model are serialised by a lock; different models run in parallel).

    Args:
        model: the network, mapping ``(N, C, H, W)`` or ``(N, C, D, H, W)`` to logits
            ``(N, num_classes)``.
        image: one preprocessed image ``(C, H, W)`` or volume ``(C, D, H, W)``; a volume is
            shown by its middle slice along D.
        class_index: the class whose evidence is shown (usually the predicted class).
        alpha: opacity of the heatmap, in [0, 1].

    Returns:
        PNG bytes of an RGB image ``(H, W, 3)``.

    Raises:
        ValueError: the model has no convolution.
    """
    from matplotlib import colormaps
    from matplotlib.image import imsave
    from monai.visualize import GradCAM

    with _CAMS_LOCK:
        if model not in _CAMS:
            # MONAI's default postprocessing maps (min, max) to (1, 0), i.e. flips the map: scale
            # each map to [0, 1] the right way round instead (1 = most evidence for the class)
            _CAMS[model] = (GradCAM(nn_module=model, target_layers=last_conv_layer(model),
                                    postprocessing=_unit_scale), threading.Lock())
        cam, lock = _CAMS[model]
    with lock, torch.enable_grad():
        heat = cam(x=image[None].float(), class_idx=class_index)  # (1, 1, *spatial) in [0, 1]
    heat = heat[0, 0].detach().cpu().numpy()
    gray = image.float().mean(dim=0).cpu().numpy()  # (H, W) or (D, H, W)
    if gray.ndim == 3:
        gray, heat = gray[gray.shape[0] // 2], heat[heat.shape[0] // 2]
    low, high = np.percentile(gray, (0.5, 99.5))
    gray = np.clip((gray - low) / (high - low), 0, 1) if high > low else np.zeros_like(gray)
    heat = np.nan_to_num(heat, nan=0.0)
    rgb = (1 - alpha) * np.repeat(gray[..., None], 3, axis=2) + alpha * colormaps["jet"](heat)[..., :3]
    buffer = io.BytesIO()
    imsave(buffer, np.clip(rgb, 0, 1), format="png")
    return buffer.getvalue()
