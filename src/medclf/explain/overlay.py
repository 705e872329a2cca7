"""Side-by-side figures of an image, its heatmap and their overlay (matplotlib, Agg)."""
from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _display(image: np.ndarray) -> tuple[np.ndarray, str | None]:
    """``(C, *spatial)`` -> something imshow can draw: RGB ``(..., 3)`` or one band, in [0, 1]."""
    image = np.asarray(image, dtype=np.float32)
    if image.shape[0] == 3:
        shown = np.moveaxis(image, 0, -1)
        cmap = None
    else:
        shown, cmap = image[0], "gray"
    low, high = np.percentile(shown, (0.5, 99.5))
    return np.clip((shown - low) / max(high - low, 1e-6), 0, 1), cmap


def max_slices(heatmap: np.ndarray) -> tuple[int, int, int]:
    """Index ``(d, h, w)`` of the heatmap's maximum in a volume ``(D, H, W)``."""
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(heatmap)), heatmap.shape))


def overlay_png(image: np.ndarray, heatmap: np.ndarray, title: str = "", alpha: float = 0.45,
                dpi: int = 90) -> bytes:
    """PNG bytes of original | heatmap | overlay.

    Args:
        image: the image ``(C, H, W)`` or ``(C, D, H, W)`` on the heatmap's grid (the model
            input, or its decoded intensities before normalisation; any intensity range,
            shown between its 0.5th and 99.5th percentiles).
        heatmap: ``(H, W)`` or ``(D, H, W)`` in [0, 1].
        title: figure title (predicted class and probability, explained class, method).

    For a volume, three rows show the axial, coronal and sagittal slices through the
    heatmap's maximum.
    """
    heatmap = np.asarray(heatmap, dtype=np.float32)
    shown, cmap = _display(image)
    if heatmap.ndim == 2:
        rows = [("", shown, heatmap)]
    else:
        d, h, w = max_slices(heatmap)
        rows = [(f"axial d={d}", np.take(shown, d, axis=0), heatmap[d]),
                (f"coronal h={h}", np.take(shown, h, axis=1), heatmap[:, h]),
                (f"sagittal w={w}", np.take(shown, w, axis=2), heatmap[:, :, w])]
    fig, axes = plt.subplots(len(rows), 3, figsize=(9.6, 3.3 * len(rows) + 0.4), squeeze=False)
    for r, (label, img, heat) in enumerate(rows):
        axes[r, 0].imshow(img, cmap=cmap, vmin=0, vmax=1)
        axes[r, 1].imshow(heat, cmap="jet", vmin=0, vmax=1)
        axes[r, 2].imshow(img, cmap=cmap, vmin=0, vmax=1)
        axes[r, 2].imshow(heat, cmap="jet", vmin=0, vmax=1, alpha=alpha)
        for c, name in enumerate(("image", "heatmap", "overlay")):
            axes[r, c].set_title(f"{name} {label}".strip(), fontsize=9)
            axes[r, c].axis("off")
    # fixed margins in inches (a title line, each row's axis titles): tight_layout draws the
    # figure once more to measure it, a third of the time of a gallery of 2D figures
    height = fig.get_figheight()
    if title:
        fig.suptitle(title, fontsize=10, y=1 - 0.08 / height, va="top")
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=1 - 0.6 / height, wspace=0.04, hspace=0.1)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    return buffer.getvalue()
