"""Every registered model: forward shape and a backward pass, in 2D and (some) 3D."""
import pytest
import torch

from medclf.config import ModelConfig
from medclf.errors import ConfigError
from medclf.models import available_models, create_model


@pytest.mark.parametrize("name", available_models())
def test_forward_backward_2d(name):
    cfg = ModelConfig(name=name, spatial_dims=2)
    model = create_model(cfg, in_channels=1, num_classes=3)
    x = torch.randn(2, 1, 64, 64)
    logits = model(x)
    assert logits.shape == (2, 3)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", ["small_cnn", "resnet18", "densenet121"])
def test_forward_3d(name):
    model = create_model(ModelConfig(name=name, spatial_dims=3, filters=[8, 16]), 1, 2)
    assert model(torch.randn(2, 1, 32, 32, 32)).shape == (2, 2)


def test_small_cnn_options_change_the_network():
    base = create_model(ModelConfig(filters=[8, 16], blocks_per_stage=1), 3, 2)
    wider = create_model(ModelConfig(filters=[8, 32], blocks_per_stage=2, kernel_size=5,
                                     activation="elu", norm="instance"), 3, 2)
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert count(wider) > count(base)
    assert any(isinstance(m, torch.nn.ELU) for m in wider.modules())
    assert wider(torch.randn(1, 3, 40, 40)).shape == (1, 2)


def test_init_schemes_differ_and_weights_load(tmp_path):
    torch.manual_seed(0)
    he = create_model(ModelConfig(init="he", filters=[8, 16]), 1, 2)
    torch.manual_seed(0)
    xavier = create_model(ModelConfig(init="xavier", filters=[8, 16]), 1, 2)
    w_he = he.features[0].conv.weight
    w_x = xavier.features[0].conv.weight
    assert not torch.allclose(w_he, w_x)
    path = tmp_path / "weights.pt"
    torch.save(he.state_dict(), path)
    loaded = create_model(ModelConfig(init="xavier", filters=[8, 16], weights=str(path)), 1, 2)
    assert torch.equal(loaded.features[0].conv.weight, w_he)
    with pytest.raises(ConfigError, match="does not fit"):
        create_model(ModelConfig(filters=[8, 32], weights=str(path)), 1, 2)
    with pytest.raises(ConfigError, match="not found"):
        create_model(ModelConfig(weights=str(tmp_path / "nope.pt")), 1, 2)


def test_unknown_model_lists_available():
    with pytest.raises(ConfigError, match="resnet50"):
        create_model(ModelConfig(name="vgg99"), 1, 2)


@pytest.mark.parametrize("init", ["he", "xavier", "default"])
def test_initial_loss_is_close_to_log_num_classes(init):
    torch.manual_seed(0)
    model = create_model(ModelConfig(init=init), 1, 3).eval()
    logits = model(torch.rand(16, 1, 64, 64))
    loss = torch.nn.functional.cross_entropy(logits, torch.randint(0, 3, (16,)))
    assert abs(loss.item() - torch.log(torch.tensor(3.0)).item()) < 0.5
