"""medclf tune: space validation, a grid search killed and resumed, pruning, best config."""
import json
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import optuna
import pandas as pd
import pytest
import yaml

from medclf.cli import main
from medclf.commands import tune as tune_command_module
from medclf.search.pruning import OptunaPruning
from medclf.search.study import HOST, open_storage, recover_dead_trials

from conftest import ROOT

BASE = ["--set", "train.max_epochs=2", "--set", "data.image_size=[32,32]", "--set", "model.filters=[8,16]",
        "--set", "train.batch_size=8"]


def _env():
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MEDCLF_RUN_DIR"):
        env.pop(name, None)
    return env


def tune_command(data, space, out, *extra):
    return [sys.executable, "-m", "medclf.cli", "tune", str(data), "--space", str(space), "--out", str(out),
            *BASE, *extra]


@pytest.mark.parametrize("text, message", [
    ("train.lr: [0.001\n  bad: : yaml", "is not valid YAML"),
    ("- train.lr\n- model.dropout\n", "top level must be a mapping"),
    ("", "search space is empty"),
    ("train.lrr: [0.001, 0.01]\n", "train.lrr: unknown configuration key"),
    ("trainer.speed: [1, 2]\n", "trainer.speed: unknown configuration key"),
    ("train: {lr: [0.1]}\n", "train is a section"),
    ("train.lr: {low: 0.01, high: 0.001, log: true}\n", "train.lr: empty range: low (0.01) > high (0.001)"),
    ("train.batch_size: {low: 32, high: 8}\n", "train.batch_size: empty range"),
    ("model.dropout: []\n", "model.dropout: empty choices"),
    ("train.optimizer: [adamw, adagrad]\n", "train.optimizer: value 'adagrad' is not allowed"),
    ("train.lr: {low: 0.0, high: 0.1, log: true}\n", "train.lr: a log range needs low > 0"),
    ("train.lr: {low: 1.0e-4, hgh: 0.1}\n", "train.lr: unknown field(s) hgh"),
    ("train.lr: {low: 1.0e-4, high: 20.0}\n", "train.lr: value 20.0 is not allowed"),
    ("train.lr: 0.001\n", "train.lr: expected a list of choices"),
])
def test_bad_space_files_are_named(tiny_dataset, tmp_path, capsys, text, message):
    space = tmp_path / "space.yaml"
    space.write_text(text)
    code = main(["tune", str(tiny_dataset), "--space", str(space), "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err
    assert str(space) in err or "not found" in err
    assert not (tmp_path / "s").exists()  # nothing started


def test_grid_needs_finite_values_and_no_pruner(tiny_dataset, tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text("train.lr: {low: 1.0e-4, high: 1.0e-2, log: true}\n")
    assert main(["tune", str(tiny_dataset), "--space", str(space), "--sampler", "grid"]) == 2
    assert "train.lr: a grid search needs finite values" in capsys.readouterr().err
    space.write_text("train.lr: [0.001, 0.01]\n")
    assert main(["tune", str(tiny_dataset), "--space", str(space), "--sampler", "grid", "--pruner", "median",
                 "--out", str(tmp_path / "s")]) == 2
    assert "pruning is off for a grid search" in capsys.readouterr().err


def _study(path):
    return optuna.load_study(study_name=path.name, storage=f"sqlite:///{path / 'study.db'}")


def test_grid_search_killed_and_resumed_repeats_no_point(tiny_dataset, tmp_path, warm_medclf):
    space = tmp_path / "space.yaml"
    space.write_text("train.lr: [1.0e-3, 3.0e-3]\nmodel.dropout: {low: 0.0, high: 0.3, step: 0.3}\n"
                     "model.filters: {choices: [[8, 16], [8]]}\n")  # 2 x 2 x 2 = 8 points
    out = tmp_path / "searches"
    for attempt in range(3):  # a kill can land just after a trial finished: then try again
        name = f"grid{attempt}"
        command = tune_command(tiny_dataset, space, out, "--sampler", "grid", "--trials", "5", "--name", name)
        search = out / name
        first = warm_medclf.start(command[3:], _env())  # `python -m medclf.cli` is command[:3]
        killed_at = None
        deadline = time.time() + 240
        while time.time() < deadline and first.poll() is None:
            time.sleep(0.3)
            if not (search / "study.db").exists():
                continue
            try:
                trials = _study(search).trials
            except Exception:  # noqa: BLE001  (study not created yet)
                continue
            done = [t for t in trials if t.state.is_finished()]
            running = [t for t in trials if t.state == optuna.trial.TrialState.RUNNING and "pid" in t.user_attrs]
            if len(done) >= 2 and running:
                first.send_signal(signal.SIGKILL)  # no clean-up at all: the trial stays RUNNING
                killed_at = running[0].number
                break
        _, err = first.communicate(timeout=60)
        assert killed_at is not None, f"search ended before it could be killed: {err[-2000:]}"
        if _study(search).trials[killed_at].state == optuna.trial.TrialState.RUNNING:
            break
    else:
        pytest.fail("in 3 attempts the kill always landed after the running trial had finished")
    assert _study(search).trials[killed_at].state == optuna.trial.TrialState.RUNNING

    again = warm_medclf.run(command[3:], _env(), timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    trials = _study(search).trials
    finished = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(finished) == 5
    points = [json.dumps(t.params, sort_keys=True) for t in finished]
    assert len(set(points)) == 5  # no grid point twice
    killed = trials[killed_at]
    assert killed.state == optuna.trial.TrialState.FAIL
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == killed_at]
    assert len(retries) == 1 and retries[0].params == killed.params  # retried once, same point
    assert retries[0].state == optuna.trial.TrialState.COMPLETE
    # the first process's finished trials were not run again
    assert len({t.user_attrs["pid"] for t in finished}) == 2

    table = pd.read_csv(search / "trials.csv")
    complete = table[table.state == "COMPLETE"]
    assert len(complete) == 5 and list(complete["rank"]) == [1, 2, 3, 4, 5]
    assert complete.objective.is_monotonic_decreasing
    assert {"train.lr", "model.dropout", "model.filters", "val_roc_auc", "val_loss", "run_dir"} <= set(table.columns)
    assert "retry of trial" in " ".join(table.note.fillna(""))
    assert again.stdout.strip().splitlines()[-1] == str(search)
    for plot in ("history", "importances", "parallel_coordinates", "slice"):
        assert (search / "plots" / f"{plot}.png").stat().st_size > 1000, plot

    # test metrics exist for the best trial only
    best = json.loads((search / "best.json").read_text())
    tested = sorted(p.parent.name for p in (search / "trials").glob("*/test_metrics.json"))
    assert tested == [f"trial-{best['trial']:03d}"] and 0 <= best["test"]["roc_auc"] <= 1

    # a third run of the same command has nothing left to do
    before = len(trials)
    assert main(command[3:]) == 0
    assert len(_study(search).trials) == before

    # best.yaml is ready to use
    config = yaml.safe_load((search / "best.yaml").read_text())
    assert "source" not in config["data"]
    for key, value in best["params"].items():
        section, name = key.split(".")
        assert config[section][name] == (json.loads(value) if isinstance(value, str) else value)
    runs = tmp_path / "runs"
    assert main(["train", str(tiny_dataset), "--config", str(search / "best.yaml"), "--out", str(runs),
                 "--name", "best", "--set", "train.max_epochs=1", "--no-progress"]) == 0
    assert yaml.safe_load((runs / "best" / "config.yaml").read_text())["model"] == config["model"]


def test_pruning_callback_stops_a_hopeless_trial():
    study = optuna.create_study(direction="maximize",
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=1))
    good = study.ask()
    for epoch in range(3):
        good.report(0.9, epoch)
    study.tell(good, 0.9)

    def trainer(value, epoch):
        return SimpleNamespace(sanity_checking=False, is_global_zero=True, current_epoch=epoch,
                               callback_metrics={"val_roc_auc": value}, should_stop=False)

    trial = study.ask()
    callback = OptunaPruning(trial, "val_roc_auc")
    warming_up = trainer(0.2, 0)  # epoch 0 is warm-up: never pruned
    callback.on_validation_end(warming_up, None)
    assert not warming_up.should_stop and not callback.pruned
    hopeless = trainer(0.25, 1)
    callback.on_validation_end(hopeless, None)
    assert hopeless.should_stop and callback.pruned
    assert study.trials[trial.number].intermediate_values == {0: 0.2, 1: 0.25}


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()  # exited and reaped: no such process any more
    return process.pid


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_dead_worker_trial_is_failed_and_retried_once(tmp_path):
    """A RUNNING trial of a dead process on this host is failed and enqueued again once; a retry
    that dies too is failed but not retried; a trial of a live process is left alone. A
    one-point grid: telling its trial outside study.optimize must not reach GridSampler's
    study.stop() (which raises there)."""
    storage = open_storage(f"sqlite:///{tmp_path / 'study.db'}")
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize",
                                sampler=optuna.samplers.GridSampler({"x": [1.0]}))

    def start(pid):
        trial = study.ask()
        trial.suggest_float("x", 0.0, 2.0)
        trial.set_user_attr("host", HOST)
        trial.set_user_attr("pid", pid)
        trial.set_user_attr("run_dir", "trials/trial-000")
        return trial

    alive = start(os.getppid())  # a live process that is not this one
    dead = start(_dead_pid())
    assert recover_dead_trials(study, storage) == [dead.number]
    trials = study.trials
    assert trials[alive.number].state == optuna.trial.TrialState.RUNNING
    assert trials[dead.number].state == optuna.trial.TrialState.FAIL
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == dead.number]
    assert len(retries) == 1 and retries[0].state == optuna.trial.TrialState.WAITING
    assert retries[0].params == {"x": 1.0}
    assert not {"host", "pid", "run_dir"} & set(retries[0].user_attrs)  # not the dead process's
    assert recover_dead_trials(study, storage) == [] and len(study.trials) == len(trials)  # once

    retry = study.ask()  # the WAITING retry is run next ...
    assert retry.number == retries[0].number
    retry.set_user_attr("host", HOST)
    retry.set_user_attr("pid", _dead_pid())  # ... and dies too
    assert recover_dead_trials(study, storage) == [retry.number]
    assert study.trials[retry.number].state == optuna.trial.TrialState.FAIL
    assert len(study.trials) == len(trials)  # a retry is not retried again


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit])
def test_interrupted_trial_is_failed_noted_and_retried(tiny_dataset, tmp_path, monkeypatch, interrupt):
    """Ctrl-C during a trial (KeyboardInterrupt, or Lightning's SystemExit after it): the trial
    is FAIL with ``interrupted`` and enqueued again; the next run trains the retry."""
    space = {"train.lr": [1.0e-3]}
    kwargs = dict(sampler="grid", out=tmp_path / "searches", name="stop", evaluate_best=False,
                  overrides=[o for o in BASE if o != "--set"] + ["train.max_epochs=1"])

    def interrupted(*args, **kwargs):
        raise interrupt()

    monkeypatch.setattr(tune_command_module, "train", interrupted)
    with pytest.raises(interrupt):
        tune_command_module.tune(tiny_dataset, space, **kwargs)
    search = tmp_path / "searches" / "stop"
    first, retry = _study(search).trials
    assert first.state == optuna.trial.TrialState.FAIL and first.user_attrs["interrupted"] is True
    assert retry.state == optuna.trial.TrialState.WAITING and retry.system_attrs["failed_trial"] == 0
    assert "interrupted" not in retry.user_attrs and retry.params == first.params

    monkeypatch.undo()
    result = tune_command_module.tune(tiny_dataset, space, **kwargs)
    assert result.complete
    trials = _study(search).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE]
    notes = dict(zip(result.table.trial, result.table.note.fillna("")))
    assert notes[0] == "interrupted" and notes[1] == "retry of trial 0"
