"""Side-by-side figures of an image, its heatmap and their overlay.

The panels are composed as pixel arrays and written by Pillow, with matplotlib's ``jet``
colormap and its bundled DejaVu Sans font. A matplotlib figure of three to nine axes spent
most of its time building axes and ticks that were then hidden (about ten times as long on a
CPU), and every evaluation draws a gallery of these figures.
"""
from __future__ import annotations

import functools
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

PANEL = 280
"""Side of the square box each panel is fitted into, pixels (aspect ratio kept)."""
GAP = 8
"""Pixels between panels and around them."""
LABEL_HEIGHT = 20
"""Pixels above each row for the panels' names."""
TITLE_HEIGHT = 26
"""Pixels above the first row for the figure's title."""


@functools.lru_cache(maxsize=4)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """DejaVu Sans of matplotlib's data folder at ``size`` pixels (Pillow's own font without it)."""
    import matplotlib
    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    try:
        return ImageFont.truetype(str(path), size)
    except OSError:
        return ImageFont.load_default()


def _display(image: np.ndarray) -> np.ndarray:
    """``(C, *spatial)`` -> RGB ``(*spatial, 3)`` in [0, 1]: three channels as colour, else the
    first as gray; scaled between the 0.5th and 99.5th percentiles."""
    image = np.asarray(image, dtype=np.float32)
    shown = np.moveaxis(image, 0, -1) if image.shape[0] == 3 else image[0]
    low, high = np.percentile(shown, (0.5, 99.5))
    shown = np.clip((shown - low) / max(high - low, 1e-6), 0, 1)
    return shown if image.shape[0] == 3 else np.repeat(shown[..., None], 3, axis=-1)


def _jet(heatmap: np.ndarray) -> np.ndarray:
    """``(*spatial)`` in [0, 1] -> RGB ``(*spatial, 3)`` by matplotlib's ``jet`` colormap."""
    from matplotlib import colormaps
    return colormaps["jet"](np.clip(heatmap, 0, 1))[..., :3].astype(np.float32)


def max_slices(heatmap: np.ndarray) -> tuple[int, int, int]:
    """Index ``(d, h, w)`` of the heatmap's maximum in a volume ``(D, H, W)``."""
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(heatmap)), heatmap.shape))


def _fitted(rgb: np.ndarray) -> Image.Image:
    """RGB ``(H, W, 3)`` in [0, 1] as a Pillow image fitted into a :data:`PANEL` box: nearest
    neighbour when it grows twice or more (a thumbnail's pixels stay sharp), else bilinear."""
    picture = Image.fromarray((rgb * 255 + 0.5).astype(np.uint8), "RGB")
    scale = PANEL / max(picture.size)
    size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    resample = Image.Resampling.NEAREST if scale >= 2 else Image.Resampling.BILINEAR
    return picture.resize(size, resample)


def overlay_png(image: np.ndarray, heatmap: np.ndarray, title: str = "", alpha: float = 0.45) -> bytes:
    """PNG bytes of original | heatmap | overlay.

    Args:
        image: the image ``(C, H, W)`` or ``(C, D, H, W)`` on the heatmap's grid (the model
            input, or its decoded intensities before normalisation; any intensity range,
            shown between its 0.5th and 99.5th percentiles).
        heatmap: ``(H, W)`` or ``(D, H, W)`` in [0, 1], coloured by matplotlib's ``jet``.
        title: figure title (predicted class and probability, explained class, method).
        alpha: opacity of the heatmap in the overlay: ``alpha * heat + (1 - alpha) * image``.

    Returns:
        PNG bytes of an RGB figure about 880 pixels wide: one row for an image; for a volume,
        three rows with the axial, coronal and sagittal slices through the heatmap's maximum.
    """
    heatmap = np.asarray(heatmap, dtype=np.float32)
    shown = _display(image)
    if heatmap.ndim == 2:
        rows = [("", shown, heatmap)]
    else:
        d, h, w = max_slices(heatmap)
        rows = [(f"axial d={d}", shown[d], heatmap[d]),
                (f"coronal h={h}", shown[:, h], heatmap[:, h]),
                (f"sagittal w={w}", shown[:, :, w], heatmap[:, :, w])]
    top = TITLE_HEIGHT if title else 0
    row_height = LABEL_HEIGHT + PANEL + GAP
    figure = Image.new("RGB", (3 * PANEL + 4 * GAP, top + len(rows) * row_height + GAP), "white")
    draw = ImageDraw.Draw(figure)
    if title:
        draw.text((figure.width // 2, GAP), title, fill="black", font=_font(14), anchor="mt")
    for r, (label, picture, heat) in enumerate(rows):
        coloured = _jet(heat)
        panels = (picture, coloured, alpha * coloured + (1 - alpha) * picture)
        y = top + r * row_height + GAP
        for c, (name, panel) in enumerate(zip(("image", "heatmap", "overlay"), panels)):
            x = GAP + c * (PANEL + GAP)
            fitted = _fitted(panel)
            draw.text((x + PANEL // 2, y), f"{name} {label}".strip(), fill="black", font=_font(12), anchor="mt")
            figure.paste(fitted, (x + (PANEL - fitted.width) // 2, y + LABEL_HEIGHT + (PANEL - fitted.height) // 2))
    buffer = io.BytesIO()
    figure.save(buffer, format="PNG")
    return buffer.getvalue()
