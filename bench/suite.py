"""The benchmark suite (issue 21): medclf's defaults on four datasets, several seeds, next to a plain CNN.

For every dataset and seed it runs ``medclf train DATA --set seed=S --out TMP --no-progress``
as its own process (wall time measured around it), reads the run's ``test_metrics.json`` and
``validation_metrics.json`` (the figures on the validation split, or the out-of-fold figures of
a k-fold ensemble run; ``null`` when the run has none), and, for the 2D datasets, trains the
plain baseline CNN of ``bench/baseline_cnn.py`` on the same ``split.csv`` with the same seed
(also its own process, also timed). Each finished run is appended at once to the results
file (JSONL, one record per run); runs already in it are skipped, so an interrupted suite
resumes where it stopped. Each medclf run's ``split.csv`` is kept beside the results file
(``RESULTS.splits/``) so that its baseline can still be trained after an interruption.

It prints one JSON line per dataset: the validation and test figures (accuracy, balanced
accuracy, macro ROC AUC) of medclf and of the baseline, each as mean, min and max over the
seeds, the wall seconds (mean, max), the ratio medclf / baseline of the means, and whether
each of issue 21's targets is met. It then writes ``docs/benchmarks.md`` from the whole
results file. Test figures are reported, never used to choose anything.

Usage:
    python bench/suite.py [--datasets covid19 ...] [--seeds 0 1 ...] [--set key=value ...]
                          [--results bench/results.jsonl] [--no-baseline] [--note TEXT]
                          [--baseline-epochs 25] [--docs docs/benchmarks.md] [--render]

A quick check of the machinery (minutes, figures meaningless):
    python bench/suite.py --datasets pneumoniamnist --seeds 0 --set train.max_epochs=1 \\
        --baseline-epochs 1 --results /tmp/s.jsonl --docs /tmp/s.md
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MEDCLF_SHARED_DATA", ROOT.parent / "shared" / "data"))
RESULTS = ROOT / "bench" / "results.jsonl"
DOCS = ROOT / "docs" / "benchmarks.md"
METRICS = ("accuracy", "balanced_accuracy", "roc_auc")
LABELS = {"accuracy": "accuracy", "balanced_accuracy": "balanced accuracy", "roc_auc": "macro ROC AUC"}
BASELINE_EPOCHS = 25
_WARNED: set = set()  # (results file, line) already reported as not JSON


@dataclass(frozen=True)
class Target:
    """One of issue 21's targets: ``figure`` of ``tool``'s test results, compared to ``value``.

    ``statistic`` is ``mean`` or ``min`` over seeds of a test figure, ``max_wall`` (the slowest
    run, seconds, must be at most ``value``) or ``over_baseline`` (mean test figure at least the
    baseline's mean plus ``value``).
    """
    figure: str
    statistic: str
    value: float

    def describe(self) -> str:
        if self.statistic == "max_wall":
            return f"each run <= {self.value:g} s"
        if self.statistic == "over_baseline":
            return f"mean test {LABELS[self.figure]} >= baseline + {self.value:g}"
        return f"{'lowest seed' if self.statistic == 'min' else 'mean'} test {LABELS[self.figure]} >= {self.value:g}"


@dataclass(frozen=True)
class Dataset:
    name: str
    source: Path
    seeds: tuple[int, ...]
    baseline: bool
    about: str
    targets: tuple[Target, ...] = field(default_factory=tuple)


DATASETS = {d.name: d for d in (
    Dataset("covid19", DATA / "covid19-xray", (0, 1, 2, 3, 4, 42), True,
            "Class-per-folder chest radiographs, three classes (Covid, Normal, Viral Pneumonia); `train/` "
            "111 / 70 / 70 images, `test/` 26 / 20 / 20; 416x341 to 4248x3480 pixels, no validation folder "
            "(medclf carves one out of `train/`).",
            (Target("accuracy", "mean", 0.93), Target("accuracy", "min", 0.89), Target("roc_auc", "mean", 0.985),
             Target("wall_s", "max_wall", 180), Target("accuracy", "over_baseline", 0.03))),
    Dataset("chest-xray-pneumonia", DATA / "chest-xray-pneumonia", (0, 1, 42), True,
            "Paediatric chest X-rays, NORMAL vs PNEUMONIA, 224x224; `train/` 1341 / 3875, the official test "
            "split 234 / 390; no validation folder. For scale, MedMNIST+ (Doerrich et al. 2024) reports on this "
            "test split at 224 px 0.911 accuracy / 0.980 ROC AUC for an end-to-end ResNet-18.",
            (Target("roc_auc", "mean", 0.97), Target("accuracy", "mean", 0.90), Target("wall_s", "max_wall", 1200))),
    Dataset("pneumoniamnist", DATA / "medmnist" / "pneumoniamnist_reduced.npz", (0, 1, 2, 3, 4, 42), True,
            "PneumoniaMNIST (28x28 grey) with the official validation (135 / 389) and test (234 / 390) splits "
            "and a training split reduced to 388 normal / 3494 pneumonia (1:9), so training is strongly "
            "imbalanced while the test split is 3:5.",
            (Target("roc_auc", "mean", 0.98), Target("balanced_accuracy", "mean", 0.90))),
    Dataset("adrenal3d", DATA / "medmnist" / "adrenalmnist3d_64.npz", (0, 1, 2, 3, 4, 42), False,
            "AdrenalMNIST3D at 64^3 (MedMNIST+): binary mask volumes, normal adrenal gland vs hyperplasia, "
            "1188 / 98 / 298 volumes (train / val / test), about 22 % positive. 3D, so no 2D baseline.",
            (Target("roc_auc", "mean", 0.92), Target("accuracy", "mean", 0.87), Target("wall_s", "max_wall", 720))),
)}


# ------------------------------------------------------------------------------------- records
def run_key(record: dict) -> tuple:
    """What identifies a run in the results file: dataset, seed, tool, overrides, baseline epochs."""
    return (record["dataset"], record["seed"], record["tool"], tuple(record.get("overrides", [])),
            record.get("epochs") if record["tool"] == "baseline" else None)


def read_results(path: Path) -> list[dict]:
    """The records of a results file (missing file: none). A line that is not JSON (a write cut
    short by a kill) is skipped with a warning, so its run is repeated."""
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if (path, number) not in _WARNED:
                _WARNED.add((path, number))
                print(f"{path}:{number}: not a JSON record (an interrupted write?); ignored", file=sys.stderr)
    return records


def append_result(path: Path, record: dict) -> None:
    """Append one record as a JSON line (after a newline if the file ends in a cut-off line)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lead = ""
    if path.is_file() and path.stat().st_size:
        with open(path, "rb") as handle:
            handle.seek(-1, os.SEEK_END)
            lead = "" if handle.read(1) == b"\n" else "\n"
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(lead + json.dumps(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _figures(metrics: dict | None) -> dict | None:
    if not metrics:
        return None
    found = {k: (None if metrics.get(k) is None else round(float(metrics[k]), 4)) for k in METRICS}
    for key in ("kind", "n"):
        if key in metrics:
            found[key] = metrics[key]
    return found


def machine(note: str) -> dict:
    """The facts about where and when a run was measured that go into every record."""
    records = records_module()
    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "cpu_count": os.cpu_count(), "cpu_model": records.cpu_model(), "note": note, "commit": records.commit(),
            "command": "python bench/suite.py " + shlex.join(sys.argv[1:])}


# ------------------------------------------------------------------------------------- running
def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"),
                                                                     os.environ.get("PYTHONPATH")]))}


