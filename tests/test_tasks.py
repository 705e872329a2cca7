"""Multilabel and regression tasks from any CSV: reading, errors, metrics against
scikit-learn, per-finding thresholds, the prediction interval."""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, mean_absolute_error, r2_score, roc_auc_score
from taskdata import make_multilabel_csv, make_regression_csv

from medclf.config import Config, parse_overrides, validate
from medclf.data.sources import discover_source
from medclf.errors import DataError
from medclf.evaluation.multilabel import multilabel_metrics, per_label_thresholds
from medclf.evaluation.regression import conformal_half_width, regression_metrics
from medclf.plan import plan_run


def data_config(**settings):
    return Config.model_validate({"data": settings}).data


def test_label_columns_from_the_command_line():
    tree = parse_overrides(["data.label_columns=[N,D,G,C,A,H,M,O]", "data.group_column=patient_id"])
    assert validate(tree).data.label_columns == ["N", "D", "G", "C", "A", "H", "M", "O"]
    assert validate(parse_overrides(["data.label_columns=N,D"])).data.label_columns == ["N", "D"]
    assert validate(parse_overrides(["data.label_columns=[boneage_months]"])).data.label_columns == ["boneage_months"]


def test_multilabel_csv_grouped_split_and_inferred_task(tmp_path, caplog):
    csv = make_multilabel_csv(tmp_path / "ml", n=60)
    with caplog.at_level(logging.INFO, logger="medclf"):
        manifest = discover_source(csv, data_config(path_column="file", label_columns=["disk", "bar", "square"],
                                                    group_column="patient"))
    assert "data.task inferred: multilabel" in caplog.text
    assert manifest.task == "multilabel" and manifest.class_names == ["disk", "bar", "square"]
    assert manifest.frame.groupby("patient_id").split.nunique().max() == 1  # a patient never in two splits
    truth = pd.read_csv(csv).set_index("file")
    train = manifest.frame[manifest.frame.split == "train"]
    expected = truth.loc[[p.split("/ml/", 1)[1] for p in train.path], ["disk", "bar", "square"]].to_numpy()
    np.testing.assert_array_equal(manifest.targets("train"), expected)
    assert manifest.targets("train").dtype == np.float32


def test_regression_inferred_and_planned(tmp_path):
    csv = make_regression_csv(tmp_path / "rg", n=60)
    planned = plan_run(str(csv), None, ["data.label_columns=[radius]"])
    assert planned.config.data.task == "regression"
    assert planned.config.train.loss == "l1" and planned.config.train.monitor == "val_mae"
    radius = pd.read_csv(csv).radius
    train = planned.manifest.targets("train")
    assert planned.fingerprint["target_mean"] == pytest.approx(float(train.mean()), rel=1e-5)
    assert radius.min() <= train.min() and train.max() <= radius.max()


def test_bad_values_listed_with_row_numbers(tmp_path):
    csv = make_multilabel_csv(tmp_path / "ml", n=12)
    frame = pd.read_csv(csv, dtype=str)
    frame.loc[2, "disk"] = "2"
    frame.loc[5, "bar"] = ""
    frame.loc[7, "file"] = "images/nowhere.png"
    frame.to_csv(csv, index=False)
    with pytest.raises(DataError) as err:
        discover_source(csv, data_config(path_column="file", label_columns=["disk", "bar", "square"]))
    text = str(err.value)
    assert "3 bad value(s)" in text
    assert "row 4: column 'disk' is '2', not 0 or 1" in text
    assert "row 7: column 'bar' is empty" in text
    assert "row 9: file" in text and "nowhere.png does not exist" in text


def test_non_numeric_target_and_missing_column(tmp_path):
    csv = make_regression_csv(tmp_path / "rg", n=30)
    frame = pd.read_csv(csv, dtype=str)
    frame.loc[3, "radius"] = "big"
    frame.to_csv(csv, index=False)
    with pytest.raises(DataError, match=r"row 5: column 'radius' is 'big', not a number"):
        discover_source(csv, data_config(label_columns=["radius"], task="regression"))
    with pytest.raises(DataError, match=r"missing column\(s\) 'age' \(data.label_columns\[0\]\).*the CSV has: path, radius"):
        discover_source(csv, data_config(label_columns=["age"]))


def test_names_column_is_classification(tmp_path):
    csv = make_regression_csv(tmp_path / "rg", n=30)
    frame = pd.read_csv(csv)
    frame["finding"] = np.where(frame.radius > 7, "large", "small")
    frame.rename(columns={"path": "filename"}).to_csv(csv, index=False)
    manifest = discover_source(csv, data_config(path_column="filename", label_columns=["finding"]))
    assert manifest.task == "classification" and manifest.class_names == ["large", "small"]
    assert set(manifest.targets("train")) == {0, 1}


def _multilabel_sample(seed=0, n=300, k=4):
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, k)) < [0.1, 0.3, 0.5, 0.2]).astype(int)
    probabilities = np.clip(0.35 * labels + rng.random((n, k)) * 0.65, 0, 1)
    return labels, probabilities


