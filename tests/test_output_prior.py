"""train.output_prior: the logits of a balanced-trained network shifted back to the training
prevalence (post-hoc logit adjustment), the same in training's test metrics and in every
later consumer of the weights."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

import medclf
from medclf import rundir
from medclf.config import Config, ModelConfig, TrainConfig
from medclf.data.preprocess import preprocess_all
from medclf.errors import ConfigError
from medclf.evaluation.predict import load_model
from medclf.models import create_model
from medclf.models.prior import apply_output_prior, fit_output_bias, logit_shift, trained_prior
from medclf.plan import plan_config

from conftest import make_dataset


def test_trained_prior_follows_sampler_and_class_weights():
    counts = [300, 100]
    assert trained_prior(counts, TrainConfig(sampler="balanced")) == pytest.approx([0.5, 0.5])
    assert trained_prior(counts, TrainConfig(class_weights="auto")) == pytest.approx([0.5, 0.5])
    assert trained_prior(counts, TrainConfig(class_weights="none")) == pytest.approx([0.75, 0.25])
    assert trained_prior(counts, TrainConfig(class_weights=[1.0, 2.0])) == pytest.approx([0.6, 0.4])


def test_shifted_probabilities_are_the_bayes_update_to_the_training_prevalence():
    counts = np.array([300, 100, 50])
    cfg = TrainConfig(sampler="balanced", output_prior="training")
    torch.manual_seed(0)
    model = create_model(ModelConfig(filters=[8, 16], blocks_per_stage=1), 1, 3).eval()
    x = torch.rand(16, 1, 32, 32)
    with torch.no_grad():
        before = model(x).softmax(1).numpy()
        shift = apply_output_prior(model, counts, cfg)
        after = model(x).softmax(1).numpy()
    prior = counts / counts.sum()
    expected = before * prior / 3  # Saerens et al. 2002: p'(c|x) is proportional to p(c|x) * prior'(c) / prior(c)
    expected /= expected.sum(1, keepdims=True)
    np.testing.assert_allclose(after, expected, atol=1e-5)
    assert shift.sum() == pytest.approx(0, abs=1e-9)
    # nothing to shift when the outputs already assume the prior training optimised for
    assert not logit_shift(counts, TrainConfig(sampler="balanced")).any()
    assert not logit_shift(counts, TrainConfig(class_weights="none", output_prior="training")).any()


def test_a_network_without_a_final_linear_bias_is_named():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2, bias=False))
    with pytest.raises(ConfigError, match="output_prior.*Sequential"):
        apply_output_prior(model, [30, 10], TrainConfig(sampler="balanced", output_prior="training"))


@pytest.mark.parametrize("train_counts, output_prior", [
    ({"a": 300, "b": 100}, "training"),   # 3:1, mild: the training prevalence
    ({"a": 111, "b": 70, "c": 70}, "training"),
    ({"a": 400, "b": 100}, "balanced"),   # 4:1: strong
    ({"a": 3494, "b": 388}, "balanced"),  # the PneumoniaMNIST copy
])
def test_plan_shifts_outputs_back_under_mild_imbalance_only(train_counts, output_prior):
    plan = plan_config({"spatial_dims": 2, "median_size": [28, 28], "readers": {"image": 1},
                        "counts": {"train": train_counts}})
    assert Config.model_validate(plan).train.output_prior == output_prior


def test_training_predict_and_evaluate_agree_on_shifted_outputs(tmp_path):
    root = make_dataset(tmp_path / "d", per_class=(24, 8))  # 3:1: balanced batches, then the shift
    run = medclf.train(root, overrides=["train.max_epochs=2", "data.image_size=[32,32]", "model.filters=[8,16]",
                                        "train.batch_size=8", "eval.bootstrap=0"],
                       out=tmp_path / "runs", name="r", progress=False).run_dir
    loaded = rundir.load_run(run)
    assert loaded.config.train.sampler == "balanced" and loaded.config.train.output_prior == "training"
    predictions = pd.read_csv(run / "predictions.csv")
    names = loaded.class_names
    fresh = medclf.predict(run, list(predictions.path))
    np.testing.assert_allclose(fresh[[f"prob_{n}" for n in names]].to_numpy(),
                               predictions[[f"prob_{n}" for n in names]].to_numpy(), atol=1e-5)
    metrics = json.loads((run / "test_metrics.json").read_text())
    _, again = medclf.evaluate(run)
    assert again["accuracy"] == pytest.approx(metrics["accuracy"]) and again["roc_auc"] == pytest.approx(metrics["roc_auc"])
    # the shift is what separates these outputs from the balanced ones
    balanced = rundir.load_run(run)
    balanced.config.train.output_prior = "balanced"
    images = torch.from_numpy(np.stack(preprocess_all(list(predictions.path), loaded.config)[0]))
    with torch.no_grad():
        p_shifted = load_model(loaded)(images).softmax(1).numpy()
        p_balanced = load_model(balanced)(images).softmax(1).numpy()
    counts = np.array([(pd.read_csv(run / "split.csv").query("split == 'train'").label == n).sum() for n in names])
    expected = p_balanced * counts
    expected /= expected.sum(1, keepdims=True)
    np.testing.assert_allclose(p_shifted, expected, atol=1e-5)


def _validation(n=400, offset=0.0, prevalence_logit=0.0, seed=0):
    """Binary validation set drawn from a known model: true logit z ~ N(prevalence_logit, 2),
    label ~ Bernoulli(sigmoid(z)); the reported probabilities use z + offset."""
    rng = np.random.default_rng(seed)
    z = rng.normal(prevalence_logit, 2.0, n)
    labels = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(int)
    p = 1 / (1 + np.exp(-(z + offset)))
    return np.stack([1 - p, p], axis=1), labels, z


def test_output_bias_leaves_a_calibrated_network_alone():
    probabilities, labels, _ = _validation()
    counts = np.bincount(labels) * 5  # the training split shows the validation's prevalence
    fitted = fit_output_bias(probabilities, labels, counts, TrainConfig(output_prior="training"))
    assert fitted["shift"] is None and fitted["p_value"] > 0.05 and fitted["n"] == 400


def test_output_bias_undoes_an_offset_that_validation_shows():
    probabilities, labels, z = _validation(offset=2.0)  # calls far too many images positive
    counts = np.bincount(labels) * 5
    fitted = fit_output_bias(probabilities, labels, counts, TrainConfig(output_prior="training"))
    assert fitted["p_value"] < 1e-6
    assert fitted["shift"] == pytest.approx([1.0, -1.0], abs=0.3)  # -2 on the positive logit, centred
    log_p = np.log(probabilities) + fitted["shift"]
    accuracy = ((log_p[:, 1] > log_p[:, 0]) == labels).mean()
    assert accuracy == pytest.approx(((z > 0) == labels).mean(), abs=0.02)
    assert accuracy > ((probabilities[:, 1] > 0.5) == labels).mean() + 0.05
    # the fit maximises the likelihood: no bias on a grid does better
    def nll(b):
        q = 1 / (1 + np.exp(-(np.log(probabilities[:, 1] / probabilities[:, 0]) + b)))
        return -np.mean(labels * np.log(q) + (1 - labels) * np.log(1 - q))
    found = fitted["shift"][1] - fitted["shift"][0]
    assert nll(found) <= min(nll(b) for b in np.linspace(-4, 4, 801)) + 1e-6


def test_output_bias_converts_to_the_balanced_prior():
    """Outputs calibrated to a 1-in-5 prevalence, while train.output_prior asks for a balanced
    prior: the kept shift is log(0.5 / 0.8), log(0.5 / 0.2), centred."""
    probabilities, labels, _ = _validation(n=2000, prevalence_logit=-2.0, seed=1)
    prevalence = labels.mean()
    counts = np.bincount(labels) * 5
    fitted = fit_output_bias(probabilities, labels, counts, TrainConfig(output_prior="balanced"))
    half = np.log((1 - prevalence) / prevalence) / 2
    assert fitted["shift"] == pytest.approx([-half, half], abs=0.15)


def test_a_kept_output_bias_is_stored_and_applied_by_every_later_load(tmp_path, monkeypatch):
    import medclf.commands.train as train_command
    fitted = {"shift": [0.7, -0.7], "likelihood_ratio": 30.0, "p_value": 1e-7, "n": 8}
    monkeypatch.setattr(train_command, "fit_output_bias", lambda *args, **kwargs: dict(fitted))
    root = make_dataset(tmp_path / "d", per_class=(12, 12))
    common = ["train.max_epochs=1", "data.image_size=[32,32]", "model.filters=[8,16]", "train.batch_size=8",
              "eval.bootstrap=0", "train.folds=0"]
    run = medclf.train(root, overrides=common, out=tmp_path / "runs", name="r", progress=False).run_dir
    assert json.loads((run / rundir.DATASET).read_text())["output_bias"] == [0.7, -0.7]
    assert json.loads((run / "test_metrics.json").read_text())["output_bias"]["p_value"] == 1e-7
    loaded = rundir.load_run(run)
    assert loaded.config.train.output_bias == "validation"
    predictions = pd.read_csv(run / "predictions.csv")
    columns = [f"prob_{n}" for n in loaded.class_names]
    fresh = medclf.predict(run, list(predictions.path))
    np.testing.assert_allclose(fresh[columns].to_numpy(), predictions[columns].to_numpy(), atol=1e-5)
    # the stored shift is what separates them from the run's outputs without it
    facts = json.loads((run / rundir.DATASET).read_text())
    del facts["output_bias"]
    (run / rundir.DATASET).write_text(json.dumps(facts))
    images = torch.from_numpy(np.stack(preprocess_all(list(predictions.path), loaded.config)[0]))
    with torch.no_grad():
        without = load_model(rundir.load_run(run))(images).log_softmax(1).numpy()
    expected = torch.from_numpy(without + np.array([0.7, -0.7])).softmax(1).numpy()
    np.testing.assert_allclose(predictions[columns].to_numpy(), expected, atol=1e-5)