def train_medclf(dataset: Dataset, seed: int, overrides: list[str], out: Path) -> tuple[dict, Path]:
    """One ``medclf train`` process; returns its record (without machine facts) and its run directory.

    Raises:
        RuntimeError: the process failed (its last output in the message) or wrote no test metrics.
    """
    command = [sys.executable, "-m", "medclf.cli", "train", str(dataset.source), "--set", f"seed={seed}"]
    for item in overrides:
        command += ["--set", item]
    command += ["--out", str(out), "--no-progress"]
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr, text=True, env=_env())
        # wait4 (not Popen.wait) to get this run's own resource usage: ru_maxrss is the peak resident memory of
        # the largest process of the run (kilobytes on Linux).
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
        returncode = os.waitstatus_to_exitcode(status)
        process.returncode = returncode
        stdout.seek(0)
        stderr.seek(0)
        out_text, err_text = stdout.read(), stderr.read()
    lines = out_text.strip().splitlines()
    if returncode != 0 or not lines:
        raise RuntimeError(f"medclf train {dataset.name} seed {seed} failed (exit {returncode}):\n"
                           f"{(out_text + err_text)[-3000:]}")
    run_dir = Path(lines[-1])
    test_file = run_dir / "test_metrics.json"
    if not test_file.is_file():
        raise RuntimeError(f"medclf train {dataset.name} seed {seed}: no {test_file}")
    test = json.loads(test_file.read_text())
    validation_file = run_dir / "validation_metrics.json"
    validation = json.loads(validation_file.read_text()) if validation_file.is_file() else None
    record = {"validation": _figures(validation), "test": _figures(test),
              "wall_s": round(wall, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
              "checkpoint_epoch": test.get("checkpoint_epoch"),
              "epochs_run": test.get("epochs_run"),
              "operating_point": {k: (round(v, 4) if isinstance(v, float) else v)
                                  for k, v in (test.get("operating_point") or {}).items()
                                  if k in ("threshold", "method", "accuracy", "balanced_accuracy")} or None,
              "sensitivity": {name: round(c["sensitivity"], 4) for name, c in (test.get("per_class") or {}).items()
                              if isinstance(c, dict) and c.get("sensitivity") is not None}}
    return record, run_dir


def train_baseline(split_csv: Path, seed: int, epochs: int) -> dict:
    """One ``bench/baseline_cnn.py`` process on a run's split; returns its record (timed).

    Raises:
        RuntimeError: the process failed (its last output in the message).
    """
    command = [sys.executable, str(ROOT / "bench" / "baseline_cnn.py"), str(split_csv),
               "--seed", str(seed), "--epochs", str(epochs)]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=_env())
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"baseline on {split_csv} seed {seed} failed (exit {done.returncode}):\n"
                           f"{done.stderr[-3000:]}")
    found = json.loads(done.stdout.strip().splitlines()[-1])
    validation = _figures(found["validation"])
    return {"validation": validation and {"kind": "validation", **validation}, "test": _figures(found["test"]),
            "wall_s": round(wall, 1),
            "checkpoint_epoch": found["best_epoch"], "epochs": found["epochs"], "image_size": found["image_size"]}


