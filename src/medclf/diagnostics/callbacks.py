"""Training diagnostics as Lightning callbacks (off by default: ``diagnostics.enabled``).

* :class:`HistogramDiagnostics`: every ``every_n_steps`` steps, per-layer histograms of the
  weights, their gradients and the layer outputs (activations) to TensorBoard and to
  ``diagnostics/stats.csv``; the relative weight change since the last recorded step; the
  fraction of dead ReLU units per layer with a warning above ``dead_relu_threshold``. At the
  end of training: a PNG per recorded step, a GIF per kind and one summary figure
  (:mod:`medclf.diagnostics.figures`).
* :class:`GradNormMonitor`: the global gradient norm (before clipping) of every step to
  ``diagnostics/grad_norm.csv`` and TensorBoard, with warnings for exploding and vanishing
  gradients.

Histograms are counted with ``torch.histc`` and written with TensorBoard's
``add_histogram_raw``, so recording costs a few milliseconds per layer.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch import nn

from ..io import write_csv, write_text

log = logging.getLogger("medclf")

DIAGNOSTICS_DIR = "diagnostics"
KINDS = ("weights", "gradients", "activations")
_LAYER_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def recorded_layers(model: nn.Module, max_layers: int = 0) -> list[tuple[str, nn.Module]]:
    """Convolution and linear layers of ``model`` in definition order; with ``max_layers``
    > 0, that many evenly spread from the first to the last."""
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, _LAYER_TYPES)]
    if 0 < max_layers < len(layers):
        keep = sorted({int(round(i)) for i in np.linspace(0, len(layers) - 1, max_layers)})
        layers = [layers[i] for i in keep]
    return layers


MAX_SAMPLE = 1 << 16  # values per histogram; larger tensors are sampled with a fixed stride


def histogram(values: torch.Tensor, bins: int, max_sample: int = MAX_SAMPLE) -> dict:
    """Counts of ``values`` in ``bins`` equal bins between their min and max, with summary
    statistics (``min``, ``max``, ``mean``, ``std``, ``num``, ``sum``, ``sum_squares``).

    Tensors with more than ``max_sample`` elements (large activations) are histogrammed on
    every k-th element, which keeps a recorded step cheap; ``num``, ``sum`` and
    ``sum_squares`` are scaled back to the whole tensor. Non-finite values are left out.
    """
    flat = values.detach().reshape(-1)
    n_all = flat.numel()
    stride = max(1, -(-n_all // max_sample))
    sample = flat[::stride].float().cpu().contiguous()
    low, high = (float(v) for v in torch.aminmax(sample))
    if not (math.isfinite(low) and math.isfinite(high)):
        sample = sample[torch.isfinite(sample)]
        if sample.numel() == 0:
            sample = torch.zeros(1)
        low, high = (float(v) for v in torch.aminmax(sample))
    if high <= low:
        high = low + max(abs(low) * 1e-6, 1e-12)
    counts = torch.histc(sample, bins=bins, min=low, max=high)
    std, mean = (float(v) for v in torch.std_mean(sample, correction=0))
    return {"counts": counts.numpy().astype(np.float64), "edges": np.linspace(low, high, bins + 1),
            "min": low, "max": high, "num": n_all, "sum": mean * n_all,
            "sum_squares": (std * std + mean * mean) * n_all, "mean": mean, "std": std}


def dead_fraction(output: torch.Tensor) -> float:
    """Fraction of units (channels of ``(N, C, *spatial)``, features of ``(N, C)``) whose
    output is zero (or negative) for every sample and position of the batch."""
    if output.ndim < 2:
        return float("nan")
    dims = [0] + list(range(2, output.ndim))
    alive = output.detach().amax(dim=dims) > 0
    return float(1.0 - alive.float().mean())


def _tensorboard(trainer):
    """The SummaryWriter of the trainer's TensorBoardLogger, or None."""
    for logger in getattr(trainer, "loggers", []) or []:
        experiment = getattr(logger, "experiment", None)
        if experiment is not None and hasattr(experiment, "add_histogram_raw"):
            return experiment
    return None


