"""Clinical metrics against independent computations (scikit-learn, scipy, torchmetrics)."""

import warnings

import numpy as np
import pytest
import torch
from scipy.stats import bootstrap
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, precision_score, recall_score, roc_auc_score
from torchmetrics.classification import BinaryCalibrationError, MulticlassCalibrationError

from medclf.config import EvalConfig
from medclf.evaluation.clinical import (
    _balanced_accuracy,
    apply_temperature,
    bootstrap_ci,
    calibration_error,
    choose_threshold,
    clinical_metrics,
    fit_temperature,
    roc_auc,
    tta_views,
)


def fixed_binary(n=300, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.35).astype(int)
    p1 = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0.001, 0.999)
    return y, np.stack([1 - p1, p1], axis=1)


def fixed_multiclass(n=240, k=3, seed=1):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[y]
    p = np.exp(logits)
    return y, p / p.sum(1, keepdims=True)


def test_per_class_sensitivity_specificity_ppv_npv_match_sklearn():
    y, p = fixed_multiclass()
    m = clinical_metrics(y, p, ["a", "b", "c"], EvalConfig(bootstrap=0))
    pred = p.argmax(1)
    for c, name in enumerate("abc"):
        truth, guess = y == c, pred == c
        assert m["per_class"][name]["sensitivity"] == pytest.approx(recall_score(truth, guess))
        assert m["per_class"][name]["specificity"] == pytest.approx(recall_score(~truth, ~guess))
        assert m["per_class"][name]["ppv"] == pytest.approx(precision_score(truth, guess))
        assert m["per_class"][name]["npv"] == pytest.approx(precision_score(~truth, ~guess))


def test_operating_point_metrics_at_the_threshold_match_sklearn():
    y_val, p_val = fixed_binary(seed=2)
    y, p = fixed_binary(seed=3)
    m = clinical_metrics(y, p, ["neg", "pos"], EvalConfig(bootstrap=0), val_labels=y_val, val_probabilities=p_val)
    op = m["operating_point"]
    t = op["threshold"]
    pred = (p[:, 1] >= t).astype(int)
    tn, fp, fn, tp = confusion_matrix(y, pred).ravel()
    assert op["per_class"]["pos"]["sensitivity"] == pytest.approx(tp / (tp + fn))
    assert op["per_class"]["pos"]["specificity"] == pytest.approx(tn / (tn + fp))
    assert op["per_class"]["pos"]["ppv"] == pytest.approx(tp / (tp + fp))
    assert op["per_class"]["pos"]["npv"] == pytest.approx(tn / (tn + fn))
    assert op["per_class"]["neg"]["sensitivity"] == pytest.approx(tn / (tn + fp))
    # Youden's J: no candidate threshold does better on the validation split
    def j(thr):
        q = p_val[:, 1] >= thr
        return q[y_val == 1].mean() + (~q)[y_val == 0].mean() - 1
    assert j(t) == pytest.approx(max(j(c) for c in np.unique(p_val[:, 1])))


def test_youden_tie_takes_the_midpoint_of_the_tied_thresholds():
    # validation: negatives 0.05 0.1 0.2 0.3, positives 0.25 0.7 0.8 0.95 (P = N = 4).
    # J at each threshold, from the top: 0.95 -> 1/4, 0.8 -> 2/4, 0.7 -> 3/4, 0.3 -> 3/4 - 1/4,
    # 0.25 -> 1 - 1/4 = 3/4, 0.2 -> 1/2, ...: J = 3/4 is reached at 0.7 and at 0.25.
    # argmax over roc_curve's order took 0.7; the midpoint is (0.7 + 0.25) / 2 = 0.475.
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    p = np.array([0.05, 0.1, 0.2, 0.3, 0.25, 0.7, 0.8, 0.95])
    t = choose_threshold(y, p, "youden")
    assert t == pytest.approx(0.475, abs=1e-12)
    predicted = p >= t  # 0.7, 0.8, 0.95: sensitivity 3/4, specificity 1, J still 3/4
    assert predicted[y == 1].mean() - predicted[y == 0].mean() == pytest.approx(0.75)
    # the same labels as booleans (how clinical_metrics calls it) give the same threshold
    assert choose_threshold(y == 1, p, "youden") == t
    # tied thresholds 0.9, 0.5 and 0.3 (J = 1/3) with lower J between them: the midpoint 0.6
    # is a negative's probability (J 0 there), so the tied threshold nearest to it, 0.5
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.35, 0.6, 0.3, 0.5, 0.9])
    assert choose_threshold(y, p, "youden") == pytest.approx(0.5, abs=1e-12)
    # a single optimum is kept as it is: J = 1/2 at 0.8, 1/3 at 0.35, less elsewhere
    assert choose_threshold(np.array([0, 0, 0, 1, 1]), np.array([0.1, 0.4, 0.5, 0.35, 0.8]), "youden") == 0.8


