"""Train medclf with default settings on ../shared/data/covid19-xray for several seeds.

Each run is a separate ``medclf train`` process, so the wall time includes start-up,
decoding, training and evaluation. Prints one JSON line:
``{"runs": [{seed, accuracy, roc_auc, balanced_accuracy, wall_s}], "mean": {...}, "std": {...}}``.

Usage: python bench/covid19.py [--seeds 0 1 2] [--data DIR] [--set key=value ...]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "covid19-xray"))
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
            runs.append({"seed": seed, "accuracy": round(metrics["accuracy"], 4),
                         "roc_auc": round(metrics["roc_auc"], 4),
                         "balanced_accuracy": round(metrics["balanced_accuracy"], 4),
                         "epochs_run": metrics.get("epochs_run"), "wall_s": round(wall, 1)})
    keys = ("accuracy", "roc_auc", "balanced_accuracy", "wall_s")
    mean = {k: round(statistics.mean(r[k] for r in runs), 4) for k in keys}
    spread = {k: round(statistics.pstdev(r[k] for r in runs), 4) for k in keys}
    print(json.dumps({"data": args.data, "overrides": args.overrides, "runs": runs, "mean": mean,
                      "std": spread, "max_wall_s": max(r["wall_s"] for r in runs)}))


if __name__ == "__main__":
    main()
