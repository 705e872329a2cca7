"""Evaluate a model on a split: predictions.csv, test_metrics.json and plots of a run."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import rundir
from ..io import write_csv, write_json
from ..models import create_model
from . import plots
from .metrics import classification_metrics


def pick_device(accelerator: str = "auto") -> torch.device:
    """CUDA when available (and not forced to CPU), else CPU."""
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


@torch.no_grad()
def predict_probabilities(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 64,
                          device: torch.device | None = None) -> np.ndarray:
    """Softmax probabilities ``(N, num_classes)`` for images ``(N, C, *spatial)``."""
    device = device or pick_device()
    model = model.to(device).eval()
    chunks = [model(images[i:i + batch_size].to(device)).float().softmax(dim=1).cpu()
              for i in range(0, len(images), batch_size)]
    return torch.cat(chunks).numpy() if chunks else np.zeros((0, 0))


def load_model(run: rundir.Run, checkpoint: str | Path | None = None) -> torch.nn.Module:
    """The run's network with the weights of its best (else last) checkpoint, in eval mode.

    Checkpoints are read with ``weights_only=True``.
    """
    model_cfg = run.config.model.model_copy(update={"weights": str(checkpoint or run.checkpoint)})
    return create_model(model_cfg, run.config.data.in_channels, len(run.class_names)).eval()


def write_evaluation(run_path: Path, frame: pd.DataFrame, probabilities: np.ndarray,
                     labels: np.ndarray, class_names: list[str], checkpoint: str,
                     extra: dict | None = None) -> dict:
    """Write predictions.csv, test_metrics.json, confusion-matrix and ROC plots.

    Args:
        frame: manifest rows of the evaluated images (``path``, ``label``).
        probabilities: float ``(N, num_classes)``.
        labels: int ``(N,)`` true class indices.

    Returns:
        the metrics dict (also in test_metrics.json).
    """
    metrics = classification_metrics(labels, probabilities, class_names)
    metrics = {"checkpoint": checkpoint, "class_names": class_names, **metrics, **(extra or {})}
    predictions = pd.DataFrame({"path": frame.path.to_numpy(), "label": frame.label.to_numpy(),
                                "predicted": [class_names[i] for i in probabilities.argmax(axis=1)]})
    for c, name in enumerate(class_names):
        predictions[f"prob_{name}"] = probabilities[:, c]
    write_csv(run_path / rundir.PREDICTIONS, predictions)
    write_json(run_path / rundir.TEST_METRICS, metrics)
    plots.confusion_matrix_plot(metrics["confusion_matrix"], class_names, run_path / "plots" / "confusion_matrix.png")
    plots.roc_curves(labels, probabilities, class_names, run_path / "plots" / "roc_curves.png")
    if (run_path / rundir.METRICS).exists():
        plots.learning_curves(run_path / rundir.METRICS, run_path / "plots" / "learning_curves.png")
    return metrics
