"""The Optuna study behind ``medclf tune``: storage, samplers, pruners, dead-trial recovery,
the ranked trials table and the study plots."""
from __future__ import annotations

import copy
import json
import logging
import math
import os
import socket
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from .. import rundir
from ..errors import ConfigError, MedclfError
from ..io import atomic_write
from ..training.module import MONITOR_MODES
from .space import SearchSpace

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


def import_optuna():
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def default_name(data: str | Path, space_path: str | Path | None, sampler: str) -> str:
    """``<data>-<space file>-<sampler>``: the same command finds the same search again."""
    stem = Path(space_path).stem if space_path else "space"
    return rundir.slug(f"{Path(data).resolve().name}-{stem}-{sampler}")


def mask_password(url: str) -> str:
    if "://" in url and "@" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}" if ":" in creds else url
    return url


def open_storage(url: str):
    """An Optuna ``RDBStorage`` with heartbeats: a trial whose worker stops beating for
    ``GRACE_S`` seconds (killed, machine lost) is failed by the next worker that starts a
    trial and retried once (:func:`retry_once` as Optuna's ``heartbeat_stale_trial_callback``).

    Args:
        url: SQLAlchemy URL, e.g. ``sqlite:///searches/x/study.db`` or
            ``postgresql+psycopg2://user:pw@host/db``.

    Raises:
        MedclfError: the database cannot be opened (the URL, password masked, is named).
    """
    optuna = import_optuna()
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    for attempt in range(3):  # workers starting together may race to create the tables
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=HEARTBEAT_S,
                                              grace_period=GRACE_S, heartbeat_stale_trial_callback=retry_once)
        except Exception as err:  # noqa: BLE001  (driver errors vary: sqlalchemy, psycopg2, sqlite3)
            if attempt == 2 or "could not connect" in str(err) or "No module named" in str(err):
                raise MedclfError(f"--storage {mask_password(url)}: cannot open the study database: "
                                  f"{str(err).strip().splitlines()[0]}") from None
            time.sleep(1.0 + attempt)


def retry_once(study, trial) -> None:
    """Enqueue a failed (killed or interrupted) trial again with the same parameters, once.

    Optuna's ``RetryHeartbeatStaleTrialCallback(max_retry=1)`` (the new trial is WAITING, with
    system attributes ``failed_trial`` and ``retry_history``), given a copy of the trial without
    the dead process's host, pid, run directory, error and interrupted flag, so the retry does
    not inherit them. A trial that is itself a retry is not retried again.

    Args:
        study: the ``optuna.Study``.
        trial: the failed ``optuna.trial.FrozenTrial``.
    """
    optuna = import_optuna()
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback
    if retry.retry_history(trial):  # already a retry: give up on it
        return
    clean = copy.deepcopy(trial)
    clean.user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in _RUN_ATTRS}
    retry(max_retry=1)(study, clean)
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


def _bookkeeper(study, storage):
    """The same study with a sampler that does nothing after a trial, for failing trials
    outside ``study.optimize``: ``Study.tell`` calls ``sampler.after_trial``, and
    ``GridSampler.after_trial`` calls ``study.stop()``, which raises outside ``optimize``."""
    optuna = import_optuna()
    return optuna.load_study(study_name=study.study_name, storage=storage,
                             sampler=optuna.samplers.RandomSampler(), pruner=optuna.pruners.NopPruner())


def _fail(keeper, number: int):
    """``keeper.tell(number, state=FAIL)``; None when the trial is finished already (another
    worker failed it first), else the failed ``FrozenTrial``."""
    optuna = import_optuna()
    try:
        return keeper.tell(number, state=optuna.trial.TrialState.FAIL)
    except (ValueError, optuna.exceptions.UpdateFinishedTrialError):  # "Cannot tell a FAIL trial", or a race
        return None


def recover_dead_trials(study, storage) -> list[int]:
    """Fail (and retry once) RUNNING trials whose worker on this host no longer exists.

    A trial's worker is the ``host`` and ``pid`` user attributes set when it starts. Workers on
    other hosts are caught by Optuna's heartbeat (``optuna.storages.fail_stale_trials``, after
    ``GRACE_S`` seconds without one), which is run here too.

    Args:
        study: the ``optuna.Study``.
        storage: its storage (from :func:`open_storage`).

    Returns:
        numbers of the trials that were failed here (not those the heartbeat failed).
    """
    optuna = import_optuna()
    failed = []
    keeper = None
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        pid = trial.user_attrs.get("pid")
        if trial.user_attrs.get("host") != HOST or pid is None or pid == os.getpid() or _alive(int(pid)):
            continue
        if keeper is None:
            keeper = _bookkeeper(study, storage)
        dead = _fail(keeper, trial.number)
        if dead is not None:
            failed.append(trial.number)
            retry_once(keeper, dead)
    optuna.storages.fail_stale_trials(study)
    return failed


