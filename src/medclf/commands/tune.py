"""``medclf tune``: a resumable, optionally distributed Optuna study of medclf trainings.

Every trial is a normal run directory (``<search>/trials/trial-NNN``) trained by
:func:`medclf.commands.train.train` without touching the test split; the objective is the
best per-epoch value of a validation metric. The study lives in SQLite inside the search
directory, or in any database Optuna supports (``--storage postgresql://...``) so that
several workers, on one machine or many, share it.

Layout of a search directory::

    searches/<name>/
      study.db          Optuna storage (SQLite default)
      search.json       the space, sampler, metric and base settings of the study
      trials/trial-NNN/ one run directory per trial
      trials.csv        ranked table: parameters, validation metrics, state, run directory
      best.yaml         resolved configuration of the best trial (medclf train DATA --config best.yaml)
      best.json         best trial, its parameters and its test metrics (computed for it alone)
      plots/            optimisation history, parameter importances, parallel coordinates, slices
"""
from __future__ import annotations

import copy
import datetime as dt
import json
import logging
import math
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from .. import rundir
from ..config import deep_merge, user_settings, validate
from ..errors import ConfigError, MedclfError, TrainingDivergedError
from ..evaluation.outputs import summary_lines
from ..io import write_csv, write_json, write_yaml
from ..plan import plan_run
from ..search.pruning import OptunaPruning
from ..search.space import load_space, params_to_tree, parse_space
from ..search.study import (
    HOST,
    PRUNERS,
    SAMPLERS,
    VAL_COLUMNS,
    SearchResult,
    SkippedTrial,
    best_epoch,
    build_pruner,
    build_sampler,
    default_name,
    fail_interrupted,
    format_table,
    import_optuna,
    mask_password,
    open_storage,
    recover_dead_trials,
    trials_table,
    write_plots,
    yaml_load,
)
from ..training.module import MONITOR_MODES
from .evaluate import evaluate_run
from .train import train

log = logging.getLogger("medclf")


