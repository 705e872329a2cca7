"""Figures of the recorded diagnostics: a PNG per recorded step, a GIF per kind over the
steps, and one summary figure (matplotlib, Agg backend; GIFs with Pillow)."""
from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from ..io import atomic_write  # noqa: E402

KINDS = ("weights", "gradients", "activations")


def _short(name: str, width: int = 28) -> str:
    return name if len(name) <= width else "..." + name[-(width - 3):]


def _save_image(image: Image.Image, path: Path, **kwargs) -> Path:
    fmt = "GIF" if path.suffix == ".gif" else "PNG"
    return atomic_write(path, lambda tmp: image.save(tmp, format=fmt, **kwargs))


def step_figures(out_dir: Path, records: list[dict], dpi: int = 60) -> dict[str, list[Image.Image]]:
    """Write ``steps/step_<N>.png`` (rows: layers; columns: weights, gradients, activations)
    and return the frames of each kind (the figure's columns) for the GIFs.

    The x range of each panel is fixed over all steps, so the GIF shows the distribution move.
    """
    layers = list(dict.fromkeys(r["layer"] for r in records))
    steps = sorted({r["step"] for r in records})
    by_key = {(r["step"], r["kind"], r["layer"]): r for r in records}
    limits = {}
    for r in records:
        low, high = limits.get((r["kind"], r["layer"]), (np.inf, -np.inf))
        limits[(r["kind"], r["layer"])] = (min(low, r["min"]), max(high, r["max"]))
    fig, axes = plt.subplots(len(layers), 3, figsize=(9, 1.0 * len(layers) + 0.8), squeeze=False)
    artists = {}
    for row, layer in enumerate(layers):
        for col, kind in enumerate(KINDS):
            ax = axes[row, col]
            artists[(kind, layer)] = ax.stairs([0], [0, 1], fill=True, color=f"C{col}")
            low, high = limits.get((kind, layer), (0, 1))
            ax.set_xlim(low, high if high > low else low + 1)
            ax.set_yticks([])
            ax.tick_params(labelsize=6)
            ax.set_title(f"{kind}: {_short(layer)}", fontsize=7)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.25 / fig.get_figheight()))  # room for the step label
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    height = fig.canvas.get_width_height()[1]
    boxes = []
    for col in range(3):
        extents = [axes[r, col].get_tightbbox(renderer) for r in range(len(layers))]
        boxes.append((int(max(0, min(e.x0 for e in extents) - 4)), 0,
                      int(max(e.x1 for e in extents) + 4), height))
    frames = {kind: [] for kind in KINDS}
    for step in steps:
        for row, layer in enumerate(layers):
            for col, kind in enumerate(KINDS):
                record = by_key.get((step, kind, layer))
                artist = artists[(kind, layer)]
                ax = axes[row, col]
                if record is None:
                    artist.set_data([0], [0, 1])
                    continue
                artist.set_data(record["counts"], record["edges"])
                ax.set_ylim(0, max(record["counts"].max(), 1) * 1.05)
        fig.canvas.draw()
        image = Image.fromarray(np.asarray(fig.canvas.buffer_rgba())).convert("RGB")
        for col, kind in enumerate(KINDS):
            frame = image.crop(boxes[col])
            ImageDraw.Draw(frame).text((6, 2), f"{kind}, step {step}", fill=(0, 0, 0))
            frames[kind].append(frame)
        ImageDraw.Draw(image).text((6, 2), f"step {step}: per-layer histograms", fill=(0, 0, 0))
        _save_image(image, out_dir / "steps" / f"step_{step:06d}.png")
    plt.close(fig)
    return frames


def write_gifs(out_dir: Path, frames: dict[str, list[Image.Image]], ms_per_frame: int = 600) -> list[Path]:
    """One GIF per kind (``weights.gif``, ``gradients.gif``, ``activations.gif``)."""
    paths = []
    for kind, images in frames.items():
        if images:
            paths.append(_save_image(images[0], out_dir / f"{kind}.gif", save_all=True,
                                     append_images=images[1:], duration=ms_per_frame, loop=0))
    return paths


def summary_figure(out_dir: Path, records: list[dict], dead: list[dict]) -> Path:
    """``summary.png``: spread (std) of weights, gradients and activations per layer over
    the steps, the global gradient norm, the dead ReLU fraction and the relative weight
    change per layer."""
    stats = pd.DataFrame([{k: r[k] for k in ("step", "kind", "layer", "std", "rel_change")} for r in records])
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    for ax, kind in zip(axes[0], KINDS):
        part = stats[stats.kind == kind]
        for layer, rows in part.groupby("layer", sort=False):
            ax.plot(rows.step, rows["std"], marker=".", label=_short(layer))
        if (part["std"] > 0).any():
            ax.set_yscale("log")
        ax.set_title(f"{kind}: standard deviation per layer")
        ax.set_xlabel("step")
    axes[0, 0].legend(fontsize=6, loc="best")
    norm_csv = out_dir / "grad_norm.csv"
    ax = axes[1, 0]
    if norm_csv.exists():
        norms = pd.read_csv(norm_csv)
        ax.plot(norms.step, norms.grad_norm, lw=0.8)
        if (norms.grad_norm > 0).any():
            ax.set_yscale("log")
    ax.set_title("global gradient norm (before clipping)")
    ax.set_xlabel("step")
    ax = axes[1, 1]
    if dead:
        frame = pd.DataFrame(dead)
        for layer, rows in frame.groupby("layer", sort=False):
            ax.plot(rows.step, rows.dead_fraction, marker=".", label=_short(layer))
        ax.legend(fontsize=6, loc="best")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("dead ReLU units (fraction per layer)")
    ax.set_xlabel("step")
    ax = axes[1, 2]
    part = stats[(stats.kind == "weights") & stats.rel_change.notna()]
    for layer, rows in part.groupby("layer", sort=False):
        ax.plot(rows.step, rows.rel_change, marker=".", label=_short(layer))
    if (part.rel_change > 0).any():
        ax.set_yscale("log")
    ax.set_title("relative weight change since the previous recorded step")
    ax.set_xlabel("step")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    return atomic_write(out_dir / "summary.png", lambda tmp: Path(tmp).write_bytes(buffer.getvalue()))


def write_figures(out_dir: str | Path, records: list[dict], dead: list[dict]) -> None:
    """All figures of :class:`~medclf.diagnostics.callbacks.HistogramDiagnostics`."""
    out_dir = Path(out_dir)
    frames = step_figures(out_dir, records)
    write_gifs(out_dir, frames)
    summary_figure(out_dir, records, dead)
