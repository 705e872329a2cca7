"""train.lr=auto: the LR range test before training, its number stored, weights untouched."""
from __future__ import annotations

import json
import math

import lightning as L
import pytest
import torch
import yaml

from medclf.cli import main
from medclf.commands.train import train
from medclf.config import validate
from medclf.models import create_model
from medclf.training import auto_lr, lr_range

FAST = ["train.max_epochs=1", "data.image_size=[32,32]", "model.filters=[8,16]", "train.batch_size=8"]


class InitialWeights(L.Callback):
    """Copies the module's state (parameters and buffers) when fitting starts."""

    state: dict | None = None

    def on_fit_start(self, trainer, pl_module):
        self.state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}


@pytest.fixture(scope="module")
def auto_run(tmp_path_factory):
    from conftest import make_dataset
    root = tmp_path_factory.mktemp("auto_lr")
    data = make_dataset(root / "data")
    seen = InitialWeights()
    result = train(data, out=root / "runs", name="auto", progress=False, overrides=FAST + ["train.lr=auto"],
                   callbacks=[seen])
    return data, result.run_dir, seen.state


def test_auto_lr_stores_a_number_a_plot_and_its_provenance(auto_run):
    _, run, _ = auto_run
    text = (run / "config.yaml").read_text()
    lr = yaml.safe_load(text)["train"]["lr"]
    assert isinstance(lr, float) and math.isfinite(lr)
    default = validate({}).train.lr
    assert lr != default and 1e-5 <= lr <= 1e-1  # the adaptive optimisers' clamp range
    assert text.startswith("# train.lr was 'auto'")
    assert validate(yaml.safe_load(text)).train.lr == lr  # the stored file is a valid, repeatable config
    record = json.loads((run / "provenance.json").read_text())["lr_auto"]
    assert record["requested"] == "auto" and record["lr"] == lr and not record["fallback"]
    assert record["suggestion"] == pytest.approx(lr, rel=5e-3)  # not clamped here: rounded to 3 digits
    assert (run / "lr_range_test.png").stat().st_size > 1000
    assert not list(run.rglob(".lr_find_*"))  # lr_find's temporary checkpoint is gone


def test_range_test_leaves_the_initial_weights_and_the_run_repeats(auto_run, tmp_path):
    data, run, auto_state = auto_run
    lr = yaml.safe_load((run / "config.yaml").read_text())["train"]["lr"]
    seen = InitialWeights()
    plain = train(data, out=tmp_path, name="plain", progress=False, overrides=FAST + [f"train.lr={lr!r}"],
                  callbacks=[seen]).run_dir
    assert not (plain / "lr_range_test.png").exists()
    assert auto_state.keys() == seen.state.keys()
    assert any("running_mean" in k for k in auto_state)  # batch-norm buffers are compared too
    for key, value in auto_state.items():
        assert torch.equal(value, seen.state[key]), key
    auto_losses = [line.split(",") for line in (run / "metrics.csv").read_text().splitlines()]
    plain_losses = [line.split(",") for line in (plain / "metrics.csv").read_text().splitlines()]
    header = auto_losses[0]
    column = header.index("train_loss")
    assert float(auto_losses[1][column]) == pytest.approx(float(plain_losses[1][column]), rel=1e-6)


def test_lightning_lr_find_restores_the_weights_itself(tiny_dataset):
    """Lightning 2.6's lr_find restores the model from its temporary checkpoint."""
    cfg = validate({"data": {"image_size": [32, 32]}, "model": {"filters": [8, 16]}, "train": {"batch_size": 8}})
    L.seed_everything(0, verbose=False)
    network = create_model(cfg.model, 1, 2)
    before = {k: v.clone() for k, v in network.state_dict().items()}
    images, labels = torch.rand(16, 1, 32, 32), torch.arange(16) % 2
    suggestion = lr_range.lr_range_test(network, images, labels, cfg, None, num_training=20, progress=False)
    assert suggestion is None or suggestion > 0
    for key, value in network.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_failed_range_test_falls_back_to_the_plan_and_restores_the_weights(monkeypatch, caplog):
    cfg = validate({"data": {"image_size": [32, 32]}, "model": {"filters": [8, 16]}, "train": {"lr": "auto"}})
    network = create_model(cfg.model, 1, 2)
    before = {k: v.clone() for k, v in network.state_dict().items()}

    def broken(model, *args, **kwargs):  # trains the weights, then dies, outside lr_find's own restore
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        model.eval()
        raise RuntimeError("boom")

    monkeypatch.setattr(auto_lr, "lr_range_test", broken)
    network.train()
    lr, record = auto_lr.choose_lr(cfg, network, torch.rand(8, 1, 32, 32), torch.arange(8) % 2, 2, None,
                                   fallback=2e-3)
    assert lr == 2e-3 and record["fallback"] and "boom" in record["reason"]
    assert "planned learning rate 0.002" in caplog.text
    assert network.training
    for key, value in network.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_resume_uses_the_stored_number_without_a_new_range_test(auto_run, monkeypatch):
    _, run, _ = auto_run
    lr = yaml.safe_load((run / "config.yaml").read_text())["train"]["lr"]
    (run / "test_metrics.json").unlink()  # as if killed after its last epoch, before the evaluation

    def forbidden(*args, **kwargs):
        raise AssertionError("--resume ran the LR range test again")

    monkeypatch.setattr(auto_lr, "lr_range_test", forbidden)
    result = train(None, resume=run, progress=False)
    assert result.metrics and yaml.safe_load((run / "config.yaml").read_text())["train"]["lr"] == lr


def test_bad_learning_rate_names_the_key_and_auto(tiny_dataset, capsys):
    assert main(["train", str(tiny_dataset), "--set", "train.lr=fast", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "train.lr" in err and "'auto'" in err and "'fast'" in err