def test_target_sensitivity_threshold_reaches_the_target_on_validation():
    y, p = fixed_binary(seed=4)
    t = choose_threshold(y, p[:, 1], "target_sensitivity", 0.95)
    assert (p[y == 1, 1] >= t).mean() >= 0.95
    higher = np.unique(p[:, 1])[np.unique(p[:, 1]) > t]
    assert higher.size == 0 or (p[y == 1, 1] >= higher.min()).mean() < 0.95
    assert choose_threshold(y, p[:, 1], 0.3) == 0.3


def test_bootstrap_ci_agrees_with_scipy():
    y, p = fixed_binary(n=400, seed=5)
    ours = bootstrap_ci(y, p, roc_auc, resamples=1000, seed=0)
    ref = bootstrap((y, p[:, 1]), lambda a, b: roc_auc_score(a, b), paired=True, vectorized=False,
                    n_resamples=1000, method="percentile", rng=np.random.default_rng(0)).confidence_interval
    assert ours == pytest.approx([ref.low, ref.high], abs=1e-12)  # the same resamples, the same interval
    assert ours[0] < roc_auc(y, p) < ours[1]
    assert bootstrap_ci(y, p, roc_auc, resamples=1000, seed=0) == ours  # seeded
    other = bootstrap_ci(y, p, roc_auc, resamples=1000, seed=1)  # other resamples, about the same interval
    assert other != ours
    assert other[0] == pytest.approx(ours[0], abs=0.015) and other[1] == pytest.approx(ours[1], abs=0.015)
    narrow = bootstrap_ci(*fixed_binary(n=4000, seed=6), roc_auc, resamples=300, seed=0)
    assert narrow[1] - narrow[0] < ours[1] - ours[0]


def test_the_bootstrap_balanced_accuracy_is_scikit_learns():
    """The counted statistic of the balanced-accuracy intervals equals scikit-learn's on
    resamples that lack a class, predictions of a class absent from the labels, and 4 classes."""
    rng = np.random.default_rng(7)
    for trial in range(200):
        n, k = int(rng.integers(2, 40)), int(rng.integers(2, 5))
        y, predicted = rng.integers(0, k, n), rng.integers(0, k, n)
        if len(np.unique(y)) < 2:
            assert np.isnan(_balanced_accuracy(y, predicted)), trial
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # y_pred has a class that y_true lacks
            expected = balanced_accuracy_score(y, predicted)
        assert _balanced_accuracy(y, predicted) == pytest.approx(expected, abs=1e-12), (trial, y, predicted)
    names, guessed = np.array(["a", "b", "b", "c"]), np.array(["a", "b", "c", "c"])  # not class indices
    assert _balanced_accuracy(names, guessed) == pytest.approx(balanced_accuracy_score(names, guessed))
    assert _balanced_accuracy(np.array([0.0, 1.0, 1.0]), np.array([0.0, 0.0, 1.0])) == pytest.approx(0.75)
    y, p = fixed_multiclass(n=66, seed=3)
    interval = bootstrap_ci(y, p.argmax(1), _balanced_accuracy, resamples=300, seed=0)
    reference = bootstrap((y, p.argmax(1)), balanced_accuracy_score, paired=True, vectorized=False,
                          n_resamples=300, method="percentile", rng=np.random.default_rng(0)).confidence_interval
    assert interval == pytest.approx([reference.low, reference.high], abs=1e-12)


