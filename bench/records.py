"""Results of the cost benchmarks (``bench/scale.py``, ``bench/serve.py``) and of the
multi-label and regression runs (``bench/tasks.py``) kept beside the suite's, and their
sections of ``docs/benchmarks.md`` (rendered by ``bench/suite.py``).

Each script appends its JSON line, with the date and a machine note, to its own JSON-lines
file in ``bench/`` (``scale.jsonl``, ``serve.jsonl``, ``tasks.jsonl``); the page shows the
latest line of ``scale.jsonl``, every line of the latest day of ``serve.jsonl`` and the latest
line of each task and seed of ``tasks.jsonl``, so a figure quoted anywhere can be traced to
the command and the run that gave it.
"""
from __future__ import annotations

import datetime
import json
import platform
import statistics
import subprocess
from pathlib import Path

BENCH = Path(__file__).resolve().parent
SCALE = BENCH / "scale.jsonl"
SERVE = BENCH / "serve.jsonl"
TASKS = BENCH / "tasks.jsonl"
SCALE_STAGES = ("discover", "fingerprint", "plan", "preprocess", "inspect", "fit", "evaluate", "postrun", "total")
SERVE_SETTINGS = ("torch", "torch_batched", "onnx", "onnx_batched", "torch_gradcam", "http_floor")


def append(path: Path, record: dict, note: str, command: str) -> None:
    """Add ``record`` with today's date, ``note``, ``command`` and the checked-out commit as one
    line of ``path``."""
    line = {"date": datetime.date.today().isoformat(), "note": note, "command": command, "commit": commit(),
            **record}
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(line) + "\n")


def commit() -> str | None:
    """The short hash of the checked-out commit, None outside a git checkout."""
    try:
        found = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=BENCH, capture_output=True, text=True,
                               timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return found.stdout.strip() or None


