"""Train medclf with default settings on ../shared/data/covid19-xray for several seeds.

Each run is a separate ``medclf train`` process, so the wall time includes start-up,
decoding, training, evaluation and the report. Prints one JSON line with test accuracy,
macro ROC AUC, balanced accuracy, wall time and per-epoch time of each run, their mean
and spread, and whether the targets (mean ROC AUC >= 0.98, mean accuracy >= 0.90, every
run <= 180 s) were met.

Usage: python bench/covid19.py [--seeds 0 1 2] [--data DIR] [--set key=value ...]
"""
from __future__ import annotations

from _seeds import ROOT, run_seeds

if __name__ == "__main__":
    run_seeds(ROOT.parent / "shared" / "data" / "covid19-xray", __doc__,
              targets={"roc_auc": 0.98, "accuracy": 0.90}, max_wall_s=180)
