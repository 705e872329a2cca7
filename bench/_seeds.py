"""Shared by the benchmark scripts: run ``medclf train`` once per seed (one process each)
and print one JSON line with the test metrics, wall time and per-epoch times of every run."""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def _operating_point(metrics: dict) -> dict:
    """Accuracy and balanced accuracy at the validation-chosen threshold (binary tasks)."""
    op = metrics.get("operating_point") or {}
    found = {f"{key}_at_threshold": round(op[key], 4) for key in ("accuracy", "balanced_accuracy") if key in op}
    if "threshold" in op:
        found["threshold"] = round(op["threshold"], 4)
    return found


def run_seeds(default_data: Path, description: str, targets: dict[str, float], max_wall_s: float) -> None:
    """Parse ``--seeds --data --set``, train once per seed, print one JSON line.

    Args:
        default_data: the dataset trained on unless ``--data`` is given.
        description: the script's help text.
        targets: minimum mean of test metrics, e.g. ``{"roc_auc": 0.92}``; the line says
            whether each was met (``"met"``).
        max_wall_s: the wall-time limit of one run, seconds.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--data", default=str(default_data))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as out:
        for seed in args.seeds:
            command = [sys.executable, "-m", "medclf.cli", "train", args.data, "--out", out,
                       "--name", f"seed{seed}", "--no-progress", "--set", f"seed={seed}"]
            for item in args.overrides:
                command += ["--set", item]
            start = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True)
            wall = time.perf_counter() - start
            if done.returncode != 0:
                sys.exit(f"seed {seed} failed:\n{done.stderr[-3000:]}")
            run_dir = Path(done.stdout.strip().splitlines()[-1])
            metrics = json.loads((run_dir / "test_metrics.json").read_text())
            epochs = pd.read_csv(run_dir / "metrics.csv")
            runs.append({"seed": seed, "accuracy": round(metrics["accuracy"], 4),
                         "roc_auc": round(metrics["roc_auc"], 4),
                         "balanced_accuracy": round(metrics["balanced_accuracy"], 4),
                         **_operating_point(metrics),
                         "epochs_run": int(len(epochs)), "best_epoch": metrics.get("checkpoint_epoch"),
                         "median_epoch_s": round(float(epochs.epoch_time_s.median()), 2),
                         "wall_s": round(wall, 1)})
    keys = ("accuracy", "roc_auc", "balanced_accuracy", "wall_s", "median_epoch_s")
    mean = {k: round(statistics.mean(r[k] for r in runs), 4) for k in keys}
    spread = {k: round(statistics.pstdev(r[k] for r in runs), 4) for k in keys}
    max_wall = max(r["wall_s"] for r in runs)
    met = {k: mean[k] >= v for k, v in targets.items()}
    met["wall_s"] = max_wall <= max_wall_s
    print(json.dumps({"data": args.data, "overrides": args.overrides, "runs": runs, "mean": mean,
                      "std": spread, "max_wall_s": max_wall,
                      "targets": {**targets, "max_wall_s": max_wall_s}, "met": met}))