class _Warnings:
    """Warn once per (kind, layer), log it and keep it for ``diagnostics/warnings.txt``."""

    def __init__(self):
        self.seen: set = set()
        self.lines: list[str] = []

    def warn(self, key, message: str) -> None:
        if key in self.seen:
            return
        self.seen.add(key)
        self.lines.append(message)
        log.warning("diagnostics: %s", message)


class HistogramDiagnostics(L.Callback):
    """Per-layer weight, gradient and activation histograms and dead ReLU units.

    Args:
        out_dir: the run's ``diagnostics/`` folder.
        config: the ``diagnostics`` config section.
    """

    def __init__(self, out_dir: str | Path, config):
        self.out_dir = Path(out_dir)
        self.cfg = config
        self.records: list[dict] = []   # one per (step, kind, layer): stats and histogram
        self.dead: list[dict] = []      # one per (step, relu layer)
        self.warnings = _Warnings()
        self._hooks: list = []
        self._layers: list[tuple[str, nn.Module]] = []
        self._activations: dict[str, dict] = {}
        self._relu: dict[str, list] = {}
        self._previous: dict[str, torch.Tensor] = {}
        self._gradients: dict[str, dict] = {}
        self._recording = False
        self._step = 0

    # -- which steps ------------------------------------------------------------------
    def _due(self, trainer) -> bool:
        # with several processes (DDP) only the first records: the others hold the same weights
        return trainer.is_global_zero and trainer.global_step % self.cfg.every_n_steps == 0

    def on_fit_start(self, trainer, pl_module):
        self._layers = recorded_layers(pl_module, self.cfg.max_layers)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._recording = self._due(trainer)
        if not self._recording:
            return
        self._step = trainer.global_step
        self._activations, self._relu, self._gradients = {}, {}, {}
        bins = self.cfg.bins
        for name, module in self._layers:
            self._hooks.append(module.register_forward_hook(
                lambda mod, i, out, name=name: self._activations.__setitem__(name, histogram(out, bins))))
        for name, module in pl_module.named_modules():
            if isinstance(module, nn.ReLU):
                self._hooks.append(module.register_forward_hook(
                    lambda mod, i, out, name=name: self._relu.setdefault(name, []).append(dead_fraction(out))))

    def _remove_hooks(self):
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if not self._recording:
            return
        self._remove_hooks()  # activations of this step's forward pass are recorded
        for name, module in self._layers:
            if module.weight.grad is not None:
                self._gradients[name] = histogram(module.weight.grad, self.cfg.bins)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not self._recording:
            return
        self._remove_hooks()
        self._recording = False
        step = self._step  # the step whose forward/backward pass was recorded
        writer = _tensorboard(trainer)
        for name, module in self._layers:
            weight = module.weight.detach()
            previous = self._previous.get(name)
            change = float((weight - previous).norm() / previous.norm().clamp(min=1e-12)) \
                if previous is not None and previous.shape == weight.shape else float("nan")
            self._previous[name] = weight.clone()
            stats = {"weights": histogram(weight, self.cfg.bins), "gradients": self._gradients.get(name),
                     "activations": self._activations.get(name)}
            for kind, hist in stats.items():
                if hist is None:
                    continue
                self.records.append({"step": step, "kind": kind, "layer": name,
                                     "rel_change": change if kind == "weights" else float("nan"), **hist})
                if writer is not None:
                    writer.add_histogram_raw(f"{kind}/{name}", hist["min"], hist["max"], hist["num"],
                                             hist["sum"], hist["sum_squares"], hist["edges"][1:].tolist(),
                                             hist["counts"].tolist(), global_step=step)
        for name, fractions in self._relu.items():
            fraction = float(np.nanmean(fractions))  # a module may run several times per pass
            self.dead.append({"step": step, "layer": name, "dead_fraction": fraction})
            if writer is not None:
                writer.add_scalar(f"dead_relu/{name}", fraction, global_step=step)
            if fraction > self.cfg.dead_relu_threshold:
                self.warnings.warn(("dead", name), f"{fraction:.0%} of the units of {name} are dead "
                                   f"(output zero for a whole batch) at step {step}; consider a lower "
                                   f"learning rate, LeakyReLU (model.activation=leakyrelu) or He init")

    # -- files ------------------------------------------------------------------------
    def stats_frame(self) -> pd.DataFrame:
        columns = ["step", "kind", "layer", "mean", "std", "min", "max", "num", "rel_change"]
        return pd.DataFrame([{c: r[c] for c in columns} for r in self.records], columns=columns)

    def on_train_end(self, trainer, pl_module):
        self._remove_hooks()
        if not self.records:
            return
        write_csv(self.out_dir / "stats.csv", self.stats_frame())
        write_csv(self.out_dir / "dead_relu.csv", pd.DataFrame(self.dead, columns=["step", "layer", "dead_fraction"]))
        _append_warnings(self.out_dir, self.warnings.lines)
        if self.cfg.images:
            from .figures import write_figures
            try:
                write_figures(self.out_dir, self.records, self.dead)
            except Exception as err:  # noqa: BLE001  (a figure must never lose the run)
                log.warning("diagnostics: could not draw the figures: %s", err)


