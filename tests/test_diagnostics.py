"""Training diagnostics: dead ReLU units, gradient-norm warnings, histogram outputs, architecture."""
import logging
from types import SimpleNamespace

import lightning as L
import pandas as pd
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from medclf.config import DiagnosticsConfig, TrainConfig
from medclf.diagnostics import GradNormMonitor, build_callbacks, write_architecture
from medclf.diagnostics.checks import activation_stats
from medclf.models.small_cnn import SmallCNN
from medclf.training.module import Classifier


def small_net(dead: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    net = SmallCNN(2, 1, 2, filters=[8, 16], norm="none", stem_stride=1)
    for module in net.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            torch.nn.init.constant_(module.bias, -50.0 if dead else 0.0)
    return net


def fit(net, tmp_path, **diagnostics):
    """Train ``net`` for 4 steps on random images with the diagnostics callbacks."""
    cfg = DiagnosticsConfig(enabled=True, every_n_steps=1, **diagnostics)
    images, labels = torch.rand(32, 1, 24, 24), torch.arange(32) % 2
    module = Classifier(net, 2, TrainConfig(schedule="none", lr=1e-3))
    trainer = L.Trainer(max_epochs=1, callbacks=build_callbacks(cfg, tmp_path), logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, num_sanity_val_steps=0, accelerator="cpu")
    trainer.fit(module, train_dataloaders=DataLoader(TensorDataset(images, labels), batch_size=8))
    return tmp_path / "diagnostics"


def test_dead_activation_fractions_of_a_batch():
    images = torch.rand(8, 1, 24, 24)
    dead = activation_stats(small_net(dead=True), images)
    healthy = activation_stats(small_net(dead=False), images)
    assert len(dead) == len(healthy) == 5  # stem and 4 stage blocks
    assert min(dead.values()) == 1.0
    assert max(healthy.values()) < 0.25


def test_dead_relu_units_are_reported_during_training(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="medclf"):
        out = fit(small_net(dead=True), tmp_path / "dead")
    frame = pd.read_csv(out / "dead_relu.csv")
    assert set(frame.step) == {0, 1, 2, 3}
    assert (frame.dead_fraction == 1.0).all()
    warned = [r.getMessage() for r in caplog.records if "are dead" in r.getMessage()]
    assert len(warned) == 5  # once per layer, not once per step
    assert "100% of the units of model.features.0.adn.A are dead" in (out / "warnings.txt").read_text()


def test_a_healthy_model_gives_no_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="medclf"):
        out = fit(small_net(dead=False), tmp_path / "healthy")
    assert not [r for r in caplog.records if r.name == "medclf"], [r.getMessage() for r in caplog.records]
    assert (out / "warnings.txt").read_text() == ""
    assert pd.read_csv(out / "dead_relu.csv").dead_fraction.max() < 0.25
    norms = pd.read_csv(out / "grad_norm.csv")
    assert list(norms.step) == [0, 1, 2, 3] and (norms.grad_norm > 0).all()


@pytest.mark.parametrize("scale, expected", [(1e6, "exploding gradients"), (1e-12, "vanishing gradients"),
                                             (float("nan"), "exploding gradients")])
def test_gradient_norm_warnings(tmp_path, caplog, scale, expected):
    net = torch.nn.Linear(4, 2)
    for p in net.parameters():
        p.grad = torch.full_like(p, scale)
    monitor = GradNormMonitor(tmp_path, DiagnosticsConfig())
    trainer = SimpleNamespace(global_step=7, loggers=[])
    with caplog.at_level(logging.WARNING, logger="medclf"):
        monitor.on_before_optimizer_step(trainer, net, None)
        monitor.on_before_optimizer_step(trainer, net, None)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and expected in messages[0] and "step 7" in messages[0]


def test_gradient_norm_is_the_global_l2_norm_of_every_gradient(tmp_path):
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    net[1].bias.requires_grad_(False)  # a parameter without a gradient is left out
    values = {}
    for i, p in enumerate(net.parameters()):
        if p.requires_grad:
            p.grad = torch.arange(p.numel(), dtype=torch.float32).reshape(p.shape) - i
            values[i] = p.grad.double().flatten().tolist()
    monitor = GradNormMonitor(tmp_path, DiagnosticsConfig())
    monitor.on_before_optimizer_step(SimpleNamespace(global_step=3, loggers=[]), net, None)
    expected = sum(v * v for grads in values.values() for v in grads) ** 0.5  # by hand, in float64
    (step, norm), = monitor.rows
    assert step == 3 and norm == pytest.approx(expected, rel=1e-6)
    clipped = torch.nn.utils.clip_grad_norm_([p for p in net.parameters() if p.requires_grad], 1e9)
    assert norm == float(clipped)  # the norm gradient clipping sees


def test_diagnostics_outputs_of_a_run(tiny_run):
    out = tiny_run / "diagnostics"
    stats = pd.read_csv(out / "stats.csv")
    assert set(stats.kind) == {"weights", "gradients", "activations"}
    steps = sorted(set(stats.step))
    assert steps[:2] == [0, 2] and len(steps) >= 3
    layers = set(stats.layer)
    assert {"model.features.0.conv", "model.head.2"} <= layers
    assert stats[stats.kind == "weights"].rel_change.notna().sum() > 0  # change between steps
    assert len(list((out / "steps").glob("step_*.png"))) == len(steps)
    for kind in ("weights", "gradients", "activations"):
        with Image.open(out / f"{kind}.gif") as gif:
            assert gif.n_frames == len(steps)
    assert Image.open(out / "summary.png").size[0] > 800
    norms = pd.read_csv(out / "grad_norm.csv")
    assert len(norms) > len(steps) and norms.grad_norm.gt(0).all()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(tiny_run / "tensorboard"), size_guidance={"histograms": 0}).Reload()
    assert "weights/model.features.0.conv" in events.Tags()["histograms"]
    assert "grad_norm" in events.Tags()["scalars"]


def test_architecture_files(tiny_run, tmp_path, monkeypatch, caplog):
    text = (tiny_run / "architecture.txt").read_text()
    assert "SmallCNN" in text and "(1, 16, 16, 16)" in text and "parameters:" in text
    with Image.open(tiny_run / "architecture.png") as graph:
        assert graph.height > 300
    monkeypatch.setenv("PATH", str(tmp_path))  # no Graphviz 'dot': only a warning
    with caplog.at_level(logging.WARNING, logger="medclf"):
        written = write_architecture(SmallCNN(2, 1, 2, filters=[4]), (1, 16, 16), tmp_path)
    assert [p.name for p in written] == ["architecture.txt"]
    assert "could not draw the architecture graph" in caplog.text
