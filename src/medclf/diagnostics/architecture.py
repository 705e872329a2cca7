"""The model architecture of a run: a text summary (output shapes, parameter counts) and a
graph PNG drawn with torchview and Graphviz.

Both are written to every run directory (``architecture.txt``, ``architecture.png``);
a missing Graphviz only gives a warning.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from .. import rundir
from ..io import atomic_write, write_text

log = logging.getLogger("medclf")

TEXT = rundir.ARCHITECTURE_TEXT
GRAPH = rundir.ARCHITECTURE_GRAPH


def _count(module: nn.Module) -> tuple[int, int]:
    params = list(module.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def summary_text(model: nn.Module, input_shape: tuple[int, ...], max_depth: int = 3) -> str:
    """A table of the modules up to ``max_depth`` levels deep: name, type, output shape and
    parameter count (including sub-modules), from one forward pass of zeros
    ``(1, *input_shape)`` with ``input_shape = (C, *spatial)``."""
    shapes: dict[str, str] = {}
    hooks = []
    for name, module in model.named_modules():
        if name.count(".") < max_depth:
            def hook(mod, inputs, output, name=name):
                shapes[name] = str(tuple(output.shape)) if isinstance(output, torch.Tensor) else type(output).__name__
            hooks.append(module.register_forward_hook(hook))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    rows = [("layer", "type", "output shape", "parameters")]
    for name, module in model.named_modules():
        if name.count(".") >= max_depth or (name and name not in shapes):
            continue
        depth = 0 if not name else name.count(".") + 1
        rows.append(("  " * depth + (name.rsplit(".", 1)[-1] if name else "(model)"),
                     type(module).__name__, shapes.get(name, ""), f"{_count(module)[0]:,}"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) if i < 3 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths)))
             for r in rows]
    total, trainable = _count(model)
    size_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2 ** 20
    lines.insert(1, "-" * len(lines[0]))
    lines += ["", f"input shape: {(1, *input_shape)}", f"parameters: {total:,} ({trainable:,} trainable), "
              f"{size_mb:.2f} MB as float32"]
    return "\n".join(lines) + "\n"


def graph_png(model: nn.Module, input_shape: tuple[int, ...], depth: int = 2) -> bytes:
    """The model graph as PNG bytes (torchview ``draw_graph`` rendered by Graphviz ``dot``).

    Raises:
        ImportError, graphviz.ExecutableNotFound, ...: torchview or Graphviz missing.
    """
    from torchview import draw_graph
    was_training = model.training
    try:
        model.eval()
        graph = draw_graph(model, input_size=(1, *input_shape), depth=depth, device="cpu",
                           expand_nested=True, graph_name=type(model).__name__, save_graph=False)
    finally:
        model.train(was_training)
    return graph.visual_graph.pipe(format="png")


def write_architecture(model: nn.Module, input_shape: tuple[int, ...], run_dir: str | Path,
                       depth: int = 2) -> list[Path]:
    """Write ``architecture.txt`` and ``architecture.png`` into ``run_dir``.

    Never raises: a failure (e.g. no Graphviz ``dot`` on the PATH) is logged as a warning.

    Returns:
        the files written.
    """
    run_dir = Path(run_dir)
    written = []
    try:
        written.append(write_text(run_dir / TEXT, summary_text(model, tuple(input_shape))))
    except Exception as err:  # noqa: BLE001
        log.warning("could not write the architecture summary: %s", err)
    try:
        png = graph_png(model, tuple(input_shape), depth)
        written.append(atomic_write(run_dir / GRAPH, lambda tmp: Path(tmp).write_bytes(png)))
    except Exception as err:  # noqa: BLE001
        log.warning("could not draw the architecture graph (%s: %s); install Graphviz "
                    "(apt-get install graphviz) and torchview", type(err).__name__, err)
    return written