def test_multilabel_metrics_match_scikit_learn():
    labels, probabilities = _multilabel_sample()
    cfg = Config().eval.model_copy(update={"bootstrap": 200})
    names = ["a", "b", "c", "d"]
    m = multilabel_metrics(labels, probabilities, names, cfg, seed=0, train_prevalence=[0.1, 0.3, 0.5, 0.2])
    assert m["macro_roc_auc"] == pytest.approx(roc_auc_score(labels, probabilities, average="macro"))
    assert m["micro_roc_auc"] == pytest.approx(roc_auc_score(labels, probabilities, average="micro"))
    assert m["map"] == pytest.approx(average_precision_score(labels, probabilities, average="macro"))
    assert m["micro_average_precision"] == pytest.approx(average_precision_score(labels, probabilities,
                                                                                 average="micro"))
    for k, name in enumerate(names):
        assert m["per_label"][name]["roc_auc"] == pytest.approx(roc_auc_score(labels[:, k], probabilities[:, k]))
    low, high = m["macro_roc_auc_ci"]
    assert low < m["macro_roc_auc"] < high
    # the prevalence baseline: a constant score has AP = test prevalence and AUC 0.5
    assert m["baseline"]["map"] == pytest.approx(labels.mean(axis=0).mean())
    assert m["baseline"]["macro_roc_auc"] == pytest.approx(0.5)
    assert m["map"] > m["baseline"]["map"]


def test_per_label_threshold_chosen_on_validation():
    # finding 0 is separable on validation between 0.30 and 0.70; finding 1 between 0.10 and 0.20
    val_labels = np.array([[0, 0], [0, 0], [0, 1], [1, 1], [1, 1], [1, 0]])
    val_probs = np.array([[0.1, 0.05], [0.3, 0.1], [0.2, 0.2], [0.7, 0.3], [0.9, 0.4], [0.8, 0.08]])
    thresholds = per_label_thresholds(val_labels, np.where(val_labels[:, [1]] < 2, val_probs, 0))
    assert 0.3 < thresholds[0] <= 0.7
    test_labels = np.array([[0, 0], [1, 1], [1, 0], [0, 1]])
    test_probs = np.array([[0.2, 0.01], [0.75, 0.5], [0.95, 0.02], [0.25, 0.25]])
    cfg = Config().eval.model_copy(update={"bootstrap": 0})
    m = multilabel_metrics(test_labels, test_probs, ["x", "y"], cfg, val_labels=val_labels, val_probabilities=val_probs)
    assert m["per_label"]["x"]["threshold"] == pytest.approx(thresholds[0])
    assert m["per_label"]["x"]["sensitivity"] == 1.0 and m["per_label"]["x"]["specificity"] == 1.0
    assert m["thresholds"]["source"].startswith("validation")


def test_regression_metrics_match_scikit_learn_and_interval_covers():
    rng = np.random.default_rng(1)
    truth = rng.uniform(12, 228, 2000)
    pred = truth + rng.normal(0, 10, truth.size)
    cfg = Config().eval.model_copy(update={"bootstrap": 200})
    m = regression_metrics(truth[:1000], pred[:1000], cfg, seed=0, train_mean=128.0,
                           val_true=truth[1000:], val_pred=pred[1000:], name="months")
    assert m["mean_absolute_error"] == pytest.approx(mean_absolute_error(truth[:1000], pred[:1000]))
    assert m["r2"] == pytest.approx(r2_score(truth[:1000], pred[:1000]))
    assert m["pearson_r"] == pytest.approx(np.corrcoef(truth[:1000], pred[:1000])[0, 1])
    assert m["root_mean_squared_error"] == pytest.approx(10, rel=0.1)
    assert m["mean_absolute_error_ci"][0] < m["mean_absolute_error"] < m["mean_absolute_error_ci"][1]
    # split-conformal 90 % interval of N(0, 10) errors: half-width about 1.645 sd, coverage about 0.9
    assert m["interval"]["half_width"] == pytest.approx(16.45, rel=0.1)
    assert 0.86 <= m["interval"]["coverage"] <= 0.94
    assert m["baseline"]["mean_absolute_error"] > 3 * m["mean_absolute_error"]


def test_conformal_half_width_small_sample():
    # 9 errors at level 0.9: ceil(10 * 0.9) / 9 = 1 -> the largest error
    assert conformal_half_width(np.zeros(9), np.arange(1, 10)) == 9
    assert conformal_half_width([], []) is None


def test_loss_and_monitor_must_fit_the_task(tmp_path):
    from medclf.errors import ConfigError
    csv = make_regression_csv(tmp_path / "rg", n=40)
    with pytest.raises(ConfigError, match="train.loss=bce does not fit data.task=regression"):
        plan_run(str(csv), None, ["data.label_columns=[radius]", "train.loss=bce"])
    with pytest.raises(ConfigError, match="train.monitor=val_map is not logged for data.task=regression"):
        plan_run(str(csv), None, ["data.label_columns=[radius]", "train.monitor=val_map"])
    assert plan_run(str(csv), None, ["data.label_columns=[radius]", "train.loss=l1"]).config.train.loss == "l1"


def test_finding_weights_follow_train_class_weights():
    """'auto': negatives / positives per finding (clamped); 'none': ones; a list: as given."""
    import torch

    from medclf.errors import ConfigError
    from medclf.training.tasks import pos_weight
    targets = torch.tensor([[1, 0, 0], [0, 0, 1], [0, 0, 1], [0, 0, 1]])  # 1, 0 and 3 positives of 4
    assert pos_weight(targets).tolist() == pytest.approx([3.0, 4.0, 1 / 3])  # no positive: as if one
    assert pos_weight(targets, "none").tolist() == [1.0, 1.0, 1.0]
    assert pos_weight(targets, [2.0, 1.0, 0.5]).tolist() == [2.0, 1.0, 0.5]
    with pytest.raises(ConfigError, match="2 weights given for 3 findings"):
        pos_weight(targets, [1.0, 1.0])