def cpu_model() -> str | None:
    """The processor's name (``model name`` of ``/proc/cpuinfo`` on Linux, else
    :func:`platform.processor`), None when neither tells: wall times of different machines
    are not comparable, so every record says which one measured it."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() or None
    except OSError:
        pass
    return platform.processor() or None


def latest(path: Path) -> dict | None:
    """The last record of a JSON-lines file, None when there is none."""
    found = all_records(path)
    return found[-1] if found else None


def _context(record: dict) -> str:
    note = f", {record['note']}" if record.get("note") else ""
    commit = f" (medclf commit {record['commit']})" if record.get("commit") else ""
    return f"Measured {record.get('date', '?')}{note}: `{record.get('command', '')}`{commit}.\n"


def render_scale(record: dict | None) -> str:
    """The "Cost growth" section from a ``bench/scale.py`` record ('' without one)."""
    if not record:
        return ""
    head = "| Images | Kind | Storage | " + " | ".join(SCALE_STAGES) + " | Peak RSS, MB |\n"
    rows = [head, "| " + " | ".join(["---"] * (len(SCALE_STAGES) + 4)) + " |\n"]
    for run in record["runs"]:
        seconds = run["seconds"]
        rows.append(f"| {run['n']} | {run['kind']} | {run.get('storage')} | "
                    + " | ".join(f"{seconds[s]:.1f}" if s in seconds else "" for s in SCALE_STAGES)
                    + f" | {run['peak_rss_mb']:.0f} |\n")
    growth = ["\n| Growth | Size ratio | " + " | ".join(SCALE_STAGES) + " |\n",
              "| " + " | ".join(["---"] * (len(SCALE_STAGES) + 2)) + " |\n"]
    for step, ratios in record.get("growth", {}).items():
        growth.append(f"| {step} | {ratios['size_ratio']:g} | "
                      + " | ".join(f"{ratios[s]:.2f}" if s in ratios else "" for s in SCALE_STAGES) + " |\n")
    return ("## Cost growth (`bench/scale.py`)\n\n" + _context(record)
            + "\nSeconds per stage of `medclf train` (one epoch of a small network on synthetic 256x256 PNGs; "
              "a size measured twice is shown twice and enters the growth ratio with its median), and the "
              "peak resident memory of the training process.\n\n" + "".join(rows) + "".join(growth))


def render_serve(found: list[dict]) -> str:
    """The "Service" section from ``bench/serve.py`` records: every run of the latest day
    ('' without any), so that runs of the same code in different conditions are all shown."""
    if not found:
        return ""
    day = found[-1].get("date")
    shown = [r for r in found if r.get("date") == day]
    newest = shown[-1]
    parts = ["## Service (`bench/serve.py`)\n\n"
             f"{newest.get('clients')} concurrent clients on the same machine, {newest.get('requests_per_mode')} "
             f"requests per setting, model {newest.get('model')} at {newest.get('image_size')} px, uploads of "
             f"{newest.get('upload_kb_median')} KB (median). `_batched`: micro-batching (5 ms window, at most "
             "32 images). `http_floor`: a bare FastAPI upload endpoint (no decoding, no model) under the same "
             "load, the floor that the HTTP path and the clients on the same cores set. "
             f"{'Every run of the day is shown, in order, each with its note' if len(shown) > 1 else 'One run'}: "
             "absolute figures change when the machine itself runs slower (compare the `http_floor` rows); "
             "the ratios are measured within each run.\n"]
    for number, record in enumerate(shown, 1):
        rows = ["| Setting | p50, ms | p95, ms | Requests/s | Ratio to torch | Errors |\n",
                "| --- | --- | --- | --- | --- | --- |\n"]
        for key in SERVE_SETTINGS:
            if key in record:
                r = record[key]
                rows.append(f"| {key} | {r['p50_ms']} | {r['p95_ms']} | {r['requests_per_s']} | "
                            f"{record['ratios'].get(key, '')} | {r['errors']} |\n")
        parts.append(f"\n### Run {number}\n\n" + _context(record) + "\n" + "".join(rows))
    return "".join(parts)


def all_records(path: Path) -> list[dict]:
    """Every record of a JSON-lines file, oldest first (none when the file is missing)."""
    if not path.is_file():
        return []
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def render_tasks(path: Path) -> str:
    """The "Multi-label and regression" section from ``bench/tasks.py`` records: the latest
    of each task and seed ('' without any), with issue 23's targets."""
    latest_of = {(r["task"], r["seed"]): r for r in all_records(path)}
    if not latest_of:
        return ""
    parts = ["## Multi-label and regression (`bench/tasks.py`)\n\n"
             "Issue 23's datasets trained with the default settings, one run per seed (its command below). "
             "Validation: the monitored figure at the epoch the checkpoint was chosen at (one pass, as training measured it). Test: with 95 % "
             "bootstrap intervals, beside the baseline the issue names.\n"]
    parts.append(_task_summary(latest_of))
    for (task, seed), r in sorted(latest_of.items()):
        test, validation = r["test"], r["validation"]
        parts.append(f"\n### {task}, seed {seed}\n\n" + _context(r)
                     + f"Run: `{r['train_command']} --set seed={seed}`; {r['image_size'][0]} px, "
                       f"{r['epochs_planned']} epochs planned, checkpoint of epoch {validation['epoch']}, "
                       f"test-time mirror {'on' if r.get('tta') else 'off'}, {r['wall_s']:.0f} s wall; "
                       f"n = {r['n_test']} test images.\n\n")
        if r["kind"] == "multilabel":
            ci, map_ci = test["macro_roc_auc_ci"], test["map_ci"]
            parts.append(
                "| Figure | Validation | Test | 95 % CI | Baseline | Target (issue 23) | Met |\n"
                "| --- | --- | --- | --- | --- | --- | --- |\n"
                f"| macro ROC AUC | {validation.get('val_roc_auc')} | {test['macro_roc_auc']:.3f} | "
                f"{ci[0]:.3f}-{ci[1]:.3f} | 0.5 | >= 0.80 | {_met(test['macro_roc_auc'] >= 0.80)} |\n"
                f"| mAP | {validation.get('val_map')} | {test['map']:.3f} | {map_ci[0]:.3f}-{map_ci[1]:.3f} | "
                f"{test['baseline_map']:.3f} (training prevalence) | > baseline | "
                f"{_met(test['map'] > test['baseline_map'])} |\n"
                f"| micro ROC AUC | | {test['micro_roc_auc']:.3f} | | | | |\n\n"
                "| Finding | Test positives | ROC AUC | Average precision | Threshold (validation) | Sensitivity "
                "| Specificity |\n| --- | --- | --- | --- | --- | --- | --- |\n"
                + "".join(f"| {name} | {v['n_positive']:.0f} | {v['roc_auc']:.3f} | {v['average_precision']:.3f} | "
                          f"{v['threshold']:.2f} | {v['sensitivity']:.2f} | {v['specificity']:.2f} |\n"
                          for name, v in test["per_label"].items()))
        else:
            ci, r2_ci = test["mean_absolute_error_ci"], test["r2_ci"]
            parts.append(
                "| Figure | Validation | Test | 95 % CI | Baseline | Target (issue 23) | Met |\n"
                "| --- | --- | --- | --- | --- | --- | --- |\n"
                f"| mean absolute error, months | {validation.get('val_mae')} | {test['mean_absolute_error']:.2f} | "
                f"{ci[0]:.2f}-{ci[1]:.2f} | {test['baseline_mean_absolute_error']:.2f} (training mean) | "
                f"<= half the baseline's | {_met(test['mae_ratio_to_baseline'] <= 0.5)} "
                f"(ratio {test['mae_ratio_to_baseline']:.3f}) |\n"
                f"| R² | {validation.get('val_r2')} | {test['r2']:.3f} | {r2_ci[0]:.3f}-{r2_ci[1]:.3f} | 0 | | |\n"
                f"| Pearson r | | {test['pearson_r']:.3f} | | | | |\n"
                f"| {test['interval_level']:.0%} interval coverage | | {test['interval_coverage']:.3f} | | | | |\n")
    return "".join(parts)


