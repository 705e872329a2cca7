"""TPE search of 12 trials with a small epoch budget on ../shared/data/covid19-xray.

First trains the default configuration with the same epoch budget (its best validation
ROC AUC is the baseline), then runs ``medclf tune`` (TPE sampler, median pruner) in the
same process, so images are decoded once. Prints one JSON line with the wall times, the
baseline and best validation AUC (the test split is used for the best trial only, after
the search), mean seconds per epoch, and the load average (the machine may be shared).

Usage: python bench/tune_covid19.py [--trials 12] [--epochs 6] [--data DIR] [--out DIR] [--set key=value ...]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

SPACE = {
    "train.lr": {"low": 3.0e-4, "high": 1.0e-2, "log": True},
    "train.weight_decay": {"low": 1.0e-5, "high": 1.0e-2, "log": True},
    "train.batch_size": [16, 32],
    "model.dropout": {"low": 0.0, "high": 0.5},
    "train.label_smoothing": [0.0, 0.05, 0.1],
    "model.filters": [[16, 32, 64, 128], [24, 48, 96, 192]],
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "covid19-xray"))
    parser.add_argument("--out", default=None, help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="base setting of the baseline and of every trial, e.g. data.image_size=[128,128]")
    args = parser.parse_args()

    from medclf.commands.train import train
    from medclf.commands.tune import tune

    load_start = os.getloadavg()
    budget = [f"train.max_epochs={args.epochs}", *args.overrides]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        start = time.perf_counter()
        baseline = train(args.data, overrides=budget, out=out / "baseline", name="default",
                         progress=False, evaluate_test=False)
        base_metrics = pd.read_csv(baseline.run_dir / "metrics.csv")
        baseline_s = time.perf_counter() - start
        search_start = time.perf_counter()
        result = tune(args.data, SPACE, sampler="tpe", trials=args.trials, out=out / "searches",
                      name="covid19-tpe", pruner="median", overrides=budget)
        search_s = time.perf_counter() - search_start
        table = result.table
        epochs = []
        for run_dir in table.run_dir.dropna():
            metrics_csv = result.search_dir / run_dir / "metrics.csv"
            if run_dir and metrics_csv.exists():
                epochs.append(pd.read_csv(metrics_csv).epoch_time_s)
        epoch_times = pd.concat(epochs) if epochs else pd.Series(dtype=float)
        best = table.iloc[0]
        test = result.test_metrics or {}
        print(json.dumps({
            "data": args.data, "overrides": args.overrides, "trials": args.trials, "max_epochs": args.epochs, "sampler": "tpe",
            "pruner": "median", "cpu_count": os.cpu_count(),
            "states": table.state.value_counts().to_dict(),
            "epochs_trained": int(table.epochs_run.fillna(0).sum()),
            "baseline_val_roc_auc": round(float(base_metrics.val_roc_auc.max()), 4),
            "best_val_roc_auc": round(float(best.val_roc_auc), 4),
            "best_trial": int(best.trial),
            "best_params": {k: best[k] for k in SPACE if k in best},
            "best_test": {k: round(test[k], 4) for k in ("accuracy", "balanced_accuracy", "roc_auc") if k in test},
            "mean_epoch_s": round(float(epoch_times.mean()), 2) if len(epoch_times) else None,
            "baseline_wall_s": round(baseline_s, 1), "search_wall_s": round(search_s, 1),
            "total_wall_s": round(time.perf_counter() - start, 1),
            "loadavg_start": [round(x, 1) for x in load_start],
            "loadavg_end": [round(x, 1) for x in os.getloadavg()],
        }, default=str))


if __name__ == "__main__":
    main()