def split_copy(results: Path, dataset: str, seed: int, overrides: list[str]) -> Path:
    """Where the suite keeps the ``split.csv`` of a medclf run (beside the results file)."""
    name = f"{dataset}-seed{seed}"
    if overrides:  # a readable tag of the overrides
        name += "-" + "".join(ch if ch.isalnum() or ch in "._=" else "_" for ch in "-".join(overrides))[:120]
    return results.with_name(results.name + ".splits") / f"{name}.csv"


def run_suite(datasets: list[Dataset], seeds: list[int] | None, overrides: list[str], results: Path,
              baseline: bool, baseline_epochs: int, note: str,
              train=train_medclf, train_base=train_baseline, keep_runs: Path | None = None,
              refresh: bool = False) -> list[str]:
    """Train every missing run and append its record; returns the failures (empty if none).

    ``refresh``: also train again each medclf run whose latest record was made at another
    commit than the working tree's (after a change of the defaults; the new record is the one
    shown, and an interrupted refresh resumes where it stopped). Baseline records are kept.

    ``keep_runs``: a folder that keeps each medclf run directory (for later analysis), instead
    of a temporary one.

    ``train`` and ``train_base`` are :func:`train_medclf` and :func:`train_baseline` (replaced in
    tests). A failed run is reported on stderr and not recorded, so the next call repeats it.
    """
    failures = []
    now = records_module().commit() if refresh else None
    for dataset in datasets:
        for seed in seeds or dataset.seeds:
            recorded = read_results(results)
            done = {run_key(r) for r in recorded}
            if refresh:  # a medclf run counts as done only when its latest record is of this commit
                latest = {run_key(r): r.get("commit") for r in recorded if r["tool"] == "medclf"}
                done -= {key for key, commit in latest.items() if commit != now}
            base = {"dataset": dataset.name, "seed": seed, "overrides": list(overrides)}
            medclf_key = run_key({**base, "tool": "medclf"})
            want_baseline = baseline and dataset.baseline
            base_key = run_key({**base, "tool": "baseline", "epochs": baseline_epochs})
            kept = split_copy(results, dataset.name, seed, overrides)
            if medclf_key not in done:
                kept_out = keep_runs / kept.stem if keep_runs else None
                with contextlib.nullcontext(kept_out) if kept_out else \
                        tempfile.TemporaryDirectory(prefix="medclf-bench-") as out:
                    try:
                        record, run_dir = train(dataset, seed, overrides, Path(out))
                    except RuntimeError as err:
                        failures.append(str(err).splitlines()[0])
                        print(err, file=sys.stderr)
                        continue
                    kept.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(run_dir / "split.csv", kept)
                append_result(results, {**base, "tool": "medclf", "data": str(dataset.source), **record,
                                        **machine(note)})
            if want_baseline and base_key not in done:
                if not kept.is_file():
                    failures.append(f"baseline {dataset.name} seed {seed}: {kept} is missing (delete the medclf "
                                    f"record of this seed to train both again)")
                    print(failures[-1], file=sys.stderr)
                    continue
                try:
                    record = train_base(kept, seed, baseline_epochs)
                except RuntimeError as err:
                    failures.append(str(err).splitlines()[0])
                    print(err, file=sys.stderr)
                    continue
                append_result(results, {**base, "tool": "baseline", "data": str(dataset.source), **record,
                                        **machine(note)})
    return failures


