"""Batch-norm statistics re-estimated on clean training images before validation."""
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn

from medclf.training.batchnorm import BN_IMAGES, CleanBatchNormStatistics, clean_batches, has_batch_norm


class Wrapped(L.LightningModule):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)


def _drawn(images, batch_size, labels=None, limit=BN_IMAGES):
    return torch.cat(list(clean_batches(images, batch_size, labels, limit)))


def test_balanced_draws_mix_the_classes_like_the_balanced_sampler_and_repeat():
    labels = torch.tensor([0] * 900 + [1] * 100)  # a split listed class by class, 9:1
    images = labels.float().view(-1, 1, 1, 1).expand(-1, 1, 2, 2).contiguous()  # each image holds its class
    drawn = _drawn(images, 64, labels)
    assert len(drawn) == BN_IMAGES
    share = drawn[:, 0, 0, 0].mean().item()
    assert 0.4 < share < 0.6  # about half of each class, not 10 % of class 1
    first_batch = next(clean_batches(images, 64, labels))[:, 0, 0, 0]
    assert 0 < first_batch.mean().item() < 1  # batches mix the classes
    assert torch.equal(drawn, _drawn(images, 64, labels))  # the same draws every time
    assert len(_drawn(images[:100], 64, labels[:100])) == 100  # never more draws than images


def test_without_the_balanced_sampler_a_shuffled_subset_without_repeats():
    images = torch.arange(1000.0).view(-1, 1, 1, 1)
    drawn = _drawn(images, 64)[:, 0, 0, 0]
    assert len(drawn) == BN_IMAGES and len(set(drawn.tolist())) == BN_IMAGES
    assert not torch.equal(drawn, drawn.sort().values)  # shuffled, not in the split's order
    small = _drawn(images[:100], 64)[:, 0, 0, 0]
    assert sorted(small.tolist()) == list(range(100))  # fewer images than the limit: each once


def test_the_hook_replaces_stale_running_statistics_with_those_of_the_drawn_clean_images():
    torch.manual_seed(0)
    images = torch.randn(600, 2, 8, 8) * torch.tensor([2.0, 0.5]).view(1, 2, 1, 1) + torch.tensor([3.0, -1.0]).view(1, 2, 1, 1)
    bn = nn.BatchNorm2d(2)
    bn.running_mean.fill_(100.0)  # stale statistics, e.g. of augmented batches or old weights
    bn.running_var.fill_(100.0)
    module = Wrapped(nn.Sequential(bn)).eval()
    trainer = SimpleNamespace(sanity_checking=False, current_epoch=0, max_epochs=3)
    CleanBatchNormStatistics(images, 64, last_epoch_only=True).on_validation_epoch_start(trainer, module)
    assert bn.running_mean.eq(100.0).all()  # a fold model: not before its last epoch
    trainer.current_epoch = 2
    CleanBatchNormStatistics(images, 64, last_epoch_only=True).on_validation_epoch_start(trainer, module)
    assert not bn.running_mean.eq(100.0).any()
    bn.running_mean.fill_(100.0)
    trainer.current_epoch = 0
    CleanBatchNormStatistics(images, 64).on_validation_epoch_start(trainer, module)
    drawn = _drawn(images, 64)
    # update_bn averages the per-batch statistics; with equal batches (512 = 8 x 64) the mean is exact
    np.testing.assert_allclose(bn.running_mean.numpy(), drawn.mean(dim=(0, 2, 3)).numpy(), rtol=1e-5)
    np.testing.assert_allclose(bn.running_var.numpy(), drawn.var(dim=(0, 2, 3)).numpy(), rtol=0.05)
    assert bn.momentum == 0.1 and not module.training  # momentum and evaluation mode restored


@pytest.mark.parametrize("model, expected", [
    (nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)), True),
    (nn.Sequential(nn.Conv3d(1, 2, 3), nn.BatchNorm3d(2, track_running_stats=False)), False),
    (nn.Sequential(nn.Conv2d(1, 2, 3), nn.GroupNorm(1, 2)), False),
])
def test_networks_without_running_statistics_are_left_alone(model, expected):
    assert has_batch_norm(model) is expected


def test_the_trainer_gets_the_callback_only_with_augmentation_and_after_weight_averaging(tmp_path):
    from lightning.pytorch.callbacks import EMAWeightAveraging

    from medclf.config import Config
    from medclf.training.fit import build_trainer
    cfg = Config()
    cfg.train.ema_epochs = 2.0
    train = (torch.zeros(10, 1, 8, 8), torch.tensor([0, 1] * 5))
    callbacks = build_trainer(cfg, tmp_path, False, 10, train).callbacks
    names = [type(c).__name__ for c in callbacks]
    assert names.index("CleanBatchNormStatistics") > names.index(EMAWeightAveraging.__name__)
    assert callbacks[names.index("CleanBatchNormStatistics")].last_epoch_only is False
    cfg.train.folds = 5  # fold models keep their last weights
    callbacks = build_trainer(cfg, tmp_path, False, 10, train).callbacks
    assert [c for c in callbacks if isinstance(c, CleanBatchNormStatistics)][0].last_epoch_only is True
    cfg.train.folds = 0
    cfg.augment.enabled = False
    assert "CleanBatchNormStatistics" not in [type(c).__name__ for c in build_trainer(cfg, tmp_path, False, 10, train).callbacks]
    cfg.augment.enabled, cfg.train.clean_bn_statistics = True, False
    assert "CleanBatchNormStatistics" not in [type(c).__name__ for c in build_trainer(cfg, tmp_path, False, 10, train).callbacks]
