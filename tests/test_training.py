"""Training pieces: class weights, optimisers and schedules, NaN detection, train-only augmentation."""
import pytest
import torch
from torch import nn

from medclf.cli import main
from medclf.config import Config, user_settings, validate
from medclf.data.datamodule import ImageDataModule
from medclf.models import register_model
from medclf.training.fit import class_weights
from medclf.training.module import Classifier, build_scheduler


def resolve(config_file=None, overrides=None):
    """The user's settings validated without a dataset plan (defaults for the rest)."""
    return validate(user_settings(config_file, overrides))



def test_auto_class_weights_are_inverse_frequency():
    labels = torch.tensor([0] * 90 + [1] * 10)
    weights = class_weights(labels, 2, "auto")
    assert torch.allclose(weights, torch.tensor([100 / (2 * 90), 100 / (2 * 10)]))
    assert class_weights(labels, 2, "none") is None
    assert torch.equal(class_weights(labels, 2, [1.0, 3.0]), torch.tensor([1.0, 3.0]))
    # the balanced sampler balances the batches: 'auto' then adds no weights, a list still counts
    assert class_weights(labels, 2, "auto", sampler="balanced") is None
    assert torch.equal(class_weights(labels, 2, [1.0, 3.0], sampler="balanced"), torch.tensor([1.0, 3.0]))


def test_balanced_sampler_draws_classes_equally_and_repeats_per_epoch():
    cfg = Config()
    cfg.train.sampler = "balanced"
    cfg.train.batch_size = 50
    labels = torch.tensor([0] * 900 + [1] * 100)
    images = torch.zeros(len(labels), 1, 4, 4)
    module = ImageDataModule({"train": (images, labels)}, cfg)
    order = list(module.train_dataloader().sampler)
    assert len(order) == len(labels)
    minority = float((labels[order] == 1).float().mean())
    assert 0.45 < minority < 0.55  # 10 % of the images, half of the draws
    assert len(set(order)) < len(labels)  # drawn with replacement
    assert order == list(module.train_dataloader().sampler)  # same epoch, same order
    cfg.train.sampler = "shuffle"
    shuffled = list(ImageDataModule({"train": (images, labels)}, cfg).train_dataloader().sampler)
    assert sorted(shuffled) == list(range(len(labels)))  # each image once


class FakeTrainer:
    estimated_stepping_batches = 100
    max_epochs = 10


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd", "rmsprop"])
@pytest.mark.parametrize("schedule", ["none", "step", "cosine", "plateau", "onecycle"])
def test_every_optimizer_and_schedule_builds_and_steps(optimizer, schedule):
    cfg = resolve(overrides=[f"train.optimizer={optimizer}", f"train.schedule={schedule}",
                             "train.lr=0.1", "train.warmup_epochs=2"])
    module = Classifier(nn.Linear(4, 2), 2, cfg.train)
    module.trainer = FakeTrainer()  # the scheduler only reads the step counts
    configured = module.configure_optimizers()
    optimizer_obj = configured["optimizer"] if isinstance(configured, dict) else configured
    assert type(optimizer_obj).__name__.lower() == optimizer
    sched = build_scheduler(optimizer_obj, cfg.train, FakeTrainer())
    if schedule == "none":
        assert sched is None
        return
    lrs = []
    for _ in range(30):
        optimizer_obj.step()
        if schedule == "plateau":
            sched["scheduler"].step(1.0)
        else:
            sched["scheduler"].step()
        lrs.append(optimizer_obj.param_groups[0]["lr"])
    if schedule in ("cosine", "onecycle"):
        assert lrs[0] < max(lrs)  # linear warm-up: 2 epochs = 20 steps
        assert max(lrs) == pytest.approx(0.1, rel=0.05)
    elif schedule == "plateau":
        assert lrs[-1] < 0.1  # no improvement -> decayed
    if optimizer == "sgd":
        assert optimizer_obj.param_groups[0]["nesterov"] is True


def _nan_model(cfg, in_channels, num_classes):
    class NanNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(in_channels, num_classes)

        def forward(self, x):
            return self.linear(x.mean(dim=(2, 3))) * float("nan")
    return NanNet()


@pytest.fixture
def nan_model():
    from medclf.models import registry
    register_model("test_nan_model")(_nan_model)
    yield "test_nan_model"
    registry._REGISTRY.pop("test_nan_model")


def test_nan_loss_stops_with_advice(tiny_dataset, tmp_path, capsys, nan_model):
    code = main(["train", str(tiny_dataset), "--out", str(tmp_path), "--no-progress",
                 "--set", f"model.name={nan_model}", "--set", "data.image_size=[32,32]"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "became nan" in err and "learning rate" in err and "normalis" in err


def test_augmentation_applies_to_training_only():
    cfg = Config()
    images = torch.rand(8, 1, 32, 32)
    labels = torch.tensor([0, 1] * 4)
    module = ImageDataModule({s: (images, labels) for s in ("train", "val", "test")}, cfg)
    train_ds = module.train_dataloader().dataset
    assert train_ds.transform is not None
    augmented = torch.stack([train_ds[0][0] for _ in range(5)])
    assert (augmented - images[0]).abs().amax() > 1e-3  # changed by augmentation
    for loader in (module.val_dataloader(), module.test_dataloader()):
        assert loader.dataset.transform is None
        assert torch.equal(loader.dataset[0][0], images[0])
    cfg.augment.enabled = False
    assert ImageDataModule({"train": (images, labels)}, cfg).train_dataloader().dataset.transform is None


@pytest.mark.parametrize("schedule", ["onecycle", "cosine"])
@pytest.mark.parametrize("steps", [1, 2, 3, 5])
def test_warmup_schedules_survive_very_short_runs(schedule, steps):
    cfg = resolve(overrides=[f"train.schedule={schedule}", "train.warmup_epochs=3"])
    trainer = FakeTrainer()
    trainer.estimated_stepping_batches, trainer.max_epochs = steps, 1
    optimizer = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    sched = build_scheduler(optimizer, cfg.train, trainer)
    for _ in range(steps):
        optimizer.step()
        if sched is not None:
            sched["scheduler"].step()
    assert 0 <= optimizer.param_groups[0]["lr"] <= 0.1  # no ZeroDivisionError, sane value