def test_bca_interval_is_scipys_bca():
    y, p = fixed_binary(n=120, seed=10)
    ours = bootstrap_ci(y, p, roc_auc, resamples=500, seed=3, method="bca")
    ref = bootstrap((y, p[:, 1]), lambda a, b: roc_auc_score(a, b), paired=True, vectorized=False,
                    n_resamples=500, method="BCa", rng=np.random.default_rng(3)).confidence_interval
    assert ours == pytest.approx([ref.low, ref.high], abs=1e-12)
    percentile = bootstrap_ci(y, p, roc_auc, resamples=500, seed=3)
    assert ours != percentile  # BCa shifts the interval of this skewed statistic
    with pytest.raises(ValueError, match="bootstrap method 'studentized'"):
        bootstrap_ci(y, p, roc_auc, resamples=10, method="studentized")


def test_bootstrap_skips_resamples_that_lack_a_class():
    # one positive among 30: about a third of the resamples have none, and no ROC AUC
    y = np.zeros(30, dtype=int)
    y[7] = 1
    p1 = np.linspace(0.05, 0.95, 30)
    p = np.stack([1 - p1, p1], axis=1)
    ours = bootstrap_ci(y, p, roc_auc, resamples=400, seed=2)
    # the rule by hand: the same resamples (numpy's generator, row indices with replacement),
    # the AUC of those with both classes, and the percentile interval of those values
    rng = np.random.default_rng(2)
    rows = [rng.integers(0, 30, 30) for _ in range(400)]
    values = [roc_auc_score(y[r], p1[r]) for r in rows if 0 < y[r].sum() < 30]
    assert 100 < 400 - len(values) < 200  # many resamples were skipped
    assert ours == pytest.approx(list(np.quantile(values, [0.025, 0.975])), abs=1e-12)
    assert np.isfinite(bootstrap_ci(y, p, roc_auc, resamples=400, seed=2, method="bca")).all()
    # no resample with both classes: no interval, as before
    assert bootstrap_ci(np.ones(5, dtype=int), p[:5], roc_auc, resamples=50) is None
    assert bootstrap_ci(y, p, roc_auc, resamples=0) is None
    # one row: every resample is that row
    assert bootstrap_ci(np.array([1]), np.array([0.25]), lambda a, b: float(b.mean()), resamples=5) == [0.25, 0.25]


def test_bootstrap_method_reaches_the_metrics():
    y, p = fixed_binary(n=150, seed=11)
    percentile = clinical_metrics(y, p, ["neg", "pos"], EvalConfig(bootstrap=200))
    bca = clinical_metrics(y, p, ["neg", "pos"], EvalConfig(bootstrap=200), bootstrap_method="bca")
    assert percentile["bootstrap"]["method"] == "percentile" and bca["bootstrap"]["method"] == "bca"
    assert percentile["roc_auc_ci"] == bootstrap_ci(y, p, roc_auc, 200, 0)
    assert bca["roc_auc_ci"] == bootstrap_ci(y, p, roc_auc, 200, 0, method="bca") != percentile["roc_auc_ci"]