# ---------------------------------------------------------------------------------- aggregation
def _stats(values: list[float], digits: int = 4) -> dict | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"mean": round(statistics.mean(values), digits), "min": round(min(values), digits),
            "max": round(max(values), digits)}


def _tool_summary(records: list[dict]) -> dict | None:
    if not records:
        return None
    summary = {"seeds": [r["seed"] for r in records]}
    for part in ("validation", "test"):
        figures = [r.get(part) or {} for r in records]
        block = {m: _stats([f.get(m) for f in figures]) for m in METRICS}
        block["runs"] = sum(1 for f in figures if f)
        kinds = sorted({f["kind"] for f in figures if f.get("kind")})
        if kinds:
            block["kind"] = kinds[0] if len(kinds) == 1 else kinds
        sizes = sorted({f["n"] for f in figures if f.get("n") is not None})
        if sizes:
            block["n"] = sizes[0] if len(sizes) == 1 else sizes
        summary[part] = block
    walls = [r["wall_s"] for r in records]
    summary["wall_s"] = {"mean": round(statistics.mean(walls), 1), "max": round(max(walls), 1)}
    epochs = sorted({r["epochs"] for r in records if r.get("epochs") is not None})
    if epochs:
        summary["epochs"] = epochs[0] if len(epochs) == 1 else epochs
    return summary


def _mean(summary: dict | None, part: str, metric: str) -> float | None:
    block = (summary or {}).get(part) or {}
    return (block.get(metric) or {}).get("mean")


def check_target(target: Target, medclf: dict, baseline: dict | None) -> dict:
    """``{"target": text, "value": measured, "met": bool | None}`` (None: not measurable, e.g. no baseline)."""
    if target.statistic == "max_wall":
        value = medclf["wall_s"]["max"]
        return {"target": target.describe(), "value": value, "met": value <= target.value}
    if target.statistic == "over_baseline":
        ours, theirs = _mean(medclf, "test", target.figure), _mean(baseline, "test", target.figure)
        if ours is None or theirs is None:
            return {"target": target.describe(), "value": None, "met": None}
        margin = round(ours - theirs, 4)
        return {"target": target.describe(), "value": margin, "met": margin >= target.value - 1e-9}
    value = ((medclf["test"].get(target.figure)) or {}).get(target.statistic)
    return {"target": target.describe(), "value": value, "met": None if value is None else value >= target.value}


