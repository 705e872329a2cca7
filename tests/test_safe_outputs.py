"""Run directories are never overwritten by accident; full or unwritable disks and
out-of-memory are reported before or instead of a traceback."""
import shutil
from collections import namedtuple

import pytest
import torch

from medclf.cli import main
from medclf.training import safety
from medclf.training.module import Classifier

FAST = ["--set", "train.max_epochs=1", "--set", "data.image_size=[24,24]", "--set", "model.filters=[4,8]",
        "--set", "train.batch_size=8", "--set", "explain.gallery_size=0", "--set", "eval.bootstrap=0", "--no-progress"]


def test_overwrite_is_explicit_and_only_for_run_directories(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(["train", str(tiny_dataset), "--out", str(out), "--name", "r", *FAST]) == 0
    (out / "r" / "marker.txt").write_text("from the first run")
    assert main(["train", str(tiny_dataset), "--out", str(out), "--name", "r", *FAST]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out / "r-2")
    assert (out / "r" / "marker.txt").exists()  # untouched

    assert main(["train", str(tiny_dataset), "--out", str(out), "--name", "r", "--overwrite", *FAST]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out / "r")
    assert not (out / "r" / "marker.txt").exists() and (out / "r" / "test_metrics.json").exists()

    (out / "notes").mkdir()
    (out / "notes" / "thesis.tex").write_text("precious")
    assert main(["train", str(tiny_dataset), "--out", str(out), "--name", "notes", "--overwrite", *FAST]) == 2
    assert "not a medclf run directory" in capsys.readouterr().err
    assert (out / "notes" / "thesis.tex").read_text() == "precious"


def test_full_disk_is_detected_before_training(tiny_dataset, tmp_path, monkeypatch, capsys):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 ** 9, 10 ** 9 - 5 * 2 ** 20, 5 * 2 ** 20))
    out = tmp_path / "runs"
    assert main(["train", str(tiny_dataset), "--out", str(out), *FAST]) == 2
    err = capsys.readouterr().err
    assert "not enough free disk space" in err and "5 MB free" in err and "Traceback" not in err
    assert not list(out.iterdir())  # nothing started


def test_unwritable_output_folder_is_detected_before_training(tiny_dataset, tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["train", str(tiny_dataset), "--out", str(blocker / "runs"), *FAST]) == 2
    assert "cannot create the output folder" in capsys.readouterr().err

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(safety.tempfile, "mkstemp", denied)  # what a read-only folder answers (we run as root)
    out = tmp_path / "readonly"
    out.mkdir()
    assert main(["train", str(tiny_dataset), "--out", str(out), *FAST]) == 2
    assert "cannot write to the output folder" in capsys.readouterr().err
    assert not list(out.iterdir())


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                                   RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 GB"),
                                   MemoryError()])
def test_out_of_memory_gives_advice(tiny_dataset, tmp_path, monkeypatch, capsys, error):
    def explode(self, batch, batch_idx):
        raise error
    monkeypatch.setattr(Classifier, "training_step", explode)
    assert main(["train", str(tiny_dataset), "--out", str(tmp_path / "runs"), *FAST]) == 2
    err = capsys.readouterr().err
    assert "ran out of memory during training" in err and "Traceback" not in err
    assert "train.batch_size=4" in err and "data.image_size=[16,16]" in err


def test_other_runtime_errors_are_not_disguised(tiny_dataset, tmp_path, monkeypatch):
    def explode(self, batch, batch_idx):
        raise RuntimeError("a genuine bug")
    monkeypatch.setattr(Classifier, "training_step", explode)
    with pytest.raises(RuntimeError, match="genuine bug"):
        main(["train", str(tiny_dataset), "--out", str(tmp_path / "runs"), *FAST])
