"""End to end on a small subset of the real Covid-19 X-rays (../shared/data/covid19-xray)."""
import json

import pandas as pd
import yaml

import medclf


def test_two_epochs_on_real_xrays(covid_subset, tmp_path):
    result = medclf.train(covid_subset, overrides=["train.max_epochs=2", "data.image_size=[128,128]"],
                          out=tmp_path / "runs", name="covid", progress=False)
    run = result.run_dir
    for name in ("config.yaml", "split.csv", "dataset.json", "metrics.csv", "test_metrics.json",
                 "predictions.csv", "checkpoints/last.ckpt",
                 "plots/learning_curves.png", "plots/confusion_matrix.png", "plots/roc_curves.png"):
        assert (run / name).is_file(), name

    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["train"]["max_epochs"] == 2 and config["data"]["image_size"] == [128, 128]
    assert config["model"]["name"] == "small_cnn"  # every default written out

    split = pd.read_csv(run / "split.csv")
    assert split.groupby("split").size().to_dict() == {"test": 12, "train": 26, "val": 4}
    assert set(split.label) == {"Covid", "Normal", "Viral Pneumonia"}
    assert not set(split[split.split == "test"].path) & set(split[split.split != "test"].path)

    metrics = pd.read_csv(run / "metrics.csv")
    assert list(metrics.epoch) == [0, 1]
    for column in ("train_loss", "val_loss", "train_accuracy", "val_accuracy", "val_roc_auc", "lr"):
        assert metrics[column].notna().all(), column
    assert (metrics.epoch_time_s > 0).all()

    test = json.loads((run / "test_metrics.json").read_text())
    assert test["n"] == 12 and 0 <= test["roc_auc"] <= 1 and 0 <= test["accuracy"] <= 1
    assert set(test["per_class"]) == {"Covid", "Normal", "Viral Pneumonia"}
    for values in test["per_class"].values():
        assert {"sensitivity", "specificity", "precision", "f1", "support"} <= set(values)
    assert sum(sum(row) for row in test["confusion_matrix"]) == 12
    assert result.metrics["accuracy"] == test["accuracy"]

    predictions = pd.read_csv(run / "predictions.csv")
    assert len(predictions) == 12
    probs = predictions[[c for c in predictions if c.startswith("prob_")]]
    assert (probs.sum(axis=1) - 1).abs().max() < 1e-5
    assert (predictions.predicted == probs.idxmax(axis=1).str[5:]).all()

    # re-evaluation of the same checkpoint gives the same numbers
    _, again = medclf.evaluate(run)
    assert again["accuracy"] == test["accuracy"] and again["roc_auc"] == test["roc_auc"]
    # evaluation on another folder goes to its own directory
    out, other = medclf.evaluate(run, data=covid_subset)
    assert out == run / "evaluations" / "covid-subset" and other["n"] == 12
    frame = medclf.predict(run, list(predictions.path[:2]))
    assert list(frame.predicted) == list(predictions.predicted[:2])