def tune(data: str | Path, space: str | Path | dict, sampler: str = "tpe", trials: int | None = None,
         storage: str | None = None, name: str | None = None, out: str | Path = "searches",
         pruner: str = "auto", config=None, overrides=None, metric: str = "val_roc_auc",
         progress: bool = False, evaluate_best: bool = True) -> SearchResult:
    """Run (or continue) a hyperparameter search.

    Args:
        data: any dataset source, as for ``medclf train``.
        space: space file (see :mod:`medclf.search.space`) or the same as a dict.
        sampler: ``grid`` (every combination once), ``random`` or ``tpe``.
        trials: finished (complete or pruned) trials the study should hold; default: the grid
            size for ``grid``, else 20. A resumed search counts the trials already done.
        storage: Optuna storage URL (``postgresql://user:pw@host/db`` for several workers);
            default SQLite ``<search>/study.db``.
        name: study and search-directory name; default ``<data>-<space>-<sampler>``.
        out: folder of search directories.
        pruner: ``auto`` (median, none for grid), ``median``, ``hyperband`` or ``none``.
        config: base settings of every trial (YAML path or dict).
        overrides: ``--set`` style ``key=value`` overrides of the base settings.
        metric: validation metric to optimise (``val_roc_auc``, ``val_loss``, ...); never a
            test metric.
        progress: show Lightning's progress bar in each trial.
        evaluate_best: when the study has its trials, evaluate the best trial on the test split.

    Returns:
        :class:`SearchResult`.

    Raises:
        ConfigError: bad space file, sampler, pruner, metric or base settings; a resumed
            study with another space.
        MedclfError: the storage cannot be opened; three trials in a row failed.
    """
    optuna = import_optuna()

    if sampler not in SAMPLERS:
        raise ConfigError(f"--sampler {sampler!r}: choose one of {', '.join(SAMPLERS)}")
    if pruner not in PRUNERS:
        raise ConfigError(f"--pruner {pruner!r}: choose one of {', '.join(PRUNERS)}")
    if metric not in MONITOR_MODES:
        raise ConfigError(f"--metric {metric!r}: choose one of {', '.join(MONITOR_MODES)}")
    space_path = None if isinstance(space, dict) else space
    space = parse_space(space, "space") if isinstance(space, dict) else load_space(space)
    base = user_settings(config, overrides)
    base_cfg = validate(base)
    for param in space.params:  # every value of the space together with the base settings
        validate(deep_merge(base, params_to_tree({param.key: _example(param)})))
    if sampler == "grid":
        grid_size = space.grid_size()
        trials = grid_size if trials is None else min(trials, grid_size)
    trials = 20 if trials is None else trials
    if trials < 1:
        raise ConfigError(f"--trials must be >= 1, got {trials}")
    data = Path(data)
    plan_run(data, base)  # fail early on data that cannot be used

    name = rundir.slug(name) if name else default_name(data, space_path, sampler)
    search_dir = Path(out) / name
    search_dir.mkdir(parents=True, exist_ok=True)
    url = storage or f"sqlite:///{(search_dir / 'study.db').resolve()}"
    store = open_storage(url)
    max_epochs = validate(deep_merge(base, {})).train.max_epochs
    identity = {"space": space.describe(), "sampler": sampler, "metric": metric, "base": base,
                "data": Path(data).resolve().name}
    direction = "maximize" if MONITOR_MODES[metric] == "max" else "minimize"
    study = optuna.create_study(study_name=name, storage=store, load_if_exists=True, direction=direction)
    # seeded from the study's length, so that a resumed random search does not replay its start
    study = optuna.load_study(study_name=name, storage=store,
                              sampler=build_sampler(sampler, space, base_cfg.seed + len(study.trials), trials),
                              pruner=build_pruner(pruner, sampler, max_epochs))
    if study.direction.name.lower() != direction:
        raise ConfigError(f"study {name!r} exists ({mask_password(url)}) and {study.direction.name.lower()}s; "
                          f"--metric {metric} needs {direction}")
    stored = study.user_attrs.get("medclf")
    if stored is None:
        study.set_user_attr("medclf", json.loads(json.dumps(identity)))
    elif stored != json.loads(json.dumps(identity)):
        changed = [k for k in identity if json.loads(json.dumps(identity[k])) != stored.get(k)]
        raise ConfigError(f"study {name!r} exists ({mask_password(url)}) with a different {', '.join(changed)}; "
                          f"continue it with the same command or start another with --name")
    write_json(search_dir / "search.json", {**identity, "name": name, "storage": mask_password(url),
                                            "trials": trials})

    done_states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    active_states = done_states + (optuna.trial.TrialState.RUNNING,)
    trials_dir = search_dir / "trials"

    def objective(trial):
        try:
            return run_trial(trial)
        except (KeyboardInterrupt, SystemExit):  # Ctrl-C, or Lightning's exit after it: noted in trials.csv
            trial.set_user_attr("interrupted", True)
            raise

    def run_trial(trial):
        values = space.suggest(trial)
        trial.set_user_attr("host", HOST)
        trial.set_user_attr("pid", os.getpid())
        ahead = [t for t in study.get_trials(deepcopy=False, states=active_states) if t.number < trial.number]
        if len(ahead) >= trials:
            trial.set_user_attr("skipped", f"{trials} trials already started by other workers")
            raise SkippedTrial(trial.user_attrs.get("skipped", "skipped"))
        if sampler == "grid" and any(t.params == trial.params for t in ahead):
            trial.set_user_attr("skipped", "grid point taken by another worker")
            raise SkippedTrial("grid point taken by another worker")
        _say(f"trial {trial.number} ({len(ahead) + 1}/{trials}): "
             + ", ".join(f"{k}={v}" for k, v in values.items()))
        pruning = None
        if not isinstance(study.pruner, optuna.pruners.NopPruner):
            pruning = OptunaPruning(trial, metric)
        tree = deep_merge(base, params_to_tree(values))
        try:
            result = train(data, config=tree, out=trials_dir, name=f"trial-{trial.number:03d}",
                           progress=progress, callbacks=[pruning] if pruning else [], evaluate_test=False)
        except TrainingDivergedError as err:
            trial.set_user_attr("error", str(err).split(". ")[0])
            raise optuna.TrialPruned("training diverged") from None
        except MedclfError as err:
            trial.set_user_attr("error", str(err)[:2000])
            raise
        trial.set_user_attr("run_dir", os.path.relpath(result.run_dir, search_dir))
        trial.set_user_attr("config", yaml_load(result.run_dir / rundir.CONFIG))  # for best.yaml anywhere
        summary = _trial_summary(result.run_dir, metric)
        for key, value in summary.items():
            trial.set_user_attr(key, value)
        _say(f"trial {trial.number}: best {metric} {summary.get(metric, math.nan):.4f} at epoch "
             f"{summary.get('best_epoch')}" + (" (pruned)" if pruning is not None and pruning.pruned else ""))
        if pruning is not None and pruning.pruned:
            raise optuna.TrialPruned(f"pruned after epoch {summary.get('epochs_run', 0) - 1}")
        value = summary.get(metric)
        if value is None or not math.isfinite(value):
            trial.set_user_attr("error", f"{metric} is undefined (a validation split without every class?)")
            raise MedclfError(trial.user_attrs["error"])
        return value

    failures_in_row = 0
    while True:
        recover_dead_trials(study, store)
        finished = len(study.get_trials(deepcopy=False, states=done_states))
        running = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)))
        if finished + running >= trials:
            break
        if sampler == "grid" and study.sampler.is_exhausted(study) and not study.get_trials(
                deepcopy=False, states=(optuna.trial.TrialState.WAITING,)):
            break
        before = {t.number for t in study.trials}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.optimize(objective, n_trials=1, catch=(MedclfError,), gc_after_trial=True)
        except BaseException:  # Ctrl-C (or Lightning's exit on it): fail and re-enqueue the trial
            fail_interrupted(study, store, before)
            raise
        mine = [t for t in study.trials if t.number not in before and t.user_attrs.get("pid") == os.getpid()]
        if mine and mine[-1].state == optuna.trial.TrialState.FAIL and "skipped" not in mine[-1].user_attrs:
            failures_in_row += 1
            if failures_in_row >= 3:
                raise MedclfError(f"3 trials in a row failed; the last: {mine[-1].user_attrs.get('error')}")
        else:
            failures_in_row = 0

    return finish(study, search_dir, data, trials, metric, evaluate_best)


