import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medclf.evaluation.metrics import classification_metrics


def test_metrics_on_a_hand_checked_example():
    # 3 classes; confusion matrix rows=true: [[3,1,0],[0,2,0],[1,0,3]]
    y_true = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 2])
    y_pred = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 0])
    probs = np.full((10, 3), 0.1)
    probs[np.arange(10), y_pred] = 0.8
    m = classification_metrics(y_true, probs, ["a", "b", "c"])
    assert m["confusion_matrix"] == [[3, 1, 0], [0, 2, 0], [1, 0, 3]]
    assert m["accuracy"] == pytest.approx(0.8)
    assert m["balanced_accuracy"] == pytest.approx((3 / 4 + 1 + 3 / 4) / 3)
    a = m["per_class"]["a"]
    assert a["sensitivity"] == pytest.approx(3 / 4)
    assert a["specificity"] == pytest.approx(5 / 6)  # 6 negatives, 1 predicted as a
    assert a["precision"] == pytest.approx(3 / 4)
    assert m["per_class"]["b"]["specificity"] == pytest.approx(7 / 8)
    assert m["per_class"]["c"]["support"] == 4
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y_true, probs / probs.sum(1, keepdims=True),
                                                       multi_class="ovr"))
    assert "precision" in m["classification_report"]


def test_binary_auc_uses_the_positive_class_and_missing_class_gives_nan():
    y = np.array([0, 0, 1, 1])
    p1 = np.array([0.1, 0.6, 0.4, 0.9])
    probs = np.stack([1 - p1, p1], axis=1)
    m = classification_metrics(y, probs, ["neg", "pos"])
    assert m["roc_auc"] == pytest.approx(0.75)
    only_one = classification_metrics(np.array([0, 0]), probs[:2], ["neg", "pos"])
    assert np.isnan(only_one["roc_auc"])


def test_per_class_auc_is_one_vs_rest_and_nan_for_an_absent_class():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 60)
    p = rng.dirichlet(np.ones(3), 60)
    m = classification_metrics(y, p, ["a", "b", "c"])
    for c, name in enumerate("abc"):
        assert m["roc_auc_per_class"][name] == pytest.approx(roc_auc_score(y == c, p[:, c]), abs=1e-12)
    lacking = classification_metrics(y[y != 1], p[y != 1], ["a", "b", "c"])
    assert np.isnan(lacking["roc_auc"]) and np.isnan(lacking["roc_auc_per_class"]["b"])
    assert lacking["roc_auc_per_class"]["a"] == pytest.approx(roc_auc_score(y[y != 1] == 0, p[y != 1, 0]))


def test_training_auc_is_torchmetrics_as_metrics_csv_always_recorded_it():
    # the per-epoch ROC AUC (tensors) keeps torchmetrics' float32 computation bit for bit
    import torch
    from torchmetrics.classification import MulticlassAUROC

    from medclf.training.module import epoch_metrics
    rng = np.random.default_rng(4)
    for k in (2, 3):
        logits = torch.tensor(rng.normal(size=(50, k)) * 0.01, dtype=torch.float32)
        labels = torch.tensor(rng.integers(0, k, 50))
        expected = float(MulticlassAUROC(num_classes=k, average="macro", thresholds=None)(logits.softmax(1), labels))
        got = epoch_metrics("train", [(logits, labels, torch.tensor(1.0))], k)["train_roc_auc"]
        assert got == expected


def test_rank_auc_equals_scikit_learn_with_ties_binary_and_multiclass():
    # the numpy path (Mann-Whitney ranks) must give scikit-learn's roc_auc_score, ties included
    from medclf.training.metrics import roc_auc
    rng = np.random.default_rng(7)
    checked = 0
    for k in (2, 3, 5):
        for _ in range(60):
            n = int(rng.integers(k + 1, 80))
            y = rng.integers(0, k, n)
            if len(np.unique(y)) < k:
                continue
            p = rng.dirichlet(np.ones(k), n)
            if k == 2:
                p[:, 1] = p[:, 1].round(1)  # many tied scores
                p[:, 0] = 1 - p[:, 1]
                expected = roc_auc_score(y, p[:, 1])
            else:
                p = p[rng.integers(0, n, n)]  # repeated rows: tied scores in every column
                expected = roc_auc_score(y, p, multi_class="ovr", average="macro", labels=list(range(k)))
            assert roc_auc(y, p) == pytest.approx(expected, abs=1e-12)
            checked += 1
    assert checked > 100