def fail_interrupted(study, storage, before: set[int]) -> None:
    """After an interrupt (Ctrl-C, SIGTERM): fail this process's trials still RUNNING and
    retry once each of its trials that failed (see :func:`retry_once`).

    Best effort: any error is ignored, since a later ``medclf tune`` recovers the trial
    (:func:`recover_dead_trials`).

    Args:
        study: the ``optuna.Study``.
        storage: its storage (from :func:`open_storage`).
        before: numbers of the trials that existed before this process's last ``optimize``.
    """
    optuna = import_optuna()
    try:
        keeper = _bookkeeper(study, storage)
        for trial in study.get_trials(deepcopy=False):
            if trial.number in before or trial.user_attrs.get("pid") != os.getpid():
                continue
            if trial.state == optuna.trial.TrialState.RUNNING:
                trial = _fail(keeper, trial.number)
            if trial is not None and trial.state == optuna.trial.TrialState.FAIL:
                retry_once(keeper, trial)
    except Exception:  # noqa: BLE001  (best effort while interrupted; a restart recovers it)
        pass


def build_sampler(name: str, space: SearchSpace, seed: int, n_trials: int):
    """Optuna sampler: GridSampler, RandomSampler or TPESampler (Bergstra et al. 2011)."""
    optuna = import_optuna()
    if name == "grid":
        sampler = optuna.samplers.GridSampler(space.grid(), seed=0)  # the same grid ids in every worker
        sampler.reseed_rng()  # ... but each worker picks its own next point among those left
        return sampler
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(3, min(10, n_trials // 3)))


def build_pruner(name: str, sampler: str, max_epochs: int):
    """MedianPruner or HyperbandPruner (Li et al. 2018) over epochs; none for a grid."""
    optuna = import_optuna()
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
    summary = {c: float(row[c]) for c in _val_columns(metric) if c in row and pd.notna(row[c])}
    summary.update(best_epoch=int(row["epoch"]), epochs_run=int(len(frame)))
    return summary


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
        row.update({c: attrs.get(c, math.nan) for c in _val_columns(metric)})
        row.update(best_epoch=attrs.get("best_epoch", math.nan), epochs_run=attrs.get("epochs_run", math.nan),
                   duration_s=round(duration, 1), host=attrs.get("host", ""), run_dir=attrs.get("run_dir", ""),
                   note=note)
        rows.append(row)
    columns = ["trial", "state", "objective", *keys, *_val_columns(metric), "best_epoch", "epochs_run",
               "duration_s", "host", "run_dir", "note"]
    frame = pd.DataFrame(rows, columns=columns)
    order = {"COMPLETE": 0, "PRUNED": 1, "RUNNING": 2, "FAIL": 3}
    ascending = MONITOR_MODES[metric] == "min"
    frame["_state"] = frame.state.map(order).fillna(4)
    frame["_value"] = frame[metric] if ascending else -frame[metric]
    frame = frame.sort_values(["_state", "_value", "trial"], na_position="last").drop(columns=["_state", "_value"])
    frame.insert(0, "rank", range(1, len(frame) + 1))
    return frame.reset_index(drop=True)


def _val_columns(metric: str) -> list[str]:
    """:data:`VAL_COLUMNS` and the ranking metric when it is another (``val_map``, ``val_mae``
    of multilabel / regression runs)."""
    return VAL_COLUMNS + ([metric] if metric not in VAL_COLUMNS else [])


def _plain(value):
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def yaml_load(path: Path) -> dict:
    import yaml
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def write_plots(study, folder: Path) -> list[Path]:
    """PNG plots from ``optuna.visualization.matplotlib``: optimisation history, parameter
    importances (fANOVA), parallel coordinates and slice plots. A plot that needs more
    finished trials than there are is left out (logged)."""
    optuna = import_optuna()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm


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
