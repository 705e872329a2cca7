"""End to end on generated data with known answers: a multilabel set whose findings are
visible shapes, a regression set whose target is a visible disk radius; train, evaluate,
predict, explain."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from taskdata import FINDINGS, make_multilabel_csv, make_regression_csv, shapes_image

from medclf.commands.evaluate import evaluate_run
from medclf.commands.predict import predict_files
from medclf.commands.train import train
from medclf.explain import Explainer

SMALL = ["data.image_size=[32,32]", "model.filters=[8,16,32]", "train.batch_size=16", "eval.bootstrap=100",
         "augment.batched=true"]


@pytest.fixture(scope="module")
def multilabel_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("multilabel")
    csv = make_multilabel_csv(root / "data", n=160)
    result = train(str(csv), out=root / "runs", name="ml", progress=False, overrides=SMALL + [
        "data.path_column=file", "data.label_columns=[disk,bar,square]", "data.group_column=patient",
        "train.max_epochs=20"])
    return result, csv


@pytest.fixture(scope="module")
def regression_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("regression")
    csv = make_regression_csv(root / "data", n=160)
    result = train(str(csv), out=root / "runs", name="rg", progress=False,
                   overrides=SMALL + ["data.label_columns=[radius]", "data.task=regression", "train.max_epochs=12"])
    return result, csv


def test_multilabel_learns_the_shapes(multilabel_run):
    result, _ = multilabel_run
    m = result.metrics
    assert m["task"] == "multilabel" and m["class_names"] == list(FINDINGS)
    assert m["macro_roc_auc"] > 0.8, m["per_label"]
    assert m["map"] > m["baseline"]["map"] + 0.2
    assert m["per_label"]["bar"]["roc_auc"] > 0.9
    written = json.loads((result.run_dir / "test_metrics.json").read_text())
    assert written["map"] == pytest.approx(m["map"])
    assert (result.run_dir / "plots/roc_curves.png").is_file() and (result.run_dir / "plots/pr_curves.png").is_file()
    curves = pd.read_csv(result.run_dir / "metrics.csv")
    assert {"val_map", "val_roc_auc"} <= set(curves.columns)
    split = pd.read_csv(result.run_dir / "split.csv")
    assert split.groupby("patient_id").split.nunique().max() == 1


def test_multilabel_predict_and_evaluate_agree(multilabel_run):
    result, csv = multilabel_run
    test = pd.read_csv(result.run_dir / "predictions.csv")
    frame = predict_files(result.run_dir, list(test.path[:6]))
    assert [c for c in frame.columns if c.startswith("prob_")] == [f"prob_{n}" for n in FINDINGS]
    np.testing.assert_allclose(frame[[f"prob_{n}" for n in FINDINGS]].to_numpy(),
                               test[[f"prob_{n}" for n in FINDINGS]].to_numpy()[:6], atol=1e-5)
    _, again = evaluate_run(result.run_dir)
    assert again["macro_roc_auc"] == pytest.approx(result.metrics["macro_roc_auc"], abs=1e-6)


def test_gradcam_per_finding_points_at_its_shape(multilabel_run, tmp_path):
    result, _ = multilabel_run
    rng = np.random.default_rng(7)
    inside = {"disk": [], "bar": []}
    explainer = Explainer.from_run(result.run_dir)
    for i in range(4):
        image, masks = shapes_image({"disk": 1, "bar": 1, "square": 0}, rng)
        path = tmp_path / f"both{i}.png"
        Image.fromarray(image).save(path)
        for name in inside:
            heatmap = explainer.explain(str(path), class_name=name).heatmap
            own, other = masks[name], masks["bar" if name == "disk" else "disk"]
            inside[name].append(heatmap[own].mean() - heatmap[other].mean())
    # each finding's heatmap is brighter on its own shape than on the other one
    assert np.mean(inside["bar"]) > 0 and np.mean(inside["disk"]) > 0, inside


def test_regression_learns_the_radius(regression_run):
    result, _ = regression_run
    m = result.metrics
    assert m["task"] == "regression" and m["target"] == "radius"
    assert m["mean_absolute_error"] < 0.5 * m["baseline"]["mean_absolute_error"]
    assert m["r2"] > 0.7 and m["pearson_r"] > 0.85
    assert m["interval"]["half_width"] > 0 and m["interval"]["coverage"] >= 0.7
    for plot in ("plots/predicted_vs_true.png", "plots/bland_altman.png"):
        assert (result.run_dir / plot).is_file()
    assert {"val_mae", "val_r2"} <= set(pd.read_csv(result.run_dir / "metrics.csv").columns)


def test_regression_predict_gives_a_number_with_an_interval(regression_run):
    result, csv = regression_run
    test = pd.read_csv(result.run_dir / "predictions.csv")
    frame = predict_files(result.run_dir, list(test.path[:5]))
    half = result.metrics["interval"]["half_width"]
    np.testing.assert_allclose(frame.predicted, test.pred_radius[:5], atol=1e-3)
    np.testing.assert_allclose(frame.interval_high - frame.interval_low, 2 * half, rtol=1e-6)
    assert (frame.tta_sd >= 0).all() and frame.tta_views.eq(0).all()
    truth = pd.read_csv(csv).radius
    assert truth.min() - 3 < frame.predicted.min() and frame.predicted.max() < truth.max() + 3


def test_service_returns_findings_and_a_number_with_an_interval(multilabel_run, regression_run):
    from fastapi.testclient import TestClient

    from medclf.serve.app import create_app
    ml, ml_csv = multilabel_run
    rg, rg_csv = regression_run
    for run, csv in ((ml, ml_csv), (rg, rg_csv)):
        client = TestClient(create_app(run.run_dir.parent))
        image = csv.parent / pd.read_csv(csv).iloc[0, 0]
        with open(image, "rb") as f:
            answer = client.post(f"/api/runs/{run.run_dir.name}/predict", files={"file": ("x.png", f, "image/png")})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        if run is ml:
            assert body["task"] == "multilabel" and set(body["probabilities"]) == set(FINDINGS)
            assert body["findings"] == [n for n in FINDINGS if body["probabilities"][n] >= body["thresholds"][n]]
        else:
            low, high = body["interval"]
            assert body["task"] == "regression" and low < body["value"] < high


def test_gradcam_of_the_regression_output_points_at_the_disk(regression_run, tmp_path):
    from taskdata import disk_image
    result, _ = regression_run
    explainer = Explainer.from_run(result.run_dir)
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:32, :32]
    margins = []
    for i in range(3):
        image = disk_image(9.0, rng)
        path = tmp_path / f"disk{i}.png"
        Image.fromarray(image).save(path)
        explanation = explainer.explain(str(path))
        assert set(explanation.probabilities) == {"radius"}  # the predicted value, in pixels
        assert 5 < explanation.probabilities["radius"] < 13
        disk = image > 120
        margins.append(explanation.heatmap[disk].mean() - explanation.heatmap[~disk].mean())
    assert np.mean(margins) > 0, margins
