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


PANEL = (250, 64)   # plot area of one histogram, pixels (width, height)
TEXT_H = 13          # one line of Pillow's default font
COLOURS = {"weights": (31, 119, 180), "gradients": (255, 127, 14), "activations": (44, 160, 44)}


def _panel(record: dict | None, limits: tuple[float, float], kind: str, layer: str) -> Image.Image:
    """One histogram drawn with Pillow (fast enough to draw at every recorded step)."""
    width, height = PANEL[0] + 8, PANEL[1] + 2 * TEXT_H + 6
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((4, 1), _short(layer, 40), fill=(0, 0, 0))
    top, bottom, left = TEXT_H + 2, TEXT_H + 2 + PANEL[1], 4
    low, high = limits
    span = (high - low) or 1.0

    def x(value):
        return left + (value - low) / span * PANEL[0]
    if low < 0 < high:
        draw.line([(x(0), top), (x(0), bottom)], fill=(190, 190, 190))
    if record is not None:
        counts, edges = record["counts"], record["edges"]
        peak = max(float(counts.max()), 1.0)
        for count, a, b in zip(counts, edges[:-1], edges[1:]):
            if count > 0:
                draw.rectangle([x(a), bottom - count / peak * PANEL[1], max(x(b) - 1, x(a)), bottom],
                               fill=COLOURS[kind])
    draw.line([(left, bottom), (left + PANEL[0], bottom)], fill=(0, 0, 0))
    draw.text((left, bottom + 2), f"{low:.3g}", fill=(60, 60, 60))
    label = f"{high:.3g}"
    draw.text((left + PANEL[0] - 6 * len(label), bottom + 2), label, fill=(60, 60, 60))
    return image


def step_figures(out_dir: Path, records: list[dict]) -> dict[str, list[Image.Image]]:
    """Write ``steps/step_<N>.png`` (rows: layers; columns: weights, gradients, activations)
    and return the frames of each kind (the figure's columns) for the GIFs.

    The x range of each panel is fixed over all steps, so the GIF shows the distribution
    move. Drawn with Pillow, a few milliseconds per step.
    """
    layers = list(dict.fromkeys(r["layer"] for r in records))
    steps = sorted({r["step"] for r in records})
    by_key = {(r["step"], r["kind"], r["layer"]): r for r in records}
    limits = {}
    for r in records:
        low, high = limits.get((r["kind"], r["layer"]), (np.inf, -np.inf))
        limits[(r["kind"], r["layer"])] = (min(low, r["min"]), max(high, r["max"]))
    frames = {kind: [] for kind in KINDS}
    for step in steps:
        columns = []
        for kind in KINDS:
            panels = [_panel(by_key.get((step, kind, layer)), limits.get((kind, layer), (0.0, 1.0)), kind, layer)
                      for layer in layers]
            column = Image.new("RGB", (panels[0].width, 2 * TEXT_H + sum(p.height for p in panels)), "white")
            ImageDraw.Draw(column).text((4, 2), f"{kind}, step {step}", fill=(0, 0, 0))
            y = 2 * TEXT_H
            for panel in panels:
                column.paste(panel, (0, y))
                y += panel.height
            columns.append(column)
            frames[kind].append(column)
        sheet = Image.new("RGB", (sum(c.width for c in columns), columns[0].height), "white")
        for i, column in enumerate(columns):
            sheet.paste(column, (i * columns[0].width, 0))
        _save_image(sheet, out_dir / "steps" / f"step_{step:06d}.png")
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
