"""Test-time augmentation variants judged on out-of-fold or validation predictions, without training again.

For k-fold ensemble runs kept by ``bench/suite.py --keep-runs DIR``, every fold model
predicts the pooled images it did not train on; for one-model runs, the model predicts its
validation split. Each is done once per variant (``eval.tta`` and ``eval.tta_shift``
settings), and the accuracy, balanced accuracy, macro ROC AUC and log-loss of each variant
are printed as one JSON line per run, then their means. The run's own settings must
reproduce its ``oof_predictions.csv`` (k-fold) or the accuracy and ROC AUC of its
``validation_metrics.json`` (one model) (checked: a mismatch stops the script), so the
comparison is with what the run actually did. The test split is not read.

    python bench/oof_tta.py /tmp/keep/covid19-seed*/* --variants flip flip+shift0.03 none
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, balanced_accuracy_score, log_loss, roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from medclf import rundir  # noqa: E402
from medclf.data.prepare import prepare_images  # noqa: E402
from medclf.data.sources import Manifest  # noqa: E402
from medclf.evaluation.predict import load_model, predict_probabilities, predict_tta  # noqa: E402


def variant_config(config, name: str):
    """The run's configuration with the TTA of variant ``name``: ``none``, ``flip`` or
    ``flip+shiftX`` (X: ``eval.tta_shift``, a fraction of the image size)."""
    if name == "none":
        return config.model_copy(update={"eval": config.eval.model_copy(update={"tta": False})})
    shift = float(name.split("shift", 1)[1]) if "+shift" in name else 0.0
    return config.model_copy(update={"eval": config.eval.model_copy(update={"tta": True, "tta_shift": shift})})


def out_of_fold(run: rundir.Run, images, frame: pd.DataFrame, config) -> np.ndarray:
    """Probabilities ``(N, num_classes)`` of every pooled image by the fold model that did not
    train on it, with ``config``'s test-time augmentation."""
    members = load_model(run).members  # each with the output prior of its own training rows
    probabilities = np.zeros((len(frame), len(run.class_names)))
    for fold, member in enumerate(members):
        held = np.flatnonzero(frame.fold.to_numpy() == fold)
        chunk = images[held]
        one = predict_probabilities(member, chunk, config.eval.batch_size)
        probabilities[held] = predict_tta(member, chunk, config, one_pass=one)[0] if config.eval.tta else one
    return probabilities


def figures(labels: np.ndarray, probabilities: np.ndarray) -> dict:
    predicted = probabilities.argmax(1)
    return {"accuracy": round(accuracy_score(labels, predicted), 4),
            "balanced_accuracy": round(balanced_accuracy_score(labels, predicted), 4),
            "roc_auc": round(roc_auc_score(labels, probabilities[:, 1]) if probabilities.shape[1] == 2
                             else roc_auc_score(labels, probabilities, multi_class="ovr", average="macro"), 4),
            "log_loss": round(log_loss(labels, probabilities, labels=range(probabilities.shape[1])), 4)}


def own_variant(config) -> str:
    if not config.eval.tta:
        return "none"
    return f"flip+shift{config.eval.tta_shift:g}" if config.eval.tta_shift else "flip"


def one_model_record(path: Path, run, variants: list[str], per_variant: dict) -> dict:
    """The figures of one model's validation predictions under each variant (appended to
    ``per_variant``); its own variant must reproduce ``validation_metrics.json``."""
    split = run.split()
    held = split[split.split == "val"].reset_index(drop=True)
    manifest = Manifest(held[["path", "label"]].assign(split="test"), run.class_names)
    images, kept, bad = prepare_images(manifest, run.config)
    if len(bad):
        raise SystemExit(f"{path}: {len(bad)} validation images unreadable")
    labels = np.asarray(kept.targets("test"))
    model = load_model(run)
    one = predict_probabilities(model, images, run.config.eval.batch_size)
    recorded = json.loads((path / "validation_metrics.json").read_text())
    record = {"run": str(path), "seed": run.config.seed}
    for variant in sorted(set(variants) | {own_variant(run.config)}):
        config = variant_config(run.config, variant)
        probabilities = predict_tta(model, images, config, one_pass=one)[0] if config.eval.tta else one
        scores = figures(labels, probabilities)
        if variant == own_variant(run.config):
            for key in ("accuracy", "roc_auc"):
                if abs(scores[key] - recorded[key]) > 1e-3:
                    raise SystemExit(f"{path}: the run's own TTA gives validation {key} {scores[key]} "
                                     f"where validation_metrics.json has {recorded[key]:.4f}")
        if variant in per_variant:
            record[variant] = scores
            per_variant[variant].append(scores)
    return record


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (k-fold ensembles or one model)")
    parser.add_argument("--variants", nargs="+", default=["none", "flip", "flip+shift0.03"])
    args = parser.parse_args()
    per_variant: dict[str, list[dict]] = {v: [] for v in args.variants}
    for path in args.runs:
        run = rundir.load_run(path)
        if not run.is_ensemble:
            record = one_model_record(path, run, args.variants, per_variant)
            print(json.dumps(record), flush=True)
            continue
        split = run.split()
        pooled = split[split.fold >= 0].reset_index(drop=True)
        manifest = Manifest(pooled[["path", "label"]].assign(split="test"), run.class_names)
        images, kept, bad = prepare_images(manifest, run.config)
        if len(bad):
            raise SystemExit(f"{path}: {len(bad)} pooled images unreadable")
        frame = kept.frame.merge(pooled[["path", "fold"]], on="path", how="left")
        labels = np.asarray(kept.targets("test"))
        recorded = pd.read_csv(path / rundir.OOF_PREDICTIONS, dtype={"path": str}).set_index("path").loc[frame.path]
        record = {"run": str(path), "seed": run.config.seed}
        for variant in sorted(set(args.variants) | {own_variant(run.config)}):
            probabilities = out_of_fold(run, images, frame, variant_config(run.config, variant))
            if variant == own_variant(run.config):
                columns = [f"prob_{name}" for name in run.class_names]
                gap = float(np.abs(probabilities - recorded[columns].to_numpy()).max())
                if gap > 1e-4:
                    raise SystemExit(f"{path}: the run's own TTA gives other out-of-fold probabilities "
                                     f"than its {rundir.OOF_PREDICTIONS} (largest difference {gap:.2e})")
            if variant in per_variant:
                record[variant] = figures(labels, probabilities)
                per_variant[variant].append(record[variant])
        print(json.dumps(record), flush=True)
    summary = {variant: {key: round(statistics.mean(r[key] for r in rows), 4) for key in rows[0]}
               for variant, rows in per_variant.items() if rows}
    print(json.dumps({"mean_over_runs": summary, "runs": len(args.runs)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
