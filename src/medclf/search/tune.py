"""``medclf tune``: a resumable, optionally distributed Optuna study of medclf trainings.

Every trial is a normal run directory (``<search>/trials/trial-NNN``) trained by
:func:`medclf.training.run.train` without touching the test split; the objective is the
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
import socket
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from .. import rundir
from ..config import deep_merge, validate
from ..errors import ConfigError, MedclfError, TrainingDivergedError
from ..io import write_csv, write_json, write_yaml
from ..training.module import MONITOR_MODES
from .space import SearchSpace, load_space, params_to_tree, parse_space

log = logging.getLogger("medclf")

HEARTBEAT_S = 10   # a running trial refreshes its heartbeat this often (seconds) ...
GRACE_S = 40       # ... and is declared dead (failed, retried once) after this long without one
SAMPLERS = ("grid", "random", "tpe")
PRUNERS = ("auto", "median", "hyperband", "none")
HOST = socket.gethostname()
VAL_COLUMNS = ["val_roc_auc", "val_balanced_accuracy", "val_accuracy", "val_loss"]
_RUN_ATTRS = ("host", "pid", "run_dir", "config", "error", "skipped", "interrupted")


class SkippedTrial(MedclfError):
    """A trial started beyond the requested count, or on a grid point another worker holds."""


@dataclass
class SearchResult:
    """What :func:`tune` returns."""

    search_dir: Path
    study: Any  # optuna.Study
    table: pd.DataFrame
    best_run: Path | None
    best_config: Path | None
    test_metrics: dict | None
    complete: bool


def _optuna():
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def default_name(data: str | Path, space_path: str | Path | None, sampler: str) -> str:
    """``<data>-<space file>-<sampler>``: the same command finds the same search again."""
    stem = Path(space_path).stem if space_path else "space"
    return rundir.slug(f"{Path(data).resolve().name}-{stem}-{sampler}")


def _mask(url: str) -> str:
    if "://" in url and "@" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}" if ":" in creds else url
    return url


def open_storage(url: str):
    """An Optuna RDB storage with heartbeats; a dead trial is failed and retried once.

    Raises:
        MedclfError: the database cannot be opened (the URL, password masked, is named).
    """
    optuna = _optuna()
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    for attempt in range(3):  # workers starting together may race to create the tables
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=HEARTBEAT_S,
                                              grace_period=GRACE_S, heartbeat_stale_trial_callback=retry_once)
        except Exception as err:  # noqa: BLE001  (driver errors vary: sqlalchemy, psycopg2, sqlite3)
            if attempt == 2 or "could not connect" in str(err) or "No module named" in str(err):
                raise MedclfError(f"--storage {_mask(url)}: cannot open the study database: "
                                  f"{str(err).strip().splitlines()[0]}") from None
            time.sleep(1.0 + attempt)


def retry_once(study, trial) -> None:
    """Enqueue a failed (killed or interrupted) trial again with the same parameters, once.

    Like Optuna's ``RetryFailedTrialCallback(max_retry=1)``, but the new trial does not
    inherit the dead process's host, pid and run directory.
    """
    optuna = _optuna()
    history = list(trial.system_attrs.get("retry_history", []))
    if history:  # already a retry: give up on it
        return
    system_attrs = {**trial.system_attrs, "failed_trial": trial.number, "retry_history": [trial.number]}
    user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in _RUN_ATTRS}
    study.add_trial(optuna.create_trial(state=optuna.trial.TrialState.WAITING, params=trial.params,
                                        distributions=trial.distributions, user_attrs=user_attrs,
                                        system_attrs=system_attrs))
    log.warning("trial %d died; it is retried once with the same parameters", trial.number)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed child that its parent has not reaped yet is a zombie: dead
        with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
            return handle.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


def recover_dead_trials(study) -> list[int]:
    """Fail (and retry once) RUNNING trials whose worker on this host no longer exists.

    Workers on other hosts are caught by the heartbeat (after ``GRACE_S`` seconds).

    Returns:
        numbers of the trials that were failed.
    """
    optuna = _optuna()
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        pid = trial.user_attrs.get("pid")
        if trial.user_attrs.get("host") != HOST or pid is None or pid == os.getpid() or _alive(int(pid)):
            continue
        try:
            if study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL):
                failed.append(trial.number)
                retry_once(study, study._storage.get_trial(trial._trial_id))
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # another worker got there first
    optuna.storages.fail_stale_trials(study)
    return failed


def build_sampler(name: str, space: SearchSpace, seed: int, n_trials: int):
    """Optuna sampler: GridSampler, RandomSampler or TPESampler (Bergstra et al. 2011)."""
    optuna = _optuna()
    if name == "grid":
        sampler = optuna.samplers.GridSampler(space.grid(), seed=0)  # the same grid ids in every worker
        sampler.reseed_rng()  # ... but each worker picks its own next point among those left
        return sampler
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(3, min(10, n_trials // 3)))


def build_pruner(name: str, sampler: str, max_epochs: int):
    """MedianPruner or HyperbandPruner (Li et al. 2018) over epochs; none for a grid."""
    optuna = _optuna()
    if name == "auto":
        name = "none" if sampler == "grid" else "median"
    if name == "none":
        return optuna.pruners.NopPruner()
    if sampler == "grid":
        raise ConfigError(f"--pruner {name}: pruning is off for a grid search (every point is run to the end)")
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=min(2, max_epochs - 1))
    return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max_epochs, reduction_factor=3)


def best_epoch(metrics_csv: Path, metric: str) -> dict:
    """The epoch with the best ``metric`` in a run's metrics.csv and its validation metrics."""
    frame = pd.read_csv(metrics_csv)
    values = frame[metric].dropna()
    if values.empty:
        return {"epochs_run": int(len(frame))}
    index = values.idxmax() if MONITOR_MODES[metric] == "max" else values.idxmin()
    row = frame.loc[index]
    summary = {c: float(row[c]) for c in VAL_COLUMNS if c in row and pd.notna(row[c])}
    summary.update(best_epoch=int(row["epoch"]), epochs_run=int(len(frame)))
    return summary