class GradNormMonitor(L.Callback):
    """Global L2 norm of all gradients at every step, before clipping: the L2 norm of the
    per-tensor L2 norms, ``sqrt(sum over parameters of |grad|^2)``, by PyTorch's
    :func:`torch.nn.utils.get_total_norm` (the norm ``clip_grad_norm_`` clips).

    Args:
        out_dir: the run's ``diagnostics/`` folder.
        config: the ``diagnostics`` config section (``grad_norm_explode``, ``grad_norm_vanish``).
    """

    def __init__(self, out_dir: str | Path, config):
        self.out_dir = Path(out_dir)
        self.cfg = config
        self.rows: list[tuple[int, float]] = []
        self.warnings = _Warnings()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        if not grads or not getattr(trainer, "is_global_zero", True):
            return
        norm = float(torch.nn.utils.get_total_norm(grads, norm_type=2.0))
        step = trainer.global_step
        self.rows.append((step, norm))
        writer = _tensorboard(trainer)
        if writer is not None:
            writer.add_scalar("grad_norm", norm, global_step=step)
        if not math.isfinite(norm) or norm > self.cfg.grad_norm_explode:
            self.warnings.warn("explode", f"exploding gradients: global gradient norm {norm:.3g} at step "
                               f"{step} (> {self.cfg.grad_norm_explode:g}); lower train.lr or keep "
                               f"train.gradient_clip on")
        elif norm < self.cfg.grad_norm_vanish:
            self.warnings.warn("vanish", f"vanishing gradients: global gradient norm {norm:.3g} at step "
                               f"{step} (< {self.cfg.grad_norm_vanish:g}); check for dead units, "
                               f"saturated activations or a learning rate too low")

    def on_train_end(self, trainer, pl_module):
        if self.rows:
            write_csv(self.out_dir / "grad_norm.csv", pd.DataFrame(self.rows, columns=["step", "grad_norm"]))
        _append_warnings(self.out_dir, self.warnings.lines)


def _append_warnings(out_dir: Path, lines: list[str]) -> None:
    path = out_dir / "warnings.txt"
    old = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    if lines or not path.exists():
        write_text(path, "".join(f"{line}\n" for line in old + lines))


def build_callbacks(config, run_dir: str | Path) -> list[L.Callback]:
    """The diagnostics callbacks for a run (an empty list when ``config.enabled`` is off).

    Args:
        config: the ``diagnostics`` config section.
        run_dir: the run directory (outputs go to ``run_dir/diagnostics``).
    """
    if not config.enabled:
        return []
    out = Path(run_dir) / DIAGNOSTICS_DIR
    out.mkdir(parents=True, exist_ok=True)
    return [GradNormMonitor(out, config), HistogramDiagnostics(out, config)]