def _task_summary(latest_of: dict) -> str:
    """Mean and range over seeds of each task's headline figures (the latest record per seed);
    a target is met when the mean meets it (the MAE ratio and the mAP margin on every seed)."""
    rows = []
    for task in sorted({task for task, _ in latest_of}):
        runs = [r for (t, _), r in sorted(latest_of.items()) if t == task]
        seeds = ", ".join(str(r["seed"]) for r in runs)
        if runs[0]["kind"] == "multilabel":
            figures = [("macro ROC AUC", "val_roc_auc", lambda t: t["macro_roc_auc"], ">= 0.80 (mean)",
                        lambda values, _: statistics.mean(values) >= 0.80),
                       ("mAP", "val_map", lambda t: t["map"], "> training prevalence (every seed)",
                        lambda values, rs: all(v > r["test"]["baseline_map"] for v, r in zip(values, rs)))]
        else:
            figures = [("mean absolute error / baseline's", None, lambda t: t["mae_ratio_to_baseline"],
                        "<= 0.5 (every seed)", lambda values, _: max(values) <= 0.5),
                       ("mean absolute error, months", "val_mae", lambda t: t["mean_absolute_error"], "", None)]
        for name, key, get, target, met in figures:
            values = [get(r["test"]) for r in runs]
            val = [r["validation"][key] for r in runs if key and r["validation"].get(key) is not None]
            val_mean = f" {statistics.mean(val):.3f} " if val else " "
            rows.append(f"| {task} | {seeds} | {name} |{val_mean}| {statistics.mean(values):.3f} | "
                        f"{min(values):.3f}-{max(values):.3f} | {target} | {_met(met(values, runs)) if met else ''} |\n")
    return ("\n### Over seeds\n\nMean over the seeds (latest run of each), validation beside test; "
            "the range is the lowest and highest seed.\n\n"
            "| Task | Seeds | Figure | Validation mean | Test mean | Test min-max | Target (issue 23) | Met |\n"
            "| --- | --- | --- | --- | --- | --- | --- | --- |\n" + "".join(rows))


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"
