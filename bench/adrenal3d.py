"""Default ``medclf train`` on AdrenalMNIST3D at 64^3 (../shared/data/medmnist/adrenalmnist3d_64.npz).

Trains with default settings (the 3D plan) for seeds 0, 1, 2, one process each, and
prints one JSON line: per-run test accuracy, ROC AUC, balanced accuracy, epochs, median
seconds per epoch and wall time; their mean and spread; and whether the targets were met
(mean test ROC AUC >= 0.92, accuracy >= 0.86, each run <= 12 minutes wall on 2 cores).

Usage: python bench/adrenal3d.py [--seeds 0 1 2] [--data FILE.npz] [--set key=value ...]
"""
from __future__ import annotations

from _seeds import ROOT, run_seeds

if __name__ == "__main__":
    run_seeds(ROOT.parent / "shared" / "data" / "medmnist" / "adrenalmnist3d_64.npz", __doc__,
              {"roc_auc": 0.92, "accuracy": 0.86}, max_wall_s=12 * 60)