def test_one_roc_auc_rule_for_evaluation_and_training():
    from medclf.evaluation.metrics import roc_auc as metrics_roc_auc
    from medclf.training.module import epoch_metrics
    from medclf.training.module import roc_auc as training_roc_auc
    assert roc_auc is metrics_roc_auc is training_roc_auc
    y, p = fixed_multiclass(n=90, seed=12)
    assert roc_auc(y, p) == pytest.approx(roc_auc_score(y, p, multi_class="ovr"), abs=1e-12)
    lacking = y != 2  # class 2 absent
    assert np.isnan(roc_auc(y[lacking], p[lacking]))
    assert np.isnan(roc_auc(np.zeros(4, dtype=int), np.full((4, 1), 1.0)))  # one class: no AUC
    logits = torch.log(torch.tensor(p, dtype=torch.float32))
    labels = torch.tensor(y)
    epoch = epoch_metrics("val", [(logits, labels, torch.tensor(1.0))], 3)
    assert epoch["val_roc_auc"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr"), abs=1e-5)
    epoch = epoch_metrics("val", [(logits[lacking], labels[lacking], torch.tensor(1.0))], 3)
    assert np.isnan(epoch["val_roc_auc"])


def test_ece_and_mce_match_torchmetrics():
    y, p = fixed_binary(seed=7)
    ours = calibration_error(y, p, bins=15)
    for norm, key in (("l1", "ece"), ("max", "mce")):
        ref = BinaryCalibrationError(n_bins=15, norm=norm)(torch.tensor(p[:, 1]), torch.tensor(y))
        assert ours[key] == pytest.approx(float(ref), abs=1e-6)
    y, p = fixed_multiclass(seed=8)
    ours = calibration_error(y, p, bins=10)
    for norm, key in (("l1", "ece"), ("max", "mce")):
        ref = MulticlassCalibrationError(num_classes=3, n_bins=10, norm=norm)(torch.tensor(p), torch.tensor(y))
        assert ours[key] == pytest.approx(float(ref), abs=1e-6)
    assert sum(b["count"] for b in ours["table"]) == len(y)


def test_temperature_scaling_recovers_the_temperature_and_lowers_ece():
    rng = np.random.default_rng(9)
    n, k = 3000, 3
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 1.2 * np.eye(k)[y]
    calibrated = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = np.array([rng.choice(k, p=row) for row in calibrated])  # labels drawn from the probabilities
    overconfident = apply_temperature(calibrated, 1 / 2.5)  # logits multiplied by 2.5
    t = fit_temperature(y[:1500], overconfident[:1500])
    assert t == pytest.approx(2.5, rel=0.15)
    before = calibration_error(y[1500:], overconfident[1500:])["ece"]
    after = calibration_error(y[1500:], apply_temperature(overconfident[1500:], t))["ece"]
    assert after < before / 2
    assert (apply_temperature(overconfident, t).argmax(1) == overconfident.argmax(1)).all()


def test_tta_views_shift_and_flip_2d_and_3d():
    x = torch.arange(2 * 1 * 8 * 8, dtype=torch.float32).reshape(2, 1, 8, 8)
    views = tta_views(x, flip=True, shift=0.25)
    assert len(views) == 6
    assert torch.equal(views[1], x.flip(-1))
    assert torch.equal(views[2][..., 2:, :], x[..., :-2, :])  # moved down by 2, edge repeated
    assert torch.equal(views[2][..., 0, :], x[..., 0, :])
    volume = torch.rand(1, 1, 4, 8, 8)
    assert all(v.shape == volume.shape for v in tta_views(volume, flip=False, shift=0.25))


def test_tta_views_flip_a_volume_along_every_combination_of_axes():
    volume = torch.rand(2, 1, 4, 6, 8)
    views = tta_views(volume, flip=(-1, -2, -3), shift=0.0)
    assert len(views) == 8
    expected = [volume] + [volume.flip(dims) for dims in
                           ([-1], [-2], [-3], [-1, -2], [-1, -3], [-2, -3], [-1, -2, -3])]
    for view, want in zip(views, expected):
        assert torch.equal(view, want)


def test_tta_flip_axes_follow_the_training_augmentation():
    from medclf.config import Config
    from medclf.evaluation.predict import tta_flip_axes
    cfg = Config()
    assert tta_flip_axes(cfg) == [-1]  # 2D default: left-right flips only
    volume = cfg.model_copy(update={
        "model": cfg.model.model_copy(update={"spatial_dims": 3}),
        "augment": cfg.augment.model_copy(update={"vertical_flip_prob": 0.5, "depth_flip_prob": 0.5})})
    assert tta_flip_axes(volume) == [-1, -2, -3]
    off = cfg.model_copy(update={"augment": cfg.augment.model_copy(update={"enabled": False})})
    assert tta_flip_axes(off) == []