def tune(data: str | Path, space: str | Path | dict, sampler: str = "tpe", trials: int | None = None,
         storage: str | None = None, name: str | None = None, out: str | Path = "searches",
         pruner: str = "auto", config=None, overrides=None, metric: str = "val_roc_auc",
         progress: bool = False, evaluate_best: bool = True) -> SearchResult:
    """Run (or continue) a hyperparameter search.

    Args:
        data: dataset folder, as for ``medclf train``.
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
    optuna = _optuna()
    from ..data.sources.folder import discover
    from ..training.run import train, user_tree

    if sampler not in SAMPLERS:
        raise ConfigError(f"--sampler {sampler!r}: choose one of {', '.join(SAMPLERS)}")
    if pruner not in PRUNERS:
        raise ConfigError(f"--pruner {pruner!r}: choose one of {', '.join(PRUNERS)}")
    if metric not in MONITOR_MODES:
        raise ConfigError(f"--metric {metric!r}: choose one of {', '.join(MONITOR_MODES)}")
    space_path = None if isinstance(space, dict) else space
    space = parse_space(space, "space") if isinstance(space, dict) else load_space(space)
    base = user_tree(config, overrides)
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
    discover(data, base_cfg.data.val_fraction, base_cfg.data.test_fraction, base_cfg.seed)  # fail early

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
        raise ConfigError(f"study {name!r} exists ({_mask(url)}) and {study.direction.name.lower()}s; "
                          f"--metric {metric} needs {direction}")
    stored = study.user_attrs.get("medclf")
    if stored is None:
        study.set_user_attr("medclf", json.loads(json.dumps(identity)))
    elif stored != json.loads(json.dumps(identity)):
        changed = [k for k in identity if json.loads(json.dumps(identity[k])) != stored.get(k)]
        raise ConfigError(f"study {name!r} exists ({_mask(url)}) with a different {', '.join(changed)}; "
                          f"continue it with the same command or start another with --name")
    write_json(search_dir / "search.json", {**identity, "name": name, "storage": _mask(url),
                                            "trials": trials})

    done_states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    active_states = done_states + (optuna.trial.TrialState.RUNNING,)
    trials_dir = search_dir / "trials"

    def objective(trial):
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
            from .pruning import OptunaPruning
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
        summary = best_epoch(result.run_dir / rundir.METRICS, metric)
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
        recover_dead_trials(study)
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
            _fail_interrupted(study, before)
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


def _fail_interrupted(study, before: set[int]) -> None:
    optuna = _optuna()
    for trial in study.get_trials(deepcopy=False):
        if trial.number in before or trial.user_attrs.get("pid") != os.getpid():
            continue
        try:
            if trial.state == optuna.trial.TrialState.RUNNING:
                study._storage.set_trial_user_attr(trial._trial_id, "interrupted", True)
                study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
            if study._storage.get_trial(trial._trial_id).state == optuna.trial.TrialState.FAIL:
                retry_once(study, study._storage.get_trial(trial._trial_id))
        except Exception:  # noqa: BLE001  (best effort while interrupted; a restart recovers it)
            pass


def trials_table(study, metric: str) -> pd.DataFrame:
    """One row per trial, ranked: complete trials by objective, then pruned, then failed.

    Columns: ``rank, trial, state, <metric>`` (the objective), one column per parameter,
    the validation metrics of the best epoch, ``best_epoch, epochs_run, duration_s, host,
    run_dir, note``. Skipped trials (see :class:`SkippedTrial`) are left out.
    """
    rows = []
    keys: list[str] = []
    for trial in study.trials:
        if "skipped" in trial.user_attrs or trial.state.name == "WAITING":
            continue
        for key in trial.params:
            if key not in keys:
                keys.append(key)
        attrs = trial.user_attrs
        note = attrs.get("error", "")
        if trial.state.name == "PRUNED" and not note:
            note = "pruned"
        if "failed_trial" in trial.system_attrs:
            note = (note + "; " if note else "") + f"retry of trial {trial.system_attrs['failed_trial']}"
        if attrs.get("interrupted"):
            note = (note + "; " if note else "") + "interrupted"
        duration = (trial.datetime_complete - trial.datetime_start).total_seconds() \
            if trial.datetime_complete and trial.datetime_start else math.nan
        row = {"trial": trial.number, "state": trial.state.name,
               "objective": trial.value if trial.value is not None else math.nan}
        row.update({k: _plain(v) for k, v in trial.params.items()})
        row.update({c: attrs.get(c, math.nan) for c in VAL_COLUMNS})
        row.update(best_epoch=attrs.get("best_epoch", math.nan), epochs_run=attrs.get("epochs_run", math.nan),
                   duration_s=round(duration, 1), host=attrs.get("host", ""), run_dir=attrs.get("run_dir", ""),
                   note=note)
        rows.append(row)
    columns = ["trial", "state", "objective", *keys, *VAL_COLUMNS, "best_epoch", "epochs_run",
               "duration_s", "host", "run_dir", "note"]
    frame = pd.DataFrame(rows, columns=columns)
    order = {"COMPLETE": 0, "PRUNED": 1, "RUNNING": 2, "FAIL": 3}
    ascending = MONITOR_MODES[metric] == "min"
    frame["_state"] = frame.state.map(order).fillna(4)
    frame["_value"] = frame[metric] if ascending else -frame[metric]
    frame = frame.sort_values(["_state", "_value", "trial"], na_position="last").drop(columns=["_state", "_value"])
    frame.insert(0, "rank", range(1, len(frame) + 1))
    return frame.reset_index(drop=True)


def _plain(value):
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def finish(study, search_dir: Path, data: Path, trials: int, metric: str, evaluate_best: bool) -> SearchResult:
    """Write trials.csv, best.yaml, best.json (with test metrics of the best trial) and plots."""
    optuna = _optuna()
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
            from ..evaluation.evaluate import evaluate_run
            if (best_run / rundir.TEST_METRICS).exists():
                test_metrics = json.loads((best_run / rundir.TEST_METRICS).read_text(encoding="utf-8"))
            else:
                _, test_metrics = evaluate_run(best_run)
            summary["test"] = {k: test_metrics.get(k) for k in ("accuracy", "balanced_accuracy", "roc_auc", "n")}
        write_json(search_dir / "best.json", summary)
    write_plots(study, search_dir / "plots")
    return SearchResult(search_dir, study, table, best_run, best_config, test_metrics, complete)


def yaml_load(path: Path) -> dict:
    import yaml
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def write_plots(study, folder: Path) -> list[Path]:
    """PNG plots from ``optuna.visualization.matplotlib``: optimisation history, parameter
    importances (fANOVA), parallel coordinates and slice plots. A plot that needs more
    finished trials than there are is left out (logged)."""
    optuna = _optuna()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    from ..io import atomic_write

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    if not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        return written
    for name, plot in (("history", ovm.plot_optimization_history), ("importances", ovm.plot_param_importances),
                       ("parallel_coordinates", ovm.plot_parallel_coordinate), ("slice", ovm.plot_slice)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                axes = plot(study)
                figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
                figure.set_size_inches(max(6.0, figure.get_size_inches()[0]), 4.5)
                figure.tight_layout()
            written.append(atomic_write(folder / f"{name}.png",
                                        lambda tmp, f=figure: f.savefig(tmp, format="png", dpi=100)))
            plt.close(figure)
        except Exception as err:  # noqa: BLE001  (e.g. importances need 2+ complete trials)
            log.info("plot %s left out: %s", name, err)
            plt.close("all")
    return written


def format_table(table: pd.DataFrame, limit: int = 15) -> str:
    """The ranked table as text (best first), for the terminal."""
    shown = table.drop(columns=["host", "run_dir"]).head(limit).copy()
    for column in shown.columns:
        if shown[column].dtype.kind == "f":
            shown[column] = shown[column].map(lambda v: "" if pd.isna(v) else f"{v:.4g}")
    shown["note"] = shown["note"].astype(str).str.slice(0, 60)
    return shown.to_string(index=False)
