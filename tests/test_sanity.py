"""medclf sanity: passes on the real X-rays with defaults; diagnoses lr=10 and a dead network."""
import json

import pytest
import torch

from medclf.cli import main
from medclf.commands.sanity import sanity
from medclf.config import validate
from medclf.models import create_model

from conftest import COVID, require_data

SMALL = ["data.image_size=[64,64]"]


@pytest.fixture
def covid():
    return require_data(COVID)


def test_sanity_passes_on_covid_with_defaults(covid, tmp_path):
    report = sanity(covid, out=tmp_path, per_class=4, lr_test=False)
    assert report.passed, "\n".join(report.lines())
    names = [c.name for c in report.checks]
    assert names == ["forward", "initial loss", "gradient flow", "activations alive", "overfit small subset",
                     "stable loss"]
    assert "(12, 3)" in report.check("forward").detail  # 4 images of each of the 3 classes
    assert "training accuracy 100%" in report.check("overfit small subset").detail
    assert report.loss_curve[-1] < report.loss_curve[0] / 5
    saved = json.loads((report.out_dir / "sanity.json").read_text())
    assert saved["passed"] and len(saved["checks"]) == 6
    assert (report.out_dir / "plots" / "overfit_loss.png").is_file()


def test_learning_rate_of_10_is_diagnosed(covid):
    report = sanity(covid, overrides=SMALL + ["train.lr=10"], out=None, per_class=4, max_steps=40, lr_test=False)
    assert not report.passed
    stable = report.check("stable loss")
    assert not stable.passed
    assert any("learning rate too high: train.lr=10" in cause for cause in stable.causes)
    # the checks that do not depend on the learning rate still pass
    assert report.check("initial loss").passed and report.check("activations alive").passed


def test_dead_activations_are_diagnosed(covid, tmp_path):
    network = create_model(validate({}).model, 1, 3)
    for module in network.modules():  # every ReLU gets a large negative input: all dead
        if isinstance(module, torch.nn.BatchNorm2d):
            torch.nn.init.constant_(module.bias, -100.0)
    weights = tmp_path / "dead.pt"
    torch.save(network.state_dict(), weights)
    report = sanity(covid, overrides=SMALL + [f"model.weights={weights}"], out=None, per_class=4, max_steps=40,
                    lr_test=False)
    assert not report.passed
    alive = report.check("activations alive")
    assert not alive.passed and "100%" in alive.detail and "features.0.adn.A" in alive.detail
    assert any("dead activations (relu)" in cause for cause in alive.causes)
    assert not report.check("gradient flow").passed
    overfit = report.check("overfit small subset")
    assert not overfit.passed and any("dead activations" in cause for cause in overfit.causes)


def test_sanity_command_with_lr_range_test(tiny_dataset, tmp_path, capsys):
    code = main(["sanity", str(tiny_dataset), "--out", str(tmp_path), "--set", "data.image_size=[32,32]",
                 "--set", "model.filters=[8,16]", "--per-class", "6", "--steps", "100",
                 "--set", "train.lr=auto"])  # the checks then train at the planned rate
    out = capsys.readouterr().out
    assert code == 0, out
    assert "[PASS] overfit small subset" in out and "sanity: all checks passed" in out
    assert "suggested learning rate (LR range test)" in out
    assert "--set train.lr=auto" in out
    run = tmp_path / out.strip().splitlines()[-1].rsplit("/", 1)[-1]
    assert (run / "lr_range_test.png").stat().st_size > 1000
    assert 1e-6 <= json.loads((run / "sanity.json").read_text())["suggested_lr"] <= 1.0
