"""Grad-CAM heatmap of one image as a PNG overlay, for the HTTP service.

The heatmap comes from the explanations stage (:class:`medclf.explain.cam.Saliency`), so
the service and ``medclf explain`` show the same maps; this module only keeps one explainer
per model and draws the compact overlay the web page shows.
"""
from __future__ import annotations

import io
import threading
import weakref

import numpy as np
import torch
from torch import nn

from ..explain.cam import Saliency

_CAMS: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()
_CAMS_LOCK = threading.Lock()


def gradcam_png(model: nn.Module, image: torch.Tensor, class_index: int, alpha: float = 0.45) -> bytes:
    """Grad-CAM of ``class_index`` overlaid on the image, as PNG bytes.

    Grad-CAM (Selvaraju et al., ICCV 2017) by MONAI's :class:`monai.visualize.GradCAM`
    on the model's last convolutional block (via :mod:`medclf.explain`), upsampled to the input size and scaled to [0, 1];
    coloured with matplotlib's ``jet`` colormap and alpha-blended onto the grayscale image.

    The model gets Grad-CAM hooks, so pass a copy reserved for Grad-CAM (calls on the same
    model are serialised by a lock; different models run in parallel).

    Args:
        model: the network, mapping ``(N, C, H, W)`` or ``(N, C, D, H, W)`` to logits
            ``(N, num_classes)``.
        image: one image ``(C, H, W)`` or volume ``(C, D, H, W)`` preprocessed by the run's
            pipeline (the service uses :func:`medclf.data.preprocess.preprocess_bytes`, the
            same steps as ``medclf predict`` and ``medclf explain``); a volume is shown by its
            middle slice along D.
        class_index: the class whose evidence is shown (usually the predicted class).
        alpha: opacity of the heatmap, in [0, 1].

    Returns:
        PNG bytes of an RGB image ``(H, W, 3)``.

    Raises:
        ConfigError: the model has no convolution.
    """
    from matplotlib import colormaps
    from matplotlib.image import imsave

    with _CAMS_LOCK:
        if model not in _CAMS:
            _CAMS[model] = (Saliency(model, "gradcam"), threading.Lock())
        cam, lock = _CAMS[model]
    with lock:
        heat = cam(image[None].float(), class_index)[0]  # (*spatial) in [0, 1], 1 = most evidence
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
