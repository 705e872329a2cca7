"""The command line on generated data: bad input, training, evaluation, prediction."""
import json
import subprocess
import sys

import pandas as pd
import pytest
from PIL import Image

from medclf.cli import main

from conftest import make_dataset

FAST = ["--set", "train.max_epochs=2", "--set", "data.image_size=[32,32]",
        "--set", "model.filters=[8,16]", "--set", "train.batch_size=8", "--no-progress"]


def add_bad_files(root):
    folder = root / "train" / "disk"
    (folder / "zero.png").write_bytes(b"")
    good = next(folder.glob("*.png")).read_bytes()
    Image.open(next(folder.glob("*.png"))).convert("RGB").save(folder / "whole.jpg")
    data = (folder / "whole.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "whole.jpg").unlink()
    (folder / "notes.png").write_text("this is text, not an image")
    assert good
    return ["zero.png", "truncated.jpg", "notes.png"]


def test_bad_files_are_all_listed_before_training(tiny_dataset, tmp_path, capsys):
    names = add_bad_files(tiny_dataset)
    code = main(["train", str(tiny_dataset), "--out", str(tmp_path / "runs"), *FAST])
    err = capsys.readouterr().err
    assert code == 2
    assert "3 file(s) cannot be read" in err and "Traceback" not in err
    for name in names:
        assert name in err
    assert "on_bad_file=skip" in err
    assert not list((tmp_path / "runs").glob("*/checkpoints/*.ckpt"))  # nothing was trained


def test_skip_mode_trains_and_records_skipped_files(tiny_dataset, tmp_path, capsys):
    names = add_bad_files(tiny_dataset)
    code = main(["train", str(tiny_dataset), "--out", str(tmp_path / "runs"), "--name", "skip",
                 "--set", "data.on_bad_file=skip", *FAST])
    assert code == 0, capsys.readouterr().err
    run = tmp_path / "runs" / "skip"
    bad = pd.read_csv(run / "bad_files.csv")
    assert sorted(p.rsplit("/", 1)[-1] for p in bad.path) == sorted(names)
    assert bad.reason.str.len().min() > 5
    split = pd.read_csv(run / "split.csv")
    assert not split.path.str.contains("zero.png|truncated|notes.png").any()


@pytest.mark.parametrize("setup, message", [
    ("empty_class", "no image files"),
    ("one_class", "at least two class"),
    ("missing", "not found"),
])
def test_bad_dataset_layouts(tmp_path, capsys, setup, message):
    if setup == "empty_class":
        root = make_dataset(tmp_path / "d")
        (root / "train" / "empty").mkdir()
    elif setup == "one_class":
        root = make_dataset(tmp_path / "d", classes=("disk",), per_class=(12,))
    else:
        root = tmp_path / "nothing"
    assert main(["train", str(root), "--out", str(tmp_path / "runs"), *FAST]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_bad_config_key_and_value(tiny_dataset, tmp_path, capsys):
    assert main(["train", str(tiny_dataset), "--set", "train.lrr=0.1", "--no-progress"]) == 2
    assert "train.lrr: unknown key" in capsys.readouterr().err
    assert main(["train", str(tiny_dataset), "--set", "train.schedule=sometimes"]) == 2
    err = capsys.readouterr().err
    assert "train.schedule" in err and "cosine" in err
    config = tmp_path / "c.yaml"
    config.write_text("model:\n  nme: small_cnn\n")
    assert main(["train", str(tiny_dataset), "--config", str(config)]) == 2
    assert "model.nme: unknown key" in capsys.readouterr().err


def test_user_error_has_no_traceback_in_a_real_process(tmp_path):
    done = subprocess.run([sys.executable, "-m", "medclf.cli", "train", str(tmp_path / "none")],
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert "dataset folder not found" in done.stderr and "Traceback" not in done.stderr


def test_train_evaluate_predict_on_generated_data(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(["train", str(tiny_dataset), "--out", str(out), "--name", "tiny", *FAST]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    run = out / "tiny"
    assert printed[-1] == str(run)  # last line: the run directory
    assert any("ROC AUC" in line for line in printed)
    # a second run with the same name never overwrites the first
    assert main(["train", str(tiny_dataset), "--out", str(out), "--name", "tiny", *FAST]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out / "tiny-2")

    assert main(["evaluate", str(run)]) == 0
    metrics = json.loads((run / "test_metrics.json").read_text())
    # planned classification keeps the last weights: no best.ckpt is written
    assert metrics["n"] == 8 and metrics["checkpoint"] == "checkpoints/last.ckpt"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt"]
    capsys.readouterr()

    images = sorted((tiny_dataset / "test" / "disk").glob("*.png"))[:2]
    (tmp_path / "broken.png").write_bytes(b"nope")
    csv = tmp_path / "pred.csv"
    code = main(["predict", str(run), *map(str, images), str(tmp_path / "broken.png"), "--csv", str(csv)])
    assert code == 1  # one file could not be read
    frame = pd.read_csv(csv, keep_default_na=False)
    assert list(frame.columns[:3]) == ["path", "predicted", "probability"]
    assert {"prob_bar", "prob_disk"} <= set(frame.columns)
    good = frame[frame.error == ""]
    assert len(good) == 2
    assert (good.prob_bar.astype(float) + good.prob_disk.astype(float)).round(5).eq(1).all()
    assert "not a readable image" in frame.error.iloc[2]


def test_the_commands_that_only_predict_start_without_lightning():
    """evaluate, predict, explain, export and serve load trained networks and never train:
    they do not import Lightning or torchmetrics (importing ``medclf.commands.predict`` took
    7.6-8.8 s instead of 10.5-12.9 s on a slow 2-core machine). A fresh interpreter, so that
    other tests' imports do not count."""
    code = ("import sys\n"
            "import medclf.commands.evaluate, medclf.commands.predict, medclf.commands.explain\n"
            "import medclf.commands.export, medclf.commands.serve\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'lightning', 'torchmetrics', 'pytorch_lightning'}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]", done.stdout
