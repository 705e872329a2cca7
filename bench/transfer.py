"""covid19-xray trained from scratch vs fine-tuned from a run on another dataset, same seeds,
reported on the test images that the cross-dataset leakage check does not flag.

For each seed: ``medclf train covid19-xray`` from scratch with the source run's model
settings, and ``medclf train covid19-xray --init-from SOURCE`` (``train.freeze_epochs``,
``train.backbone_lr_scale``), same image size, epochs and seed. The fine-tuned runs' leakage
check flags covid validation/test images that were training images of the source run
(``inspection.json``, ``source_run_leaks``); accuracy and macro ROC AUC of *both* arms are
computed from ``predictions.csv`` on the test images no fine-tuned run flagged.

Prints one JSON line: per arm the per-seed and mean accuracy / ROC AUC, the number of flagged
validation/test images, and up to 5 examples (covid image, source image, kind, correlation).

Usage: python bench/transfer.py --source runs/<chest-xray run> [--seeds 0 1 2] [--epochs 15]
       [--image-size 128] [--out /tmp/transfer]
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from sklearn.metrics import roc_auc_score

import medclf

ROOT = Path(__file__).resolve().parents[1]
COVID = ROOT.parent / "shared" / "data" / "covid19-xray"


def scores(run: Path, exclude: set[str]) -> dict:
    frame = pd.read_csv(run / "predictions.csv")
    frame = frame[~frame.path.isin(exclude)]
    classes = json.loads((run / "test_metrics.json").read_text())["class_names"]
    probabilities = frame[[f"prob_{c}" for c in classes]].to_numpy()
    labels = frame.label.map({c: i for i, c in enumerate(classes)}).to_numpy()
    return {"n": int(len(frame)), "accuracy": float((probabilities.argmax(1) == labels).mean()),
            "roc_auc": float(roc_auc_score(labels, probabilities, multi_class="ovr", average="macro"))}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", required=True, help="the run to fine-tune from")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--freeze-epochs", type=int, default=2)
    parser.add_argument("--backbone-lr-scale", type=float, default=0.3)
    parser.add_argument("--out", default="/tmp/transfer")
    args = parser.parse_args()
    source = Path(args.source)
    model = yaml.safe_load((source / "config.yaml").read_text())["model"]
    same_model = [f"model.{k}={json.dumps(v)}" for k, v in model.items() if k != "weights"]
    common = [f"data.image_size=[{args.image_size},{args.image_size}]", f"train.max_epochs={args.epochs}",
              "eval.drop_duplicates=true"]
    runs: dict[str, list[Path]] = {"scratch": [], "finetuned": []}
    for seed in args.seeds:
        runs["scratch"].append(medclf.train(COVID, overrides=[*common, *same_model, f"seed={seed}"], out=args.out,
                                            name=f"scratch-s{seed}", overwrite=True, progress=False).run_dir)
        runs["finetuned"].append(medclf.train(
            COVID, overrides=[*common, f"seed={seed}", f"train.freeze_epochs={args.freeze_epochs}",
                              f"train.backbone_lr_scale={args.backbone_lr_scale}"],
            out=args.out, name=f"finetuned-s{seed}", overwrite=True, progress=False, init_from=source).run_dir)
    flagged: dict[str, dict] = {"val": {}, "test": {}}
    for run in runs["finetuned"]:
        leaks = json.loads((run / "inspection.json").read_text())["source_run_leaks"]
        for split in ("val", "test"):
            for record in leaks[split]:
                flagged[split].setdefault(record["path"], record)
    exclude = set(flagged["test"])
    result = {"source": str(source), "seeds": args.seeds, "epochs": args.epochs, "image_size": args.image_size,
              "freeze_epochs": args.freeze_epochs, "backbone_lr_scale": args.backbone_lr_scale,
              "n_flagged_val": len(flagged["val"]), "n_flagged_test": len(flagged["test"]),
              "flagged_by_kind": {s: {k: sum(r["duplicates"][0]["kind"] == k for r in flagged[s].values())
                                      for k in ("exact", "near")} for s in ("val", "test")},
              "examples": [{"covid": r["path"], "label": r["label"], "source": r["duplicates"][0]["path"],
                            "source_label": r["duplicates"][0]["label"], "kind": r["duplicates"][0]["kind"],
                            "correlation": r["duplicates"][0].get("correlation")}
                           for r in list(flagged["test"].values())[:5]]}
    for arm, dirs in runs.items():
        per_seed = [scores(d, exclude) for d in dirs]
        per_seed_all = [scores(d, set()) for d in dirs]
        result[arm] = {"per_seed": per_seed,
                       "mean_accuracy": statistics.mean(s["accuracy"] for s in per_seed),
                       "mean_roc_auc": statistics.mean(s["roc_auc"] for s in per_seed),
                       "mean_accuracy_all_test": statistics.mean(s["accuracy"] for s in per_seed_all),
                       "mean_roc_auc_all_test": statistics.mean(s["roc_auc"] for s in per_seed_all),
                       "sd_roc_auc": float(np.std([s["roc_auc"] for s in per_seed], ddof=1)) if len(dirs) > 1 else 0.0}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
