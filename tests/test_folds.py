"""The small-data protocol: stratified folds grouped by patient and by duplicate group, the
ensemble's probabilities, the planned protocol and time, and an ensemble run that is killed
mid-fold and resumed."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from medclf.data.folds import assign_folds, duplicate_pairs, fold_groups
from medclf.models.ensemble import Ensemble
from medclf.plan import Planner

from conftest import make_dataset

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _frame(n=120, seed=0):
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"path": [f"/d/{i}.png" for i in range(n)],
                          "patient_id": rng.integers(0, 50, n).astype(str)})
    labels = rng.choice(3, size=n, p=[0.5, 0.3, 0.2])
    return frame, labels


def test_folds_are_stratified_and_keep_patients_and_copies_together():
    frame, labels = _frame()
    pairs = [("/d/0.png", "/d/7.png"), ("/d/7.png", "/d/99.png"), ("/d/3.png", "/d/50.png")]
    folds = assign_folds(frame, labels, 5, seed=1, pairs=pairs)
    assert sorted(set(folds)) == [0, 1, 2, 3, 4]
    # no patient in two folds
    assert frame.assign(fold=folds).groupby("patient_id").fold.nunique().max() == 1
    # a chain of copies 0 ~ 7 ~ 99 stays in one fold, as does 3 ~ 50 (even across patients)
    assert folds[0] == folds[7] == folds[99] and folds[3] == folds[50]
    # every fold holds every class, near the overall share
    for k in range(5):
        share = np.bincount(labels[folds == k], minlength=3) / (folds == k).sum()
        assert np.all(share > 0) and np.abs(share - np.bincount(labels) / len(labels)).max() < 0.15
    # the same seed gives the same folds, another seed other folds
    assert np.array_equal(folds, assign_folds(frame, labels, 5, seed=1, pairs=pairs))
    assert not np.array_equal(folds, assign_folds(frame, labels, 5, seed=2, pairs=pairs))


def test_duplicate_pairs_and_groups_from_an_inspection():
    inspection = {"exact_duplicates": [{"files": [{"path": "a"}, {"path": "b"}, {"path": "c"}]}],
                  "near_duplicates": [{"files": [{"path": "c"}, {"path": "d"}]}]}
    pairs = duplicate_pairs(inspection)
    assert set(pairs) == {("a", "b"), ("a", "c"), ("c", "d")}
    groups = fold_groups(pd.DataFrame({"path": ["a", "b", "c", "d", "e"]}), pairs)
    assert len(set(groups[:4])) == 1 and groups[4] != groups[0]


def test_too_few_groups_for_the_folds_is_a_clear_error():
    from medclf.errors import DataError
    frame = pd.DataFrame({"path": list("abcdef"), "patient_id": ["p", "p", "p", "q", "q", "q"]})
    with pytest.raises(DataError, match="train.folds=5.*only 2 distinct"):
        assign_folds(frame, np.array([0, 1, 0, 1, 0, 1]), 5, seed=0)


def test_ensemble_probabilities_are_the_mean_of_its_members():
    torch.manual_seed(0)
    members = [torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)) for _ in range(4)]
    x = torch.randn(5, 1, 4, 4) * 3
    expected = torch.stack([m(x).softmax(1) for m in members]).mean(0)
    got = Ensemble(members)(x).softmax(1)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(got, members[0](x).softmax(1), atol=1e-3)  # it is not one member


def test_a_fold_process_has_the_environment_of_the_moment_it_starts(monkeypatch):
    """Fold processes are copies of a fork server started earlier (preloading the training
    code); each still gets the run's environment variables as they are when the pool starts."""
    import logging
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import forkserver

    from medclf.commands.fold_processes import fold_context
    from medclf.commands.folds import _start_worker

    context = fold_context()
    assert context.get_start_method() == "forkserver"
    forkserver.ensure_running()
    monkeypatch.setenv("MEDCLF_TEST_SET_AFTER_THE_SERVER", "yes")
    with ProcessPoolExecutor(1, mp_context=context, initializer=_start_worker,
                             initargs=(logging.WARNING, dict(os.environ))) as pool:
        assert pool.submit(os.getenv, "MEDCLF_TEST_SET_AFTER_THE_SERVER").result() == "yes"
        assert pool.submit(os.getpid).result() != os.getpid()


