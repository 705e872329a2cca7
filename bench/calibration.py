"""Benchmark: validation-chosen threshold and temperature scaling on imbalanced PneumoniaMNIST.

Loads ../shared/data/medmnist/pneumoniamnist_reduced.npz with numpy (train 1:9 imbalanced,
test 3:5), writes its 28x28 images as PNG class folders (train/val/test) into a temporary
directory, trains with medclf's defaults (plus eval.temperature_scaling=true) and prints ONE
JSON line: test balanced accuracy at 0.5 and at the validation-chosen (Youden) threshold,
test ECE before and after temperature scaling, ROC AUC with its bootstrap CI, and timings.

    python bench/calibration.py [--epochs 10] [--seed 0] [--set key=value ...]

``--set`` (repeatable) passes further configuration overrides to training, after the
bench's own (so it can also change ``eval.temperature_scaling``); the JSON line lists them
under ``overrides``.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
NPZ = ROOT.parent / "shared" / "data" / "medmnist" / "pneumoniamnist_reduced.npz"
CLASSES = ("normal", "pneumonia")


def write_folders(npz: Path, root: Path) -> None:
    data = np.load(npz)
    for split in ("train", "val", "test"):
        images, labels = data[f"{split}_images"], data[f"{split}_labels"].ravel()
        for c, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True, exist_ok=True)
        for i, (image, label) in enumerate(zip(images, labels)):
            Image.fromarray(image).save(root / split / CLASSES[label] / f"{i:05d}.png")


def _round(value, digits):
    return None if value is None else round(value, digits)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=10)  # on a loaded 2-core CPU an epoch can take minutes: --epochs 3 for a quick check
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="extra configuration override for training (repeatable), e.g. --set train.lr=3e-4")
    args = parser.parse_args()
    import medclf
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "pneumoniamnist"
        write_folders(NPZ, data)
        overrides = [f"train.max_epochs={args.epochs}", f"seed={args.seed}", "eval.temperature_scaling=true",
                     *args.overrides]
        result = medclf.train(data, overrides=overrides,
                              out=Path(tmp) / "runs", name="bench", progress=False)
        m = result.metrics
        import pandas as pd
        epoch_s = pd.read_csv(result.run_dir / "metrics.csv")
        json_path = Path(tmp).parent / "medclf_bench_calibration_test_metrics.json"
        json_path.write_text((result.run_dir / "test_metrics.json").read_text())
    op, cal = m["operating_point"], m["calibration"]
    print(json.dumps({
        "bench": "calibration", "data": str(NPZ.name), "seed": args.seed, "overrides": args.overrides,
        "epochs_run": m["epochs_run"],
        "checkpoint_epoch": m["checkpoint_epoch"], "n_test": m["n"],
        "roc_auc": round(m["roc_auc"], 4), "roc_auc_ci": [round(v, 4) for v in m["roc_auc_ci"]],
        "balanced_accuracy_at_0.5": round(m["balanced_accuracy"], 4),
        "threshold": round(op["threshold"], 4), "threshold_method": op["method"],
        "balanced_accuracy_at_threshold": round(op["balanced_accuracy"], 4),
        "threshold_better": op["balanced_accuracy"] > m["balanced_accuracy"],
        "ece_before": round(cal["ece"], 4), "ece_after": _round(cal.get("ece_after"), 4),
        "temperature": _round(cal.get("temperature"), 3),  # None when an override turned scaling off
        "temperature_lowers_ece": cal["ece_after"] < cal["ece"] if "ece_after" in cal else None,
        "train_time_s": m["train_time_s"], "s_per_epoch": round(m["train_time_s"] / max(1, len(epoch_s)), 1),
        "wall_s": round(time.perf_counter() - started, 1), "rows_metrics_csv": int(len(epoch_s)),
    }))


if __name__ == "__main__":
    main()