def summarize(records: list[dict], dataset: str, overrides: list[str] | None = None,
              seeds: list[int] | None = None) -> dict | None:
    """The JSON line of one dataset from its per-run records (the latest record of each run).

    Args:
        records: per-run records as the results file holds them (any datasets; filtered here).
        dataset: a key of :data:`DATASETS`.
        overrides: only the runs with exactly these ``--set`` overrides (default: none).
        seeds: only these seeds (default: every seed recorded).

    Returns:
        ``{"dataset", "data", "seeds", "overrides", "medclf", "baseline", "ratio", "targets",
        "all_met", "seeds_as_issue"}`` or None when no medclf run of the dataset is recorded.
    """
    overrides = list(overrides or [])
    latest: dict[tuple, dict] = {}
    for record in records:
        if record["dataset"] != dataset or list(record.get("overrides", [])) != overrides:
            continue
        if seeds is not None and record["seed"] not in seeds:
            continue
        latest[(record["tool"], record["seed"])] = record
    by_tool = {tool: [latest[k] for k in sorted(latest, key=lambda k: k[1]) if k[0] == tool]
               for tool in ("medclf", "baseline")}
    if not by_tool["medclf"]:
        return None
    medclf, baseline = _tool_summary(by_tool["medclf"]), _tool_summary(by_tool["baseline"])
    ratio = None
    if baseline:
        ratio = {part: {m: (round(_mean(medclf, part, m) / _mean(baseline, part, m), 3)
                            if _mean(medclf, part, m) is not None and _mean(baseline, part, m) else None)
                        for m in METRICS} for part in ("validation", "test")}
    spec = DATASETS.get(dataset)
    targets = [check_target(t, medclf, baseline) for t in (spec.targets if spec else ())]
    return {"dataset": dataset, "data": by_tool["medclf"][0].get("data"), "seeds": medclf["seeds"],
            "overrides": overrides, "medclf": medclf, "baseline": baseline, "ratio": ratio,
            "targets": targets, "all_met": bool(targets) and all(t["met"] is True for t in targets),
            "seeds_as_issue": bool(spec) and sorted(medclf["seeds"]) == sorted(spec.seeds)}


def groups(records: list[dict]) -> list[tuple[str, list[str]]]:
    """Every (dataset, overrides) with a medclf record, in :data:`DATASETS` order, then the rest."""
    found = []
    for record in records:
        key = (record["dataset"], list(record.get("overrides", [])))
        if record["tool"] == "medclf" and key not in found:
            found.append(key)
    order = list(DATASETS)
    return sorted(found, key=lambda k: (order.index(k[0]) if k[0] in order else len(order), k[0], len(k[1])))


# ------------------------------------------------------------------------------------ rendering
def _shown(path) -> str:
    """A path as the docs write it: ``../shared/...`` beside the repository, else as given."""
    path = Path(path)
    if path.is_relative_to(ROOT):
        return str(path.relative_to(ROOT))
    if path.is_relative_to(ROOT.parent):
        return f"../{path.relative_to(ROOT.parent)}"
    return str(path)