def test_the_plan_chooses_folds_for_small_sets_only():
    small = {"median_size": [512, 512], "counts": {"train": {"a": 110, "b": 70}, "val": {"a": 19, "b": 12}}}
    planned = Planner(small).plan()
    assert planned.train.folds == Planner.FOLDS and not planned.train.early_stopping.enabled
    assert planned.train.check_val_every_n_epoch == Planner.FOLDS_CHECK_VAL_EVERY_N_EPOCH > 1
    assert planned.data.image_size == [Planner.FOLDS_IMAGE_SIDE] * 2 and planned.train.time_budget_s
    large = {"median_size": [512, 512], "counts": {"train": {"a": 3000, "b": 2000}}}
    assert Planner(large).plan().train.folds == 0
    assert Planner(large).plan().train.check_val_every_n_epoch == 1
    tiny = {"median_size": [48, 48], "counts": {"train": {"a": 12, "b": 12}}}
    assert Planner(tiny).plan().train.folds == 0


def test_the_budget_sizes_the_epochs(tmp_path):
    from medclf.plan import plan_run
    from medclf.training.budget import planned_seconds
    data = make_dataset(tmp_path / "d", per_class=(30, 30))
    planned = plan_run(data).config
    assert planned.train.folds == 5
    per_epoch = planned_seconds(planned, 60, 51, epochs=1)
    assert per_epoch > 0
    # a budget of 10.5 epochs plans 10; one under the floor plans the floor; max_epochs given wins
    ten = plan_run(data, overrides=[f"train.time_budget_s={per_epoch * 10.5}"]).config
    assert ten.train.max_epochs == 10
    assert planned_seconds(ten, 60, 51) == pytest.approx(10 * per_epoch)
    tiny = plan_run(data, overrides=[f"train.time_budget_s={per_epoch / 2}"]).config
    assert tiny.train.max_epochs == Planner.MIN_BUDGET_EPOCHS
    assert plan_run(data, overrides=["train.max_epochs=3"]).config.train.max_epochs == 3


ARGS = ["--set", "train.folds=3", "--set", "train.max_epochs=3", "--set", "data.image_size=[24,24]",
        "--set", "model.filters=[4,8]", "--set", "train.batch_size=4", "--set", "trainer.deterministic=true",
        "--set", "trainer.accelerator=cpu", "--set", "seed=3", "--set", "eval.bootstrap=0", "--no-progress"]


def _medclf(warm, *args, fault=None):
    """``medclf ARGS`` as a process (a fork of conftest's warm server), with fault injection."""
    env = dict(os.environ)
    env.pop("MEDCLF_FAULT", None)
    if fault:
        env["MEDCLF_FAULT"] = fault
    return warm.run(args, env, timeout=600)


