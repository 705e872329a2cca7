"""Issue 23's two real datasets trained with medclf's default settings: ODIR fundus
photographs (eight findings per eye, multi-label) and bone age (months, regression).

For each task and seed it runs the issue's command, one process per run (``medclf train
CSV --set seed=S --set data.label_columns=[...] ...``), timed around the process, and prints
one JSON line: the test figures with their bootstrap intervals and the baseline beside them
(ODIR: mAP of each finding's training prevalence; bone age: MAE of the training mean), the
best validation figure of the monitored metric (the one the checkpoint was chosen on), the
planned epochs and image size, and the wall time. With ``--record`` the line is appended to
``bench/tasks.jsonl``, which ``python bench/suite.py --render`` shows in ``docs/benchmarks.md``.

Usage: python bench/tasks.py [--tasks odir boneage] [--seeds 42] [--record --note "quiet machine"]
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(Path(__file__).resolve().parent))
import records  # noqa: E402  (bench/ is no package)


@dataclass(frozen=True)
class Task:
    source: Path
    overrides: tuple[str, ...]
    kind: str


TASKS = {
    "odir": Task(DATA / "odir-fundus" / "labels.csv",
                 ("data.label_columns=[N,D,G,C,A,H,M,O]", "data.group_column=patient_id"), "multilabel"),
    "boneage": Task(DATA / "boneage" / "labels.csv",
                    ("data.label_columns=[boneage_months]", "data.task=regression"), "regression"),
}


def _round(value, digits=4):
    if isinstance(value, list):
        return [_round(v, digits) for v in value]
    return round(float(value), digits) if value is not None else None


def best_validation(run_dir: Path, monitor: str) -> dict:
    """The epoch the checkpoint was chosen at (best ``monitor`` in ``metrics.csv``) and its
    validation figures."""
    rows = [r for r in csv.DictReader(open(run_dir / "metrics.csv")) if r.get(monitor)]
    lower = monitor in ("val_mae", "val_loss")
    best = (min if lower else max)(rows, key=lambda r: float(r[monitor]))
    keys = ("val_roc_auc", "val_map") if monitor == "val_map" else ("val_mae", "val_r2")
    return {"epoch": int(best["epoch"]), **{k: _round(best[k]) for k in keys if best.get(k)}}


def figures(kind: str, test: dict) -> dict:
    """The test figures of a multilabel or regression ``test_metrics.json``."""
    if kind == "multilabel":
        return {"macro_roc_auc": _round(test["macro_roc_auc"]), "macro_roc_auc_ci": _round(test["macro_roc_auc_ci"]),
                "map": _round(test["map"]), "map_ci": _round(test["map_ci"]),
                "micro_roc_auc": _round(test["micro_roc_auc"]), "baseline_map": _round(test["baseline"]["map"]),
                "per_label": {name: {k: _round(v[k], 3) for k in ("n_positive", "roc_auc", "average_precision",
                                                                  "threshold", "sensitivity", "specificity")}
                              for name, v in test["per_label"].items()}}
    return {"mean_absolute_error": _round(test["mean_absolute_error"], 2),
            "mean_absolute_error_ci": _round(test["mean_absolute_error_ci"], 2),
            "r2": _round(test["r2"]), "r2_ci": _round(test["r2_ci"]), "pearson_r": _round(test["pearson_r"]),
            "baseline_mean_absolute_error": _round(test["baseline"]["mean_absolute_error"], 2),
            "mae_ratio_to_baseline": _round(test["mae_ratio_to_baseline"]),
            "interval_coverage": _round(test["interval"]["coverage"]), "interval_level": test["interval"]["level"]}


def run_task(name: str, task: Task, seed: int) -> dict:
    """One default ``medclf train`` of a task; its record.

    Raises:
        RuntimeError: the run failed (its last output in the message).
    """
    with tempfile.TemporaryDirectory(prefix="medclf-tasks-") as out:
        command = [sys.executable, "-m", "medclf.cli", "train", str(task.source), "--set", f"seed={seed}"]
        for item in task.overrides:
            command += ["--set", item]
        command += ["--out", out, "--no-progress"]
        start = time.perf_counter()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"),
                                                                        os.environ.get("PYTHONPATH")]))}
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - start
        lines = done.stdout.strip().splitlines()
        if done.returncode != 0 or not lines:
            raise RuntimeError(f"medclf train {name} seed {seed} failed (exit {done.returncode}):\n"
                               f"{(done.stdout + done.stderr)[-3000:]}")
        run_dir = Path(lines[-1])
        test = json.loads((run_dir / "test_metrics.json").read_text())
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        return {"task": name, "kind": task.kind, "seed": seed, "n_test": test["n"],
                "test": figures(task.kind, test),
                "validation": best_validation(run_dir, config["train"]["monitor"]),
                "image_size": config["data"]["image_size"], "epochs_planned": config["train"]["max_epochs"],
                "tta": test.get("tta"), "wall_s": round(wall, 1),
                "train_command": "medclf train " + shlex.join(
                    [os.path.relpath(task.source, ROOT), *(x for o in task.overrides for x in ("--set", o))])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[42])
    parser.add_argument("--record", action="store_true", help=f"append each line to {records.TASKS}")
    parser.add_argument("--note", default="", help="machine note stored with the record, e.g. 'quiet machine'")
    args = parser.parse_args()
    for name in args.tasks:
        for seed in args.seeds:
            record = run_task(name, TASKS[name], seed)
            print(json.dumps(record), flush=True)
            if args.record:
                records.append(records.TASKS, record, args.note, "python bench/tasks.py " + shlex.join(sys.argv[1:]))


if __name__ == "__main__":
    main()
