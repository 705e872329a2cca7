"""train runs the inspection, warns about test images copied from training, and writes the
clinical metrics, calibration and TTA numbers; evaluate reproduces them."""
import json
import logging
import shutil

import pandas as pd
import pytest

from medclf.cli import main

from conftest import make_dataset

FAST = ["--set", "train.max_epochs=2", "--set", "data.image_size=[32,32]",
        "--set", "model.filters=[8,16]", "--set", "train.batch_size=8", "--no-progress",
        "--set", "eval.bootstrap=50"]


def test_train_inspects_warns_and_reports_with_and_without_duplicates(tmp_path, capsys, caplog):
    root = make_dataset(tmp_path / "d", per_class=(16, 16), splits=("train", "val", "test"))
    shutil.copy(root / "train/disk/disk_3.png", root / "test/disk/leaked.png")
    shutil.copy(root / "train/bar/bar_2.png", root / "val/bar/copied.png")  # a given split keeps its copies
    runs = tmp_path / "runs"
    with caplog.at_level(logging.WARNING, logger="medclf"):
        code = main(["train", str(root), "--out", str(runs), "--name", "r", *FAST,
                     "--set", "eval.drop_duplicates=true", "--set", "eval.tta=true",
                     "--set", "eval.temperature_scaling=true"])
    out = capsys.readouterr().out
    assert code == 0
    run = runs / "r"
    inspection = json.loads((run / "inspection.json").read_text())
    leaked = {r["path"].rsplit("/", 1)[1] for r in inspection["leaks"]["test"]}
    assert "leaked.png" in leaked
    assert "duplicate training images" in caplog.text and "leaked.png" in caplog.text
    metrics = json.loads((run / "test_metrics.json").read_text())
    n_test = int((pd.read_csv(run / "split.csv").split == "test").sum())
    dup = metrics["duplicates"]
    assert dup["dropped"] and dup["n_test_duplicating_train"] == len(leaked)
    assert metrics["n"] == n_test - len(leaked) and dup["metrics_with"]["n"] == n_test
    for key in ("roc_auc_ci", "balanced_accuracy_ci", "operating_point", "calibration", "tta"):
        assert metrics[key] is not None, key
    assert 0 <= metrics["operating_point"]["threshold"] <= 1
    assert metrics["calibration"]["temperature"] > 0 and "ece_after" in metrics["calibration"]
    for name in ("disk", "bar"):
        assert {"sensitivity", "specificity", "ppv", "npv"} <= set(metrics["per_class"][name])
    assert (run / "plots" / "reliability.png").stat().st_size > 1000
    assert "operating threshold" in out and "ECE" in out and "test-time augmentation" in out
    predictions = pd.read_csv(run / "predictions.csv")
    assert predictions.duplicates_train.sum() == len(leaked)
    # with eval.tta the averaged probabilities are the predictions: metrics and 'predicted' follow them
    from sklearn.metrics import roc_auc_score
    names = metrics["class_names"]
    averaged = predictions[[f"tta_prob_{n}" for n in names]].to_numpy()
    assert list(predictions.predicted) == [names[i] for i in averaged.argmax(axis=1)]
    kept = ~predictions.duplicates_train.to_numpy()
    positive = names.index(metrics["operating_point"]["positive_class"])
    truth = (predictions.label.to_numpy()[kept] == names[positive]).astype(int)
    assert metrics["roc_auc"] == pytest.approx(roc_auc_score(truth, averaged[kept, positive]), abs=1e-6)
    one_pass = predictions[f"prob_{names[positive]}"].to_numpy()[kept]
    assert metrics["tta"]["without_tta"]["roc_auc"] == pytest.approx(roc_auc_score(truth, one_pass), abs=1e-6)

    # the given validation split holds a copy of a training image, which training drops before
    # choosing the threshold: evaluate must drop it too (it kept it before commit e870cd0)
    assert "copied.png" in {r["path"].rsplit("/", 1)[1] for r in inspection["leaks"]["val"]}
    # evaluate in a fresh state: the images are decoded again (no in-memory cache), the
    # checkpoint is reloaded and the validation split predicted again, so the operating
    # threshold and temperature chosen on it are the ones training stored
    from medclf.data import preprocess
    preprocess._MEMORY_CACHE.clear()
    assert main(["evaluate", str(run)]) == 0
    again = json.loads((run / "test_metrics.json").read_text())
    assert again["operating_point"]["threshold"] == pytest.approx(metrics["operating_point"]["threshold"], abs=1e-6)
    assert again["n"] == metrics["n"]
    assert again["calibration"]["temperature"] == pytest.approx(metrics["calibration"]["temperature"], abs=1e-6)
    assert again["calibration"]["ece"] == pytest.approx(metrics["calibration"]["ece"], abs=1e-6)
    assert again["roc_auc"] == pytest.approx(metrics["roc_auc"], abs=1e-6)
    assert again["tta"]["without_tta"]["roc_auc"] == pytest.approx(metrics["tta"]["without_tta"]["roc_auc"], abs=1e-6)
