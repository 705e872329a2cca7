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
    def count(model):
        return sum(p.numel() for p in model.parameters())
    assert count(wider) > count(base)
    assert any(isinstance(m, torch.nn.ELU) for m in wider.modules())
    assert wider(torch.randn(1, 3, 40, 40)).shape == (1, 2)


def test_maxpool_small_cnn_is_a_plain_vgg_style_network():
    """downsample=maxpool: stride-1 convolutions, a 2x max-pool ending each stage, the stem as
    the first convolution (the 73 K-parameter 3D reference CNN: 8-16-32-64, one block each)."""
    cfg = ModelConfig(spatial_dims=3, filters=[8, 16, 32, 64], blocks_per_stage=1, stem_kernel_size=3,
                      stem_stride=1, stem_pool=False, downsample="maxpool")
    model = create_model(cfg, 1, 2)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv3d)]
    pools = [m for m in model.modules() if isinstance(m, torch.nn.MaxPool3d)]
    assert [c.out_channels for c in convs] == [8, 16, 32, 64] and all(c.stride == (1, 1, 1) for c in convs)
    assert len(pools) == 4
    # 73,282 in the reference, which also has conv biases (64 + 32 + 16 + 8 = 120) that BatchNorm makes redundant
    assert sum(p.numel() for p in model.parameters()) == 73_282 - 120
    shapes = []
    model.features.register_forward_hook(lambda mod, inp, out: shapes.append(tuple(out.shape)))
    assert model(torch.randn(2, 1, 32, 32, 32)).shape == (2, 2) and shapes == [(2, 64, 2, 2, 2)]
    assert model(torch.randn(2, 1, 8, 8, 8)).shape == (2, 2)  # ceil_mode: 8 -> 4 -> 2 -> 1 -> 1
    vgg = create_model(ModelConfig(filters=[8, 16], blocks_per_stage=2, stem_stride=1, downsample="maxpool"), 1, 2)
    assert [type(m).__name__ for m in vgg.features] == ["Convolution", "Convolution", "MaxPool2d",
                                                         "Convolution", "Convolution", "MaxPool2d"]


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
