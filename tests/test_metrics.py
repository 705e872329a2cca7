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
