"""Kill training with SIGKILL (mid-epoch, and during a checkpoint write), resume, and compare
with an uninterrupted run; two deterministic runs give the same metrics.csv."""
import json
import os
import signal
from pathlib import Path

import pandas as pd
import pytest
import torch

from medclf.cli import main

from conftest import make_dataset

ARGS = ["--set", "train.max_epochs=3", "--set", "data.image_size=[24,24]", "--set", "model.filters=[4,8]",
        "--set", "train.batch_size=4", "--set", "trainer.deterministic=true",
        "--set", "trainer.accelerator=cpu", "--set", "seed=7", "--set", "train.keep_weights=best",
        "--set", "explain.gallery_size=0", "--set", "eval.bootstrap=0", "--no-progress"]
# every column but the wall-clock seconds is deterministic
SAME = ["epoch", "train_loss", "val_loss", "train_accuracy", "val_accuracy", "train_balanced_accuracy",
        "val_balanced_accuracy", "train_roc_auc", "val_roc_auc", "lr"]


def medclf(warm, *args, fault=None):
    """``medclf ARGS`` as a process (a fork of conftest's warm server), with fault injection."""
    env = dict(os.environ)
    env.pop("MEDCLF_FAULT", None)
    if fault:
        env["MEDCLF_FAULT"] = fault
    return warm.run(args, env, timeout=300)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A small dataset and one uninterrupted deterministic run on it (in this process)."""
    root = tmp_path_factory.mktemp("resume")
    data = make_dataset(root / "data", per_class=(10, 10))
    assert main(["train", str(data), "--out", str(root / "runs"), "--name", "full", *ARGS]) == 0
    return data, root / "runs", root / "runs" / "full"


def final(run: Path):
    metrics = pd.read_csv(run / "metrics.csv")
    test = json.loads((run / "test_metrics.json").read_text())
    return metrics, {k: test[k] for k in ("accuracy", "balanced_accuracy", "roc_auc", "confusion_matrix",
                                          "checkpoint_epoch")}


def kill_and_check(warm, run: Path, args, fault: str, killed_epoch: int) -> None:
    killed = medclf(warm, *args, fault=fault)
    assert killed.returncode == -signal.SIGKILL, (fault, killed.stdout[-2000:], killed.stderr[-2000:])
    assert not (run / "test_metrics.json").exists()
    # the last complete checkpoint is intact and is the one before the killed epoch
    saved = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert saved["epoch"] == killed_epoch - 1
    stray = list((run / "checkpoints").glob(".*.tmp"))
    assert bool(stray) == fault.startswith("checkpoint_write")  # the torn write stayed a temporary file


def test_killed_run_resumes_to_the_same_result(reference, warm_medclf):
    """SIGKILL during the first checkpoint write of epoch 1, resume, SIGKILL at batch 2 of
    epoch 2, resume again: metrics.csv and the test metrics equal the uninterrupted run's,
    and each resumed process starts at the epoch that was killed."""
    data, runs, full = reference
    run = runs / "killed"
    # epoch 0 writes best.ckpt and last.ckpt (writes 1 and 2); write 3 is in epoch 1
    kill_and_check(warm_medclf, run, ["train", str(data), "--out", str(runs), "--name", "killed", *ARGS],
                   "checkpoint_write=3", killed_epoch=1)
    kill_and_check(warm_medclf, run, ["train", "--resume", str(run), "--no-progress"], "batch=2:2", killed_epoch=2)
    assert not list(run.rglob(".*.tmp"))  # the first resume removed the torn temporary file
    epochs = pd.read_csv(run / "metrics.csv").epoch.tolist()
    assert epochs == [0, 1] or epochs == [0, 1, 2]  # a row may precede its checkpoint

    resumed = medclf(warm_medclf, "train", "--resume", str(run), "--no-progress")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.strip().splitlines()[-1] == str(run)
    test = json.loads((run / "test_metrics.json").read_text())
    assert test["resumed_after_epoch"] == 1  # at most the killed epoch is run again

    ref_metrics, ref_test = final(full)
    metrics, result = final(run)
    assert list(metrics.epoch) == [0, 1, 2]  # no repeated or missing rows
    pd.testing.assert_frame_equal(metrics[SAME], ref_metrics[SAME], check_exact=True)
    assert result == ref_test


def test_resume_refuses_a_finished_run_and_extra_settings(reference, capsys):
    _, _, full = reference
    assert main(["train", "--resume", str(full)]) == 2
    assert "has finished" in capsys.readouterr().err
    assert main(["train", "--resume", str(full), "--set", "train.lr=0.1"]) == 2
    assert "own config.yaml" in capsys.readouterr().err


def test_deterministic_runs_repeat_from_the_stored_config(reference, capsys):
    """Two deterministic runs give the same metrics.csv (wall-clock seconds aside), and the
    run directory records what is needed to repeat it."""
    data, runs, full = reference
    assert main(["train", "--config", str(full / "config.yaml"), "--out", str(runs), "--name", "again",
                 "--no-progress"]) == 0
    again = runs / "again"
    first, second = pd.read_csv(full / "metrics.csv"), pd.read_csv(again / "metrics.csv")
    assert len(first) == 3
    pd.testing.assert_frame_equal(first[SAME], second[SAME], check_exact=True)
    assert (full / "config.yaml").read_text() == (again / "config.yaml").read_text()
    one, two = (json.loads((r / "provenance.json").read_text()) for r in (full, again))
    assert one["manifest_sha256"] == two["manifest_sha256"] and len(one["manifest_sha256"]) == 64
    assert one["packages"]["torch"] == torch.__version__.split("+")[0] or one["packages"]["torch"] == torch.__version__
    assert one["packages"]["lightning"] and one["deterministic"] is True
    capsys.readouterr()


def test_run_killed_after_its_last_epoch_resumes_to_evaluation_only(reference, tmp_path, capsys):
    _, _, full = reference
    import shutil
    run = tmp_path / "copy"
    shutil.copytree(full, run)
    for name in ("test_metrics.json", "predictions.csv"):
        (run / name).unlink()
    before = (run / "metrics.csv").read_text()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert (run / "metrics.csv").read_text() == before  # no epoch was trained again
    test = json.loads((run / "test_metrics.json").read_text())
    assert test["resumed_after_epoch"] == 2
    assert final(run)[1] == final(full)[1]
    capsys.readouterr()


def test_run_killed_before_its_first_checkpoint_starts_again_identically(reference, tmp_path, capsys):
    """Only config.yaml was written (killed while preprocessing): resume trains from the
    start and ends where the uninterrupted run ended."""
    _, _, full = reference
    run = tmp_path / "early"
    run.mkdir()
    (run / "config.yaml").write_text((full / "config.yaml").read_text())
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    ref_metrics, ref_test = final(full)
    metrics, result = final(run)
    pd.testing.assert_frame_equal(metrics[SAME], ref_metrics[SAME], check_exact=True)
    assert result == ref_test
    assert (run / "split.csv").read_text() == (full / "split.csv").read_text()
    capsys.readouterr()


def test_resume_refuses_images_that_changed(reference, tmp_path, capsys):
    _, _, full = reference
    import shutil
    run = tmp_path / "changed"
    shutil.copytree(full, run)
    (run / "test_metrics.json").unlink()
    # last.ckpt is written after every epoch, whether or not the epoch was the best
    assert torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["epoch"] == 2
    split = pd.read_csv(run / "split.csv")
    split.loc[3, "sha"] = "0" * 32  # as if the file's content had changed since
    split.to_csv(run / "split.csv", index=False)
    assert main(["train", "--resume", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "1 image(s) changed since the run started" in err and split.path[3] in err


@pytest.mark.parametrize("ema", [False, True], ids=["plain", "weight-average"])
def test_validating_every_other_epoch_trains_the_same_weights(reference, ema, capsys):
    """``train.check_val_every_n_epoch=2`` over 3 epochs validates after epochs 1 and 2 (the
    last, always): its metrics.csv rows are the every-epoch run's rows of those epochs, and its
    last weights are the same, to the bit (every epoch's random numbers are seeded); also
    with an exponential moving average of the weights, which validation swaps in and out."""
    data, runs, full = reference
    if ema:
        averaged = ["--set", "train.ema_epochs=1"]
        full = runs / "ema-every-epoch"
        assert main(["train", str(data), "--out", str(runs), "--name", full.name, *ARGS, *averaged]) == 0
    else:
        averaged = []
    sparse = runs / f"sparse-{ema}"
    assert main(["train", str(data), "--out", str(runs), "--name", sparse.name, *ARGS, *averaged,
                 "--set", "train.check_val_every_n_epoch=2"]) == 0
    every, fewer = pd.read_csv(full / "metrics.csv"), pd.read_csv(sparse / "metrics.csv")
    assert fewer.epoch.tolist() == [1, 2]
    pd.testing.assert_frame_equal(every[every.epoch >= 1][SAME].reset_index(drop=True), fewer[SAME],
                                  check_exact=True)
    one, two = (torch.load(r / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
                for r in (full, sparse))
    assert one.keys() == two.keys()
    assert all(torch.equal(one[k], two[k]) for k in one)
    capsys.readouterr()