def _f(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _range(stats: dict | None) -> str:
    return "–" if not stats else f"{_f(stats['min'])}–{_f(stats['max'])}"


def _kind(block: dict) -> str:
    kind = block.get("kind")
    text = {"validation": "validation split", "out_of_fold": "out of fold"}.get(kind, str(kind or "validation"))
    return text + (f", n = {block['n']}" if block.get("n") is not None else "")


def render_dataset(summary: dict, records: list[dict]) -> str:
    """The Markdown section of one dataset: figures, ratio, targets, per-seed runs, how measured."""
    spec = DATASETS.get(summary["dataset"])
    medclf, baseline = summary["medclf"], summary["baseline"]
    title = summary["dataset"] + (f" with `{' '.join('--set ' + o for o in summary['overrides'])}`"
                                  if summary["overrides"] else "")
    lines = [f"## {title}", ""]
    if spec:
        lines += [f"`{_shown(summary['data'])}`. {spec.about}", ""]
    lines += [f"Seeds {', '.join(map(str, summary['seeds']))}"
              + ("" if summary["seeds_as_issue"] or not spec else
                 f" (issue 21 asks for {', '.join(map(str, spec.seeds))}: the figures are incomplete)")
              + f". Validation: {_kind(medclf['validation'])}; test: n = {medclf['test'].get('n', '–')}.", "",
              "| Model | Figure | Validation mean | Validation min–max | Test mean | Test min–max |",
              "| --- | --- | --- | --- | --- | --- |"]
    for name, tool in (("medclf", medclf), ("baseline CNN", baseline)):
        if not tool:
            continue
        for m in METRICS:
            val, test = tool["validation"].get(m), tool["test"].get(m)
            lines.append(f"| {name} | {LABELS[m]} | {_f(val and val['mean'])} | {_range(val)} | "
                         f"{_f(test and test['mean'])} | {_range(test)} |")
    if summary["ratio"]:
        for m in METRICS:
            lines.append(f"| medclf / baseline | {LABELS[m]} | {_f(summary['ratio']['validation'][m])} | | "
                         f"{_f(summary['ratio']['test'][m])} | |")
    lines += ["", "| Model | Wall mean, s | Wall max, s |", "| --- | --- | --- |",
              f"| medclf | {medclf['wall_s']['mean']:.0f} | {medclf['wall_s']['max']:.0f} |"]
    if baseline:
        epochs = baseline.get("epochs", BASELINE_EPOCHS)
        lines.append(f"| baseline CNN ({epochs} epoch{'' if epochs == 1 else 's'}) | "
                     f"{baseline['wall_s']['mean']:.0f} | {baseline['wall_s']['max']:.0f} |")
    if summary["targets"]:
        lines += ["", "| Target (issue 21) | Measured | Met |", "| --- | --- | --- |"]
        for t in summary["targets"]:
            met = {True: "yes", False: "**no**", None: "–"}[t["met"]]
            lines.append(f"| {t['target']} | {_f(t['value'], 1 if 'run <=' in t['target'] else 3)} | {met} |")
    lines += ["", "Per seed (validation / test accuracy, test macro ROC AUC, wall seconds):", "",
              "| Seed | medclf val acc | medclf test acc | medclf test AUC | medclf s |"
              + (" baseline val acc | baseline test acc | baseline test AUC | baseline s |" if baseline else ""),
              "| --- | --- | --- | --- | --- |" + (" --- | --- | --- | --- |" if baseline else "")]
    mine = {r["seed"]: r for r in records if r["tool"] == "medclf"}
    theirs = {r["seed"]: r for r in records if r["tool"] == "baseline"}
    for seed in summary["seeds"]:
        row = f"| {seed} |"
        for record in [mine.get(seed)] + ([theirs.get(seed)] if baseline else []):
            if record is None:
                row += " – | – | – | – |"
                continue
            row += (f" {_f((record.get('validation') or {}).get('accuracy'))} | {_f(record['test'].get('accuracy'))} |"
                    f" {_f(record['test'].get('roc_auc'))} | {record['wall_s']:.0f} |")
        lines.append(row)
    dates = sorted(r["date"][:10] for r in records if r.get("date"))
    cpus = sorted({str(r.get("cpu_count")) for r in records})
    # named only when every run recorded it: older records have no processor
    models = sorted({r["cpu_model"] for r in records}) if all(r.get("cpu_model") for r in records) else []
    notes = sorted({r.get("note") or "" for r in records} - {""})
    commands = sorted({r["command"] for r in records if r.get("command")})
    commits = sorted({r["commit"] for r in records if r.get("commit")})
    lines += ["", f"Measured {dates[0] if dates else '?'}"
              + (f" to {dates[-1]}" if dates and dates[-1] != dates[0] else "")
              + f" (UTC), `os.cpu_count()` = {', '.join(cpus)}"
              + (f", processor {', '.join(models)}" if models else "")
              + (f"; {'; '.join(notes)}" if notes else "; no note on whether the machine was shared")
              + (f"; medclf commit {', '.join(commits)}" if commits else "") + ".",
              "Command" + ("s" if len(commands) > 1 else "") + ": " + ", ".join(f"`{c}`" for c in commands) + ".", ""]
    return "\n".join(lines)


HEADER = """# Benchmarks

<!-- generated by `python bench/suite.py`; do not edit (rerun the suite, or `python bench/suite.py --render`) -->

!!! note "Generated"
    This page is generated by `python bench/suite.py`; do not edit. It is the only place where
    measured figures of medclf's defaults live; `python bench/suite.py --render` rewrites it from
    the suite's results file (`{results}`).

The planner (`medclf.plan.Planner`, one `determine_*` method per decision) turns a dataset
fingerprint into the default configuration; its docstrings give the *reasons* for each choice,
this page the *figures* measured for the defaults as a whole.

## How it is measured

The suite trains medclf with its default settings (`medclf train DATA --set seed=S`, one process
per run, wall time measured around the process: start-up, decoding, planning, training,
evaluation and the report) on each dataset below, for several seeds including 42 (the default
every new user gets).

**Validation** figures are those of the validation split the run selected its model on (or, for
a k-fold ensemble run, the out-of-fold predictions: every training image predicted once by the
fold model that did not train on it). They were used for choices inside the run (the epoch, the
operating threshold, the temperature), so they lean optimistic. **Test** figures are computed once
on the held-out test split and are only reported: defaults are decided on validation or
out-of-fold figures, never by comparing test figures. Accuracy and balanced accuracy are those
of the predicted class; ROC AUC is the macro one-vs-rest area. Ranges are min–max over seeds.

For every 2D dataset the same run trains a **plain baseline CNN** (`bench/baseline_cnn.py`, not
part of medclf): grey 224x224 input (native size for 28x28 images), a strided 3x3 stem and four
stages of stride-2 convolution, batch normalisation and ReLU (16 to 256 channels), global average
pooling, AdamW with the one-cycle schedule, plain cross-entropy, batch 32, 25 epochs, no
augmentation, the epoch with the best validation accuracy. It reads the medclf run's `split.csv`,
so its training, validation and test images are exactly medclf's, with the same seed. "medclf /
baseline" is the ratio of the two means.

The targets are those of issue 21 ("Defaults that hold on data they were never tuned on").
A variant is measured by overriding a planned setting for every run, e.g.
`python bench/suite.py --set augment.flip_prob=0.5`; its runs are recorded apart from the
defaults' and shown in a section of their own, and it is compared on its validation figures.
"""


@functools.cache
def records_module():
    """``bench/records.py`` (the cost benchmarks' records), loaded by path once: bench/ is no package."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("bench_records", Path(__file__).resolve().parent / "records.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def render(records: list[dict], results: Path) -> str:
    """The whole ``docs/benchmarks.md`` from the records of a results file."""
    parts = [HEADER.format(results=_shown(results))]
    present = groups(records)
    for dataset, overrides in present:
        summary = summarize(records, dataset, overrides)
        mine = [r for r in records if r["dataset"] == dataset and list(r.get("overrides", [])) == overrides]
        latest = {(r["tool"], r["seed"]): r for r in mine}
        parts.append(render_dataset(summary, list(latest.values())))
    # the cost benchmarks' latest records, when this results file has them beside it
    side = records_module()
    beside = Path(results).parent
    for section in (side.render_scale(side.latest(beside / "scale.jsonl")),
                    side.render_serve(side.all_records(beside / "serve.jsonl"))):
        if section:
            parts.append(section)
    tasks = side.render_tasks(beside / "tasks.jsonl")
    if tasks:
        parts.append(tasks)
    absent = [name for name in DATASETS if name not in {d for d, _ in present}]
    if absent:
        parts.append("## Not measured yet\n\n" + "\n".join(
            f"- {name}: `{_shown(DATASETS[name].source)}`, seeds {', '.join(map(str, DATASETS[name].seeds))}"
            for name in absent) + "\n")
    return "\n".join(parts).rstrip() + "\n"


# ------------------------------------------------------------------------------------------ CLI
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS),
                        help="datasets to run (default: all)")
    parser.add_argument("--seeds", nargs="+", type=int, help="seeds for every dataset (default: each dataset's own)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="configuration override passed to every medclf run (repeatable)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="JSONL file of per-run records (appended)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the baseline CNN")
    parser.add_argument("--baseline-epochs", type=int,
                        default=int(os.environ.get("MEDCLF_BENCH_BASELINE_EPOCHS", BASELINE_EPOCHS)),
                        help="baseline epochs (default 25, or $MEDCLF_BENCH_BASELINE_EPOCHS; fewer only for a smoke test)")
    parser.add_argument("--keep-runs", type=Path, help="keep every medclf run directory under this folder")
    parser.add_argument("--note", default="", help="machine note stored with each run, e.g. 'quiet machine'")
    parser.add_argument("--docs", type=Path, default=DOCS, help="the page to write (default docs/benchmarks.md)")
    parser.add_argument("--render", action="store_true", help="only rewrite the page from the results file")
    parser.add_argument("--refresh", action="store_true",
                        help="train again the medclf runs last recorded at another commit (a changed default)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.results = args.results.resolve()
    failures = []
    if not args.render:
        for name in args.datasets:  # one JSON line as each dataset is done
            dataset = DATASETS[name]
            failures += run_suite([dataset], args.seeds, args.overrides, args.results, not args.no_baseline,
                                  args.baseline_epochs, args.note, keep_runs=args.keep_runs, refresh=args.refresh)
            summary = summarize(read_results(args.results), name, args.overrides, args.seeds or list(dataset.seeds))
            if summary:
                print(json.dumps(summary), flush=True)
    records = read_results(args.results)
    if not records:
        print(f"{args.results}: no records yet; every dataset is listed as not measured", file=sys.stderr)
    args.docs.write_text(render(records, args.results), encoding="utf-8")
    print(f"wrote {args.docs}", file=sys.stderr)
    if failures:
        print(f"{len(failures)} run(s) failed (rerun the same command to retry them):\n" + "\n".join(failures),
              file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
