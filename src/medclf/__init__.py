"""medclf: a folder of medical images to a trained, honestly evaluated classifier.

Public API::

    import medclf
    result = medclf.train("data/covid19-xray", overrides=["train.max_epochs=5"])
    result.run_dir, result.metrics["roc_auc"]
    medclf.evaluate(result.run_dir)
    medclf.predict(result.run_dir, ["image.png"])
"""
from __future__ import annotations

import os

# OpenMP threads that spin while waiting collapse PyTorch's CPU speed (5-20x measured) as
# soon as other processes share the cores; passive waiting costs little on an idle machine.
# Must be set before torch is first imported; a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .version import __version__  # noqa: E402  (after the OpenMP setting above)

__all__ = ["train", "evaluate", "predict", "__version__"]


def train(data=None, config=None, overrides=None, out="runs", name=None, progress=True,
          resume=None, overwrite=False, init_from=None):
    """Train and evaluate (or resume a run); see :func:`medclf.commands.train.train`."""
    from .commands.train import train as _train
    return _train(data, config=config, overrides=overrides, out=out, name=name, progress=progress,
                  resume=resume, overwrite=overwrite, init_from=init_from)


def evaluate(run_dir, data=None):
    """Re-evaluate a run; see :func:`medclf.commands.evaluate.evaluate_run`."""
    from .commands.evaluate import evaluate_run
    return evaluate_run(run_dir, data=data)


def predict(run_dir, paths, tta=None):
    """Predict images with a run's model (``tta``: test-time augmentation, default the run's
    ``eval.tta``); see :func:`medclf.commands.predict.predict_files`."""
    from .commands.predict import predict_files
    return predict_files(run_dir, paths, tta=tta)