def _descendants(pid: int) -> set[int]:
    """Living (not zombie) processes below ``pid``, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pids: set[int]) -> set[int]:
    """The processes of ``pids`` that still run (not ended, not zombies)."""
    alive = set()
    for pid in pids:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                alive.add(pid)
        except OSError:
            pass
    return alive


def test_the_fold_server_starts_only_for_a_run_that_trains_fold_processes(tiny_dataset, tmp_path, monkeypatch):
    """A run that trains one model starts no fork server (its imports would cost a 2-core
    machine about 10 s of one core for nothing); a k-fold run on two processes starts it."""
    import medclf.commands.train as train_command

    class Started(Exception):
        pass

    def start_fold_server():
        raise Started

    monkeypatch.setattr(train_command, "start_fold_server", start_fold_server)
    overrides = [arg for arg in ARGS if arg not in ("--set", "--no-progress")] + ["train.max_epochs=1"]
    result = train_command.train(str(tiny_dataset), out=tmp_path / "runs", name="one", progress=False,
                                 overrides=[*overrides, "train.folds=1"])
    assert (result.run_dir / "test_metrics.json").is_file()
    with pytest.raises(Started):  # at once, before the data is loaded
        train_command.train(str(tiny_dataset), out=tmp_path / "runs", name="folds", progress=False,
                            overrides=[*overrides, "train.folds=2", "train.fold_workers=2"])


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the process tree from /proc (Linux)")
def test_killing_the_run_kills_its_fold_processes(tmp_path, warm_medclf):
    """SIGKILL to ``medclf train`` while two fold processes train: neither outlives it (they
    are copies of a fork server, not the run's children), so none goes on writing checkpoints
    into a run directory that --resume is about to use."""
    data = make_dataset(tmp_path / "data", per_class=(16, 16))
    env = dict(os.environ)
    env.pop("MEDCLF_FAULT", None)
    args = [*ARGS, "--set", "train.max_epochs=200", "--set", "train.fold_workers=2"]
    run = warm_medclf.start(["train", data, "--out", tmp_path / "runs", "--name", "killed", *args], env)
    checkpoint = tmp_path / "runs" / "killed" / "folds" / "fold_0" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 240
    while not checkpoint.exists() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert checkpoint.exists(), run.communicate()[1][-2000:] if run.poll() is not None else "no checkpoint"
    below = _descendants(run.pid)
    assert len(below) >= 3, below  # the fork server and two fold processes (and the resource tracker)
    run.kill()
    run.wait()
    deadline = time.monotonic() + 30
    while _alive(below) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _alive(below), f"processes outlived the killed run: {_alive(below)}"
    run.communicate()


@pytest.mark.parametrize("workers", ["1", "0"], ids=["folds-in-turn", "fold-processes"])
def test_an_ensemble_run_killed_mid_fold_resumes_to_the_uninterrupted_result(tmp_path, workers, warm_medclf):
    """SIGKILL in fold 0 (epoch 1, batch 1), resume: the out-of-fold and test figures equal an
    uninterrupted run's; the run predicts with the ensemble. With ``train.fold_workers=1`` the
    run itself is killed; with parallel fold processes (auto, on a CPU with 2+ cores) the
    fold processes are, and the run stops with a clear error that says how to resume."""
    data = make_dataset(tmp_path / "data", per_class=(12, 12))
    runs = tmp_path / "runs"
    args = [*ARGS, "--set", f"train.fold_workers={workers}"]
    full = _medclf(warm_medclf, "train", str(data), "--out", str(runs), "--name", "full", *args)
    assert full.returncode == 0, full.stderr[-3000:]
    parallel = workers == "0" and len(os.sched_getaffinity(0)) >= 2
    assert ("folds in 2 processes at a time" in full.stderr) == parallel
    # batch=1:1 fires in the first fold that reaches epoch 1 batch 1 (fold 0): kill it there
    killed = _medclf(warm_medclf, "train", str(data), "--out", str(runs), "--name", "killed", *args, fault="batch=1:1")
    if parallel:
        assert killed.returncode == 2 and "a fold process died" in killed.stderr, killed.stderr[-2000:]
        assert "medclf train --resume" in killed.stderr
    else:
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    run = runs / "killed"
    # folds with a checkpoint and no predictions: killed mid-training. In turn: fold 0 alone. In
    # parallel processes every fold process has the fault, and which folds had written a checkpoint
    # when the pool broke depends on timing (they start together from a fork server): a fold the
    # pool ended during its first epoch has none and trains from the start on resume
    started = [f for f in range(3) if (run / "folds" / f"fold_{f}" / "checkpoints" / "last.ckpt").is_file()]
    assert started == [0] if not parallel else len(started) >= 1, started
    assert not any((run / "folds" / f"fold_{f}" / "fold_predictions.csv").exists() for f in started)
    resumed = _medclf(warm_medclf, "train", "--resume", str(run), "--no-progress")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert all(f"fold {f}: resuming after epoch 0" in resumed.stderr for f in started), resumed.stderr[-3000:]
    for name in ("validation_metrics.json", "test_metrics.json"):
        a = json.loads((runs / "full" / name).read_text())
        b = json.loads((run / name).read_text())
        for key in ("accuracy", "balanced_accuracy", "roc_auc"):
            assert a[key] == pytest.approx(b[key], abs=1e-9), (name, key)
    assert json.loads((run / "validation_metrics.json").read_text())["kind"] == "out_of_fold"
    recorded = json.loads((run / "test_metrics.json").read_text())
    assert (recorded["checkpoint_epoch"], recorded["epochs_run"]) == (2, 3)  # read from the fold checkpoints
    oof = pd.read_csv(run / "oof_predictions.csv")
    assert len(oof) == 24 and sorted(oof.fold.unique()) == [0, 1, 2]
    split = pd.read_csv(run / "split.csv")
    assert (split[split.split == "test"].fold == -1).all()
    # predict goes through the ensemble: its probabilities are the mean of the fold models'
    from medclf.evaluation.predict import load_model
    from medclf.rundir import load_run
    loaded = load_run(run)
    ensemble = load_model(loaded)
    assert isinstance(ensemble, Ensemble) and len(ensemble.members) == 3
    x = torch.rand(2, 1, 24, 24)
    with torch.no_grad():
        mean = torch.stack([m(x).softmax(1) for m in ensemble.members]).mean(0)
        torch.testing.assert_close(ensemble(x).softmax(1), mean)


def test_an_ensemble_run_trains_with_ddp_two_cpu_processes(tiny_dataset, tmp_path):
    """DDP (2 CPU processes, gloo) trains every fold model together; rank 0 alone writes."""
    out = tmp_path / "runs"
    env = {**os.environ, "PYTHONPATH": SRC}
    for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MEDCLF_RUN_DIR", "MEDCLF_FAULT"):
        env.pop(name, None)
    done = subprocess.run(
        [sys.executable, "-m", "medclf.cli", "train", str(tiny_dataset), "--out", str(out), "--no-progress",
         "--set", "train.folds=2", "--set", "trainer.strategy=ddp", "--set", "trainer.devices=2",
         "--set", "trainer.accelerator=cpu", "--set", "train.max_epochs=1", "--set", "data.image_size=[32,32]",
         "--set", "model.filters=[8,16]", "--set", "train.batch_size=4", "--set", "eval.bootstrap=0"],
        capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = list(out.iterdir())
    assert len(runs) == 1, runs
    run = runs[0]
    assert json.loads((run / "test_metrics.json").read_text())["world_size"] == 2
    for k in (0, 1):
        assert (run / "folds" / f"fold_{k}" / "fold_predictions.csv").is_file()
        assert list(pd.read_csv(run / "folds" / f"fold_{k}" / "metrics.csv").epoch) == [0]
    assert len(pd.read_csv(run / "oof_predictions.csv")) == 24
    assert not list((run / "folds" / "fold_0").glob("folds"))  # no nested run written by rank 1


def _large_images(root: Path, per_class: int = 15) -> Path:
    from PIL import Image
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("test", 4)):
        for cls in ("disk", "bar"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (256, 256), dtype=np.uint8)).save(root / split / cls / f"{i}.png")
    return root


def test_the_budget_steps_the_side_down_until_it_affords_enough_epochs(tmp_path):
    from medclf.plan import n_pool, n_train, plan_run
    from medclf.training.budget import planned_seconds
    data = _large_images(tmp_path / "d")  # too few images per class for the k-fold protocol: one model
    one_model = ["train.folds=0"]
    roomy = plan_run(data, overrides=one_model)
    assert roomy.config.data.image_size == [224, 224]
    assert roomy.config.train.max_epochs == Planner.BUDGET_MAX_EPOCHS  # the budget affords more: the cap
    per_epoch = planned_seconds(roomy.config, n_pool(roomy.fingerprint), n_train(roomy.fingerprint), epochs=1)
    for epochs_at_224, side in ((Planner.MIN_EPOCHS_AT_SIDE, 224), (30, 192), (22, 160), (5, 160)):
        planned = plan_run(data, overrides=[*one_model, f"train.time_budget_s={per_epoch * epochs_at_224 + 1e-6}"])
        assert planned.config.data.image_size == [side, side], epochs_at_224
        assert planned.plan["data"]["image_size"] == [side, side]  # plan.json shows the stepped side
        if side > Planner.MIN_BUDGET_SIDE:
            assert planned.config.train.max_epochs >= Planner.MIN_EPOCHS_AT_SIDE
    # a side, or epochs, the user set are kept
    budget = f"train.time_budget_s={per_epoch * 5}"
    assert plan_run(data, overrides=[*one_model, budget, "data.image_size=[224,224]"]).config.data.image_size \
        == [224, 224]
    assert plan_run(data, overrides=[*one_model, budget, "train.max_epochs=3"]).config.data.image_size == [224, 224]
