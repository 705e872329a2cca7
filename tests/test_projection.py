"""The projection branch: axis projections, the 2D multi-view network and its fusion with a 3D CNN."""
import numpy as np
import pytest
import torch

from medclf.config import ModelConfig
from medclf.errors import ConfigError
from medclf.explain.cam import Saliency, find_target_layer
from medclf.models import create_model, load_weights
from medclf.models.prior import apply_output_prior
from medclf.models.projection import ProjectionCNN, VolumeAndProjections, axis_projections

VOLUME_3D = dict(spatial_dims=3, filters=[8, 16], blocks_per_stage=1, stem_kernel_size=3, stem_stride=1,
                 stem_pool=False, downsample="maxpool", projection_filters=[8, 16])


def test_projections_are_thickness_and_silhouette_along_each_axis():
    volume = torch.zeros(1, 1, 10, 12, 14)
    volume[0, 0, 2:7, 3:5, 4:12] = 1  # a box 5 deep, 2 high, 8 wide
    along_depth, along_height, along_width = axis_projections(volume)
    assert along_depth.shape == (1, 2, 12, 14) and along_height.shape == (1, 2, 10, 14)
    assert along_width.shape == (1, 2, 10, 12)
    # channel 0: mean = thickness / side; channel 1: max = silhouette
    assert torch.allclose(along_depth[0, 0, 3, 4], torch.tensor(5 / 10))
    assert torch.allclose(along_height[0, 0, 2, 4], torch.tensor(2 / 12))
    assert torch.allclose(along_width[0, 0, 2, 3], torch.tensor(8 / 14))
    assert along_depth[0, 1].sum() == 2 * 8 and along_height[0, 1].sum() == 5 * 8
    assert along_width[0, 1].sum() == 5 * 2
    assert along_depth[0, 0, 0, 0] == 0 and along_depth[0, 1, 0, 0] == 0


def test_cubic_batched_pass_equals_one_pass_per_view():
    torch.manual_seed(0)
    net = ProjectionCNN(1, 3, filters=(8, 16)).eval()
    x = torch.rand(4, 1, 16, 16, 16)
    views = axis_projections(x)
    per_view = torch.cat([net.pool(net.features(v)).flatten(1) for v in views], 1)
    assert torch.allclose(net(x), net.head(per_view), atol=1e-6)
    assert net(torch.rand(2, 1, 8, 16, 12)).shape == (2, 3)  # non-cubic volumes take the loop


def test_fused_logits_are_the_mean_of_the_branches_and_the_3d_branch_sees_the_pooled_grid():
    torch.manual_seed(0)
    model = create_model(ModelConfig(**VOLUME_3D, projection_branch=True, volume_pool=1), 1, 2).eval()
    assert isinstance(model, VolumeAndProjections)
    seen = []
    model.volume.register_forward_pre_hook(lambda mod, args: seen.append(tuple(args[0].shape)))
    x = torch.rand(3, 1, 16, 16, 16)
    fused = model(x)
    assert seen == [(3, 1, 8, 8, 8)]
    expected = (model.projections(x) + model.volume(torch.nn.functional.max_pool3d(x, 2))) / 2
    assert torch.allclose(fused, expected, atol=1e-6)
    fused.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_projection_branch_on_images_is_a_config_error():
    with pytest.raises(ConfigError, match="model.projection_branch.*spatial_dims=3"):
        create_model(ModelConfig(projection_branch=True, spatial_dims=2), 1, 2)


def test_output_prior_shifts_the_fused_logits_by_the_full_shift():
    from medclf.config import TrainConfig
    torch.manual_seed(0)
    model = create_model(ModelConfig(**VOLUME_3D, projection_branch=True), 1, 2).eval()
    x = torch.rand(2, 1, 8, 8, 8)
    before = model(x).detach()
    shift = apply_output_prior(model, np.array([900, 100]), TrainConfig(sampler="balanced", output_prior="training"))
    after = model(x).detach()
    assert np.abs(shift).max() > 1  # log(0.9) - log(0.1), centred
    assert torch.allclose(after - before, torch.as_tensor(shift, dtype=after.dtype).expand_as(after), atol=1e-5)


def test_gradcam_explains_the_3d_branch_with_a_volume_heatmap():
    """The fused logit is half the 3D branch's plus a term that does not depend on the 3D
    features, so its Grad-CAM at ``volume.features`` is the 3D branch's own map."""
    torch.manual_seed(0)
    model = create_model(ModelConfig(**VOLUME_3D, projection_branch=True, volume_pool=1), 1, 2).eval()
    x = torch.rand(1, 1, 16, 16, 16)
    assert find_target_layer(model, x) == "volume.features"
    branch_alone = torch.nn.Sequential(model.shrink, model.volume)
    maps = [(np.asarray(Saliency(model)(x, c)), np.asarray(Saliency(branch_alone)(x, c))) for c in (0, 1)]
    for fused, alone in maps:
        assert fused.shape == (1, 16, 16, 16) and np.allclose(fused, alone, atol=1e-5)
    assert max(fused.max() for fused, _ in maps) > 0


def test_saved_weights_load_into_a_fresh_fused_network(tmp_path):
    torch.manual_seed(0)
    cfg = ModelConfig(**VOLUME_3D, projection_branch=True)
    trained = create_model(cfg, 1, 2).eval()
    torch.save(trained.state_dict(), tmp_path / "weights.pt")
    fresh = create_model(cfg.model_copy(update={"weights": str(tmp_path / "weights.pt")}), 1, 2).eval()
    x = torch.rand(2, 1, 8, 8, 8)
    assert torch.equal(trained(x), fresh(x))
    with pytest.raises(ConfigError, match="does not fit"):
        load_weights(create_model(ModelConfig(**VOLUME_3D), 1, 2), str(tmp_path / "weights.pt"))

