"""Default ``medclf train`` on the imbalanced PneumoniaMNIST copy
(../shared/data/medmnist/pneumoniamnist_reduced.npz: train 1:9, test 3:5, 28x28).

Trains with default settings for seeds 0, 1, 2, one process each, and prints one JSON
line: per-run test accuracy, ROC AUC, balanced accuracy, epochs, median seconds per epoch
and wall time; their mean and spread; and whether the targets were met (mean test ROC AUC
>= 0.975, balanced accuracy >= 0.89, each run <= 5 minutes wall on 2 cores).

Usage: python bench/pneumonia.py [--seeds 0 1 2] [--data FILE.npz] [--set key=value ...]
"""
from __future__ import annotations

from _seeds import ROOT, run_seeds

if __name__ == "__main__":
    run_seeds(ROOT.parent / "shared" / "data" / "medmnist" / "pneumoniamnist_reduced.npz", __doc__,
              {"roc_auc": 0.975, "balanced_accuracy": 0.89}, max_wall_s=5 * 60)
