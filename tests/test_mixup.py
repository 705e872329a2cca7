"""mixup (train.mixup_alpha): what the network sees, the loss it is trained on, and where it is refused."""
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from medclf.config import user_settings, validate
from medclf.errors import ConfigError
from medclf.training.module import Classifier


class Recorder(nn.Module):
    """A linear classifier on flattened images that keeps the last batch it was given."""

    def __init__(self, features: int, num_classes: int):
        super().__init__()
        self.linear = nn.Linear(features, num_classes)
        self.seen = None

    def forward(self, x):
        self.seen = x.detach().clone()
        return self.linear(x.flatten(1))


def _module(alpha: float, class_weights=None, label_smoothing=0.0):
    cfg = validate(user_settings(None, [f"train.mixup_alpha={alpha}", f"train.label_smoothing={label_smoothing}"]))
    torch.manual_seed(0)
    return Classifier(Recorder(3 * 4 * 4, 3), 3, cfg.train, class_weights)


def _batch(n=6):
    generator = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, 4, 4, generator=generator), torch.tensor([0, 1, 2, 0, 1, 2][:n])


@pytest.mark.parametrize("class_weights", [None, [1.0, 2.0, 4.0]])
def test_mixup_trains_on_mixed_images_with_the_mixed_loss(class_weights):
    weights = None if class_weights is None else torch.tensor(class_weights)
    module = _module(0.4, weights, label_smoothing=0.05)
    images, labels = _batch()
    torch.manual_seed(123)
    loss = module.training_step((images, labels), 0)
    # the same draws, repeated by hand: lam ~ Beta(0.4, 0.4) per image, then a permutation
    torch.manual_seed(123)
    lam = torch.distributions.Beta(0.4, 0.4).sample((6,))
    perm = torch.randperm(6)
    expected_images = lam.view(-1, 1, 1, 1) * images + (1 - lam).view(-1, 1, 1, 1) * images[perm]
    seen = module.model.seen
    assert torch.allclose(seen, expected_images, atol=1e-6)
    assert not torch.allclose(seen, images, atol=1e-3)  # the batch was really mixed
    logits = module.model.linear(expected_images.flatten(1))
    per_image = [F.cross_entropy(logits, y, weight=weights, reduction="none", label_smoothing=0.05)
                 for y in (labels, labels[perm])]
    w = torch.ones(3) if weights is None else weights
    expected = (lam * per_image[0] + (1 - lam) * per_image[1]).sum() \
        / (lam * w[labels] + (1 - lam) * w[labels[perm]]).sum()
    assert torch.allclose(loss, expected, atol=1e-6)


def test_without_mixup_the_network_sees_the_batch_as_is():
    module = _module(0.0)
    images, labels = _batch()
    module.training_step((images, labels), 0)
    assert torch.equal(module.model.seen, images)


def test_mixup_is_refused_for_regression(tmp_path):
    from types import SimpleNamespace

    from medclf.training.task_modules import build_module
    cfg = validate(user_settings(None, ["train.mixup_alpha=0.2", "train.loss=l1", "train.monitor=val_mae"]))
    manifest = SimpleNamespace(task="regression", num_classes=1, class_names=["age"])
    with pytest.raises(ConfigError, match="mixup_alpha=0.2.*regression"):
        build_module(nn.Linear(4, 1), manifest, cfg, torch.tensor([1.0, 2.0]))
