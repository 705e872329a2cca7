"""The preview figure: what preprocessing, augmentation and normalisation do to the images.

Works on raw arrays ``(C, H, W)`` (images) or ``(C, D, H, W)`` (volumes, shown as three
orthogonal mid-slices side by side: axial, coronal, sagittal), so 2D and 3D share one
code path. Like fastai's ``show_batch``, but for the whole deterministic + random input
pipeline of a run. Drawn with matplotlib (Agg backend), written atomically as one PNG.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from ..data.augment import build_augmentation  # noqa: E402
from ..data.preprocess import finish  # noqa: E402
from ..io import atomic_write  # noqa: E402

NORMALIZATIONS = ("scale255", "minmax", "percentile", "zscore")
PANEL_INCHES = 1.6
DPI = 100
MAX_AUGMENT_ROWS = 6


@dataclass
class Sample:
    """One image for the preview.

    Attributes:
        raw: resized raw intensities, float32 ``(C, H, W)`` or ``(C, D, H, W)``, before the
            preprocessing steps and the normalisation (what the reader returns).
        full_scale: maximum value of the file's data type (255 for 8-bit).
        label: class index.
        name: short name shown above the panel (file name).
        prepared: the preprocessed array (steps and normalisation applied), e.g. from the
            preprocessing cache; computed from ``raw`` when None.
    """

    raw: np.ndarray
    full_scale: float
    label: int
    name: str = ""
    prepared: np.ndarray | None = None


@dataclass
class PreviewResult:
    """What :func:`render_preview` drew.

    Attributes:
        path: the PNG file.
        size: ``(width, height)`` of the PNG in pixels.
        grids: ``{section: (rows, cols)}`` for ``preprocessed`` (one row per class),
            ``augmented`` (one row per shown image: the original then the random
            augmentations) and ``normalization`` (images and histograms, one column per mode).
        panels: one dict per drawn panel: ``section``, ``row``, ``col``, ``kind`` ('image'
            or 'histogram'), ``bbox`` ``(left, top, right, bottom)`` in PNG pixels.
        names: the file names shown in the ``preprocessed`` grid, row by row.
    """

    path: Path
    size: tuple[int, int]
    grids: dict[str, tuple[int, int]]
    panels: list[dict] = field(default_factory=list)
    names: list[list[str]] = field(default_factory=list)


def display_array(array: np.ndarray) -> np.ndarray:
    """A 2D (or RGB ``(H, W, 3)``) array to draw for one image or volume.

    ``(C, H, W)``: channel 0, or RGB when C == 3. ``(C, D, H, W)``: channel 0 as three
    orthogonal mid-slices side by side (axial ``[D/2]``, coronal ``[:, H/2]``, sagittal
    ``[:, :, W/2]``), padded with NaN (drawn as background) to a common height.
    """
    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 3:
        return np.moveaxis(array, 0, -1) if array.shape[0] == 3 else array[0]
    if array.ndim != 4:
        raise ValueError(f"expected (C, H, W) or (C, D, H, W), got shape {array.shape}")
    volume = array[0]
    depth, height, width = volume.shape
    slices = [volume[depth // 2], volume[:, height // 2, :], volume[:, :, width // 2]]
    rows = max(s.shape[0] for s in slices)
    gap = np.full((rows, 1), np.nan, dtype=np.float32)
    padded = []
    for s in slices:
        top = (rows - s.shape[0]) // 2
        block = np.full((rows, s.shape[1]), np.nan, dtype=np.float32)
        block[top:top + s.shape[0]] = s
        padded += [block, gap]
    return np.concatenate(padded[:-1], axis=1)


def display_range(normalization: str) -> tuple[float, float]:
    """Intensity window used to draw arrays of a normalisation mode: [0, 1], or
    [-3, 3] standard deviations for ``zscore``."""
    return (-3.0, 3.0) if normalization == "zscore" else (0.0, 1.0)


def _draw(ax, array: np.ndarray, window: tuple[float, float]) -> None:
    shown = display_array(array)
    cmap = plt.get_cmap("gray").with_extremes(bad="white")
    if shown.ndim == 3:  # RGB
        shown = np.clip((np.nan_to_num(shown, nan=window[1]) - window[0]) / (window[1] - window[0]), 0, 1)
        ax.imshow(shown, interpolation="nearest")
    else:
        ax.imshow(np.ma.masked_invalid(shown), cmap=cmap, vmin=window[0], vmax=window[1],
                  interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _grid(subfigure, rows: int, ncols: int, width: int, height_ratios=None) -> np.ndarray:
    """``rows x ncols`` axes centred in a ``rows x width`` grid, so that every section of the
    figure has panels of the same size whatever its number of columns."""
    spec = subfigure.add_gridspec(rows, width, height_ratios=height_ratios)
    offset = (width - ncols) // 2
    return np.array([[subfigure.add_subplot(spec[r, offset + k]) for k in range(ncols)] for r in range(rows)])


def _short(name: str, limit: int = 20) -> str:
    return name if len(name) <= limit else name[: limit - 3] + "..."


def render_preview(samples: list[Sample], class_names: list[str], config, out: str | Path,
                   per_class: int = 5, n_augment: int = 5) -> PreviewResult:
    """Draw the preview of a run's input pipeline into one PNG.

    Three sections, top to bottom:

    1. *after preprocessing*: up to ``per_class`` images per class (one row per class),
       after ``preprocess.steps`` and the configured normalisation (what the model sees
       at validation/test time).
    2. *augmentation*: the first image of each class (at most 6 rows), then ``n_augment``
       random draws of the training augmentation (:func:`medclf.data.augment.build_augmentation`,
       seeded by ``config.seed``).
    3. *normalisation*: the first image before any step (``raw``) and under each
       normalisation mode (``scale255``, ``minmax``, ``percentile``, ``zscore``), with the
       intensity histogram of each below it.

    Args:
        samples: raw images (see :class:`Sample`), all of one spatial size.
        class_names: names of the class indices.
        config: the resolved configuration (steps, normalisation, augmentation, seed).
        out: PNG path (written atomically).
        per_class: images per class in section 1.
        n_augment: augmentations per image in section 2.

    Returns:
        :class:`PreviewResult` with the grid sizes and the pixel box of every panel.

    Raises:
        ValueError: no samples.
        PreprocessStepError: a preprocessing step cannot be applied (names the step).
    """
    if not samples:
        raise ValueError("no images to preview")
    mode = config.preprocess.normalization
    window = display_range(mode)
    by_class = {c: [s for s in samples if s.label == c][:per_class] for c in range(len(class_names))}
    by_class = {c: s for c, s in by_class.items() if s}
    prepared = {id(s): s.prepared if s.prepared is not None else finish(s.raw, s.full_scale, config)
                for group in by_class.values() for s in group}

    spatial_dims = samples[0].raw.ndim - 1
    augmentation = build_augmentation(config.augment, spatial_dims, list(samples[0].raw.shape[1:]), config.seed)
    aug_samples = [group[0] for group in by_class.values()][:MAX_AUGMENT_ROWS]
    aug_cols = 1 + (n_augment if augmentation is not None else 0)
    first = aug_samples[0]
    norm_columns = ["raw"] + list(NORMALIZATIONS)

    grids = {"preprocessed": (len(by_class), max(len(g) for g in by_class.values())),
             "augmented": (len(aug_samples), aug_cols),
             "normalization": (2, len(norm_columns))}
    aspect = display_array(first.raw).shape[1] / display_array(first.raw).shape[0]
    panel_w = PANEL_INCHES * min(max(aspect, 1.0), 3.2)
    cols = max(c for _, c in grids.values())
    title_in = 0.45
    heights = [grids["preprocessed"][0] * PANEL_INCHES + title_in,
               grids["augmented"][0] * PANEL_INCHES + title_in,
               2 * PANEL_INCHES + title_in + 0.3]
    fig = plt.figure(figsize=(cols * panel_w + 0.6, sum(heights)), dpi=DPI)
    sections = fig.subfigures(3, 1, height_ratios=heights)
    drawn: list[tuple[str, int, int, str, object]] = []

    # 1. after preprocessing, one row per class
    rows, ncols = grids["preprocessed"]
    steps = ", ".join(s.name for s in config.preprocess.steps) or "none"
    sections[0].suptitle(f"after preprocessing (steps: {steps}; normalisation: {mode})", fontsize=11)
    axes = _grid(sections[0], rows, ncols, cols)
    names = []
    for r, (c, group) in enumerate(by_class.items()):
        names.append([s.name for s in group])
        for k in range(ncols):
            ax = axes[r, k]
            if k >= len(group):
                ax.axis("off")
                continue
            _draw(ax, prepared[id(group[k])], window)
            ax.set_title(_short(group[k].name), fontsize=7)
            drawn.append(("preprocessed", r, k, "image", ax))
        axes[r, 0].set_ylabel(_short(class_names[c], 16), fontsize=9)

    # 2. the same images under random augmentations
    rows, ncols = grids["augmented"]
    title = (f"random training augmentation ({n_augment} draws, seed {config.seed})" if augmentation is not None
             else "augmentation disabled (augment.enabled=false)")
    sections[1].suptitle(title, fontsize=11)
    axes = _grid(sections[1], rows, ncols, cols)
    for r, sample in enumerate(aug_samples):
        image = prepared[id(sample)]
        for k in range(ncols):
            ax = axes[r, k]
            if k == 0:
                shown = image
                ax.set_title("as preprocessed" if r == 0 else "", fontsize=7)
            else:
                shown = np.asarray(torch.as_tensor(augmentation(torch.from_numpy(image.copy()))), dtype=np.float32)
                ax.set_title(f"draw {k}" if r == 0 else "", fontsize=7)
            _draw(ax, shown, window)
            drawn.append(("augmented", r, k, "image", ax))
        axes[r, 0].set_ylabel(_short(class_names[sample.label], 16), fontsize=9)

    # 3. normalisation modes with their histograms
    sections[2].suptitle(f"normalisation modes of {_short(first.name, 40)} (configured: {mode})", fontsize=11)
    axes = _grid(sections[2], 2, len(norm_columns), cols, height_ratios=[1.0, 0.8])
    for k, column in enumerate(norm_columns):
        if column == "raw":
            values, shown_window = first.raw, (0.0, float(first.full_scale))
            label = f"raw, before steps (0..{first.full_scale:g})"
        else:
            values = finish(first.raw, first.full_scale, config, normalization=column)
            shown_window = display_range(column)
            label = column + (" *" if column == mode else "")
        _draw(axes[0, k], values, shown_window)
        axes[0, k].set_title(label, fontsize=8)
        drawn.append(("normalization", 0, k, "image", axes[0, k]))
        hist = axes[1, k]
        flat = np.asarray(values, dtype=np.float64).ravel()
        # stepfilled with an edge keeps one-bin spikes (e.g. a masked background) visible
        hist.hist(flat, bins=64, color="tab:blue", edgecolor="tab:blue", linewidth=0.8,
                  histtype="stepfilled", log=True)
        hist.axvspan(*shown_window, color="tab:orange", alpha=0.12, lw=0)
        hist.set_title(f"mean {flat.mean():.2f}, sd {flat.std():.2f}", fontsize=7)
        hist.tick_params(labelsize=6)
        drawn.append(("normalization", 1, k, "histogram", hist))

    out = Path(out)
    atomic_write(out, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))  # draws once; extents are now final
    width, height = fig.canvas.get_width_height()
    panels = []
    for section, r, k, kind, ax in drawn:
        box = ax.get_window_extent()
        panels.append({"section": section, "row": r, "col": k, "kind": kind,
                       "bbox": (int(round(box.x0)), int(round(height - box.y1)),
                                int(round(box.x1)), int(round(height - box.y0)))})
    plt.close(fig)
    return PreviewResult(out, (width, height), grids, panels, names)