def _say(message: str) -> None:
    print(f"medclf tune: {message}", file=sys.stderr, flush=True)


def _example(param) -> Any:
    return param.choices[0] if param.kind == "choice" else param.low


def finish(study, search_dir: Path, data: Path, trials: int, metric: str, evaluate_best: bool) -> SearchResult:
    """Write trials.csv, best.yaml, best.json (with test metrics of the best trial) and plots."""
    optuna = import_optuna()
    table = trials_table(study, metric)
    write_csv(search_dir / "trials.csv", table)
    finished = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,
                                                             optuna.trial.TrialState.PRUNED)))
    complete = finished >= trials
    completed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    best_run = best_config = test_metrics = None
    if completed:
        best = study.best_trial
        best_run = search_dir / best.user_attrs["run_dir"]
        local = (best_run / rundir.CONFIG).is_file()
        if not local:
            log.warning("the best trial (%d) ran on %s (pid %s): its run directory %s is there, not here",
                        best.number, best.user_attrs.get("host"), best.user_attrs.get("pid"), best_run)
        config = copy.deepcopy(best.user_attrs["config"])
        config["data"].pop("source", None)  # the dataset is the DATA argument of `medclf train`
        best_config = write_yaml(search_dir / "best.yaml", config)
        summary = {"trial": best.number, "objective": {metric: best.value}, "params": best.params,
                   "run_dir": str(best_run), "host": best.user_attrs.get("host"),
                   "validation": {c: best.user_attrs.get(c) for c in VAL_COLUMNS},
                   "finished_trials": finished, "requested_trials": trials,
                   "written": dt.datetime.now().isoformat(timespec="seconds")}
        if not local:
            best_run = None
        elif complete and evaluate_best:
            if (best_run / rundir.TEST_METRICS).exists():
                test_metrics = json.loads((best_run / rundir.TEST_METRICS).read_text(encoding="utf-8"))
            else:
                _, test_metrics = evaluate_run(best_run)
            summary["test"] = {k: test_metrics.get(k) for k in ("accuracy", "balanced_accuracy", "roc_auc", "n",
                                                                  "map", "mean_absolute_error", "r2")
                               if k in test_metrics}
        write_json(search_dir / "best.json", summary)
    write_plots(study, search_dir / "plots")
    return SearchResult(search_dir, study, table, best_run, best_config, test_metrics, complete)


def main(args) -> int:
    """Run or continue the search; print the ranked trials, the best configuration and the
    search directory. Interrupted, it says how to continue."""
    try:
        result = tune(args.data, args.space, sampler=args.sampler, trials=args.trials, storage=args.storage,
                      name=args.name, out=args.out, pruner=args.pruner, config=args.config,
                      overrides=args.overrides, metric=args.metric, progress=args.progress)
    except (KeyboardInterrupt, SystemExit):
        print("medclf tune: interrupted; run the same command again to continue the search", file=sys.stderr)
        return 130
    print(format_table(result.table))
    if result.test_metrics and result.test_metrics.get("task"):  # multilabel / regression
        print("best trial on the test split (never used to rank):\n  "
              + "\n  ".join(summary_lines(result.test_metrics, result.test_metrics["class_names"])))
    elif result.test_metrics:
        m = result.test_metrics
        print(f"best trial on the test split (never used to rank): accuracy {m['accuracy']:.3f}  "
              f"balanced accuracy {m['balanced_accuracy']:.3f}  ROC AUC {m['roc_auc']:.3f}")
    if result.best_config:
        print(f"best configuration: {result.best_config}  (medclf train {args.data} --config {result.best_config})")
    if not result.complete:
        print("the study does not have all its trials yet (other workers?): run the command again to continue")
    print(result.search_dir)
    return 0


def _trial_summary(run_dir: Path, metric: str) -> dict:
    """The trial's validation figures: of its best epoch (metrics.csv), or for a k-fold
    ensemble trial its out-of-fold figures (``validation_metrics.json``: every pooled image
    predicted by the fold model that did not train on it)."""
    if (run_dir / rundir.METRICS).is_file():
        return best_epoch(run_dir / rundir.METRICS, metric)
    record = json.loads((run_dir / rundir.VALIDATION_METRICS).read_text(encoding="utf-8"))
    config = yaml_load(run_dir / rundir.CONFIG)
    return {metric: float(record[metric.removeprefix("val_")]),
            "epochs_run": int(config["train"]["max_epochs"]), "best_epoch": int(config["train"]["max_epochs"]) - 1}
