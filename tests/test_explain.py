"""Grad-CAM localisation in 2D and 3D, target layers, and `medclf explain` on a run."""
import functools

import numpy as np
import pytest
import torch

from medclf.cli import main
from medclf.config import Config
from medclf.explain import Explainer, explain_image, find_target_layer, saliency

from blobs import blob_images, iou, train_blob_model

# (spatial_dims, size, blob radius, training images, epochs)
SETTINGS = {2: (2, 32, 4, 128, 5), 3: (3, 16, 3, 80, 5)}


@functools.lru_cache(maxsize=None)
def trained(dims: int):
    """``(dims, size, radius, model)``: a model trained once per test session."""
    _, size, radius, n, epochs = SETTINGS[dims]
    return dims, size, radius, train_blob_model(dims, size, radius, n, epochs)


@pytest.fixture(params=[2, 3], ids=["2d", "3d"])
def blob_model(request):
    return trained(request.param)


def test_gradcam_localises_the_blob(blob_model):
    dims, size, radius, model = blob_model
    images, labels, masks = blob_images(60, dims, size, radius, seed=1)
    with torch.no_grad():
        accuracy = float((model(images).argmax(1) == labels).float().mean())
    assert accuracy >= 0.9, "the tiny model did not learn the blob"
    chosen = np.flatnonzero(labels.numpy() == 1)[:20]
    assert len(chosen) == 20
    heatmaps = saliency(model, images[chosen], 1, "gradcam")
    assert heatmaps.shape == (20, *[size] * dims)
    assert heatmaps.min() >= 0 and heatmaps.max() <= 1
    scores = [iou(h, m, threshold=0.6) for h, m in zip(heatmaps, masks[chosen])]
    assert np.mean(scores) >= 0.5, f"mean IoU {np.mean(scores):.3f} (per image: {np.round(scores, 2)})"
    # a heatmap is not the blob everywhere: random positions give a low IoU
    shuffled = [iou(h, m) for h, m in zip(heatmaps, np.roll(masks[chosen], 1, axis=0))]
    assert np.mean(shuffled) < 0.3


def test_gradcampp_and_occlusion_peak_on_the_blob(blob_model):
    dims, size, radius, model = blob_model
    images, labels, masks = blob_images(8, dims, size, radius, seed=2)
    chosen = np.flatnonzero(labels.numpy() == 1)[:3]
    # occlusion runs the model once per box position: in 3D that is too slow for a unit test
    for method in ("gradcampp", "occlusion") if dims == 2 else ("gradcampp",):
        heatmaps = saliency(model, images[chosen], 1, method)
        for heat, mask in zip(heatmaps, masks[chosen]):
            peak = np.unravel_index(np.argmax(heat), heat.shape)
            distance = np.linalg.norm(np.array(peak) - np.argwhere(mask).mean(axis=0))
            assert distance <= 2 * radius, f"{method}: maximum {peak} is {distance:.1f} from the blob"


def evidence_net_3d() -> torch.nn.Module:
    """1x1x1 convolution (weight 1) -> ReLU -> global average -> logits (-x, +x): the evidence for
    class 1 ('blob') is exactly the bright voxels, so its Grad-CAM peaks on the brightest spot."""
    conv = torch.nn.Conv3d(1, 1, 1, bias=False)
    head = torch.nn.Linear(1, 2, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)
        head.weight.copy_(torch.tensor([[-1.0], [1.0]]))
    return torch.nn.Sequential(conv, torch.nn.ReLU(), torch.nn.AdaptiveAvgPool3d(1), torch.nn.Flatten(),
                               head).eval()


def test_volume_heatmap_lines_up_with_the_blob_on_every_axis(tmp_path):
    """A NIfTI volume whose affine is neither identity nor RAS holds one bright blob, off-centre
    and at a different place on each axis; the model's evidence is that blob. The heatmap's
    maximum must lie on the blob along EACH axis, on the model's grid (RAS+, as the model saw
    the volume) and in the written NIfTI heatmap, mapped back into the input volume's voxels.

    Tolerance: 3 voxels of the 32-voxel grid per axis (3/32 of the axis in the written NIfTI).
    A peak at a uniformly random voxel passes one axis with p <= 7/32 and all three with
    p <= (7/32)^3 ~ 1.0 %."""
    import io

    import nibabel as nib
    from PIL import Image

    from medclf.explain import write_heatmap_nifti
    grid, tolerance = 32, 3
    # stored axes: 0 -> inferior (2 mm), 1 -> left (0.8 mm), 2 -> anterior (1 mm): RAS+ reading
    # permutes the axes to (1, 2, 0) and flips two of them
    affine = np.array([[0.0, -0.8, 0.0, 20.0], [0.0, 0.0, 1.0, -30.0], [-2.0, 0.0, 0.0, 40.0],
                       [0.0, 0.0, 0.0, 1.0]])
    stored_shape = np.array([24, 40, 48])
    blob = np.array([4.0, 29.0, 31.0])  # stored voxel indices: (0.26, 0.66, 0.81) of RAS+ (X, Y, Z)
    rng = np.random.default_rng(0)
    volume = rng.normal(100, 20, stored_shape)
    grids = np.meshgrid(*[np.arange(n) for n in stored_shape], indexing="ij")
    volume += 1500 * np.exp(-sum((g - c) ** 2 for g, c in zip(grids, blob)) / (2 * 2.0 ** 2))
    path = tmp_path / "case.nii.gz"
    nib.save(nib.Nifti1Image(volume.astype(np.int16), affine), path)

    # where the blob is in the model's RAS+ grid, from nibabel's own reorientation
    canonical = nib.as_closest_canonical(nib.load(path))
    ras_blob = (np.linalg.inv(canonical.affine) @ affine @ [*blob, 1])[:3]
    ras_shape = np.array(canonical.shape)
    expected = (ras_blob + 0.5) * grid / ras_shape - 0.5  # voxel centres, resized to the grid
    fractions = (expected + 0.5) / grid
    assert np.all(np.abs(np.diff(np.sort(fractions))) > 0.1)  # a different place on each axis
    assert np.all(np.abs(fractions - 0.5) * grid > tolerance)  # and off-centre by more than the tolerance
    not_reoriented = (blob + 0.5) * grid / stored_shape - 0.5
    assert np.abs(not_reoriented - expected).max() > tolerance  # reading it RAS+ matters: not doing so fails

    cfg = Config.model_validate({"model": {"spatial_dims": 3}, "data": {"image_size": [grid] * 3}})
    result = Explainer(evidence_net_3d(), cfg, ["empty", "blob"]).explain(path, "blob")
    assert result.heatmap.shape == (grid,) * 3
    peak = np.array(np.unravel_index(np.argmax(result.heatmap), result.heatmap.shape))
    assert np.all(np.abs(peak - expected) <= tolerance), f"heatmap peak {peak}, blob at {expected.round(1)}"
    figure = Image.open(io.BytesIO(result.png))
    assert figure.height > figure.width * 0.8  # three rows: axial, coronal, sagittal

    # the written heatmap: the RAS+ shape and affine, and its peak maps onto the input's blob
    saved = nib.load(str(write_heatmap_nifti(result, tmp_path / "heat.nii.gz")))
    assert saved.shape == tuple(ras_shape)
    np.testing.assert_allclose(saved.affine, canonical.affine)
    heat = np.asarray(saved.dataobj)
    saved_peak = np.unravel_index(np.argmax(heat), heat.shape)
    in_input = (np.linalg.inv(affine) @ saved.affine @ [*saved_peak, 1])[:3]  # input voxel indices
    allowed = tolerance * stored_shape / grid
    assert np.all(np.abs(in_input - blob) <= allowed), \
        f"NIfTI heatmap peak at input voxel {in_input.round(1)}, blob at {blob}, allowed {allowed}"


def test_target_layer_is_the_last_convolutional_block():
    from monai.networks.nets import DenseNet121, resnet18

    from medclf.models.small_cnn import SmallCNN
    assert find_target_layer(SmallCNN(2, 1, 2, filters=[8, 16]), torch.zeros(1, 1, 32, 32)) == "features"
    assert find_target_layer(resnet18(spatial_dims=2, n_input_channels=1, num_classes=2),
                             torch.zeros(1, 1, 32, 32)) == "layer4"
    assert find_target_layer(DenseNet121(spatial_dims=2, in_channels=1, out_channels=2),
                             torch.zeros(1, 1, 32, 32)) == "features"
    assert find_target_layer(SmallCNN(3, 1, 2, filters=[4]), torch.zeros(1, 1, 8, 8, 8)) == "features"


def test_explain_image_on_a_run(tiny_run):
    image = next((tiny_run.parent.parent / "data" / "test" / "disk").glob("*.png"))
    probabilities, heatmap, png = explain_image(tiny_run, image)
    assert set(probabilities) == {"bar", "disk"}
    assert abs(sum(probabilities.values()) - 1) < 1e-5
    assert heatmap.shape == (32, 32) and 0 <= heatmap.min() and heatmap.max() <= 1
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    result = explain_image(tiny_run, np.asarray(__import__("PIL.Image").Image.open(image)),
                           class_name="bar", method="gradcampp", target_layer="features.2")
    assert result.class_name == "bar" and result.heatmap.shape == (32, 32)


def test_explain_command_writes_figures(tiny_run, tmp_path, capsys):
    images = sorted((tiny_run.parent.parent / "data" / "test").glob("*/*.png"))[:2]
    out = tmp_path / "explained"
    code = main(["explain", str(tiny_run), *map(str, images), "--out", str(out), "--class", "disk"])
    printed = capsys.readouterr().out
    assert code == 0
    pngs = sorted(out.glob("*_gradcam.png"))
    assert len(pngs) == 2 and all(p.stat().st_size > 5000 for p in pngs)
    assert "gradcam for disk" in printed and str(out) in printed


def test_explain_errors_are_clear(tiny_run, tmp_path, capsys):
    text = tmp_path / "notes.png"
    text.write_text("this is not an image")
    image = next((tiny_run.parent.parent / "data" / "test" / "disk").glob("*.png"))
    code = main(["explain", str(tiny_run), str(text), str(image)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "notes.png" in err and "not a readable image" in err
    code = main(["explain", str(tiny_run), str(image), "--class", "Pneumonia"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "'Pneumonia' is not a class of this run" in err and "bar, disk" in err
    code = main(["explain", str(tiny_run), str(tmp_path / "missing.png")])
    assert code == 2 and "file not found" in capsys.readouterr().err
    with pytest.raises(Exception, match="unknown target layer 'nope'"):
        explain_image(tiny_run, image, target_layer="nope")


def test_gallery_of_most_confident_correct_and_wrong(tiny_run):
    import pandas as pd

    from medclf.explain.gallery import select_gallery
    gallery = pd.read_csv(tiny_run / "plots" / "gallery" / "gallery.csv")
    predictions = pd.read_csv(tiny_run / "predictions.csv")
    n_wrong = int((predictions.label != predictions.predicted).sum())
    assert len(gallery) == min(4, len(predictions) - n_wrong) + min(4, n_wrong)
    for kind, rows in gallery.groupby("kind"):
        assert ((rows.label == rows.predicted) == (kind == "correct")).all()
        assert list(rows.confidence) == sorted(rows.confidence, reverse=True)
        assert all((tiny_run / "plots" / "gallery" / png).stat().st_size > 3000 for png in rows.png)
    frame = pd.DataFrame({"path": list("abcde"), "label": ["x", "x", "y", "y", "x"],
                          "predicted": ["x", "y", "y", "x", "y"],
                          "prob_x": [0.6, 0.1, 0.3, 0.95, 0.2], "prob_y": [0.4, 0.9, 0.7, 0.05, 0.8]})
    chosen = select_gallery(frame, ["x", "y"], k=2)
    assert list(chosen.path) == ["c", "a", "d", "b"]  # correct by confidence, then top losses
    assert list(chosen["rank"]) == [1, 2, 1, 2]


def test_the_overlay_figure_draws_the_image_the_heatmap_and_their_blend():
    """Panels of original | heatmap (jet) | overlay (alpha blend), read back from the PNG's pixels."""
    import io

    from matplotlib import colormaps
    from PIL import Image

    from medclf.explain.overlay import GAP, LABEL_HEIGHT, PANEL, TITLE_HEIGHT, overlay_png

    image = np.zeros((1, 40, 40), np.float32)
    image[0, :, 20:] = 1.0  # right half white
    heatmap = np.zeros((40, 40), np.float32)
    heatmap[:20] = 1.0  # top half hot
    figure = np.asarray(Image.open(io.BytesIO(overlay_png(image, heatmap, "a title", alpha=0.5))).convert("RGB"))
    assert figure.shape[1] == 3 * PANEL + 4 * GAP
    top = TITLE_HEIGHT + GAP + LABEL_HEIGHT
    hot, cold = (np.array(colormaps["jet"](v)[:3]) * 255 for v in (1.0, 0.0))
    white, black = np.full(3, 255.0), np.zeros(3)

    def pixel(panel: int, row: int, col: int) -> np.ndarray:  # the centre of a quadrant of a panel
        return figure[top + PANEL // 4 + row * PANEL // 2, GAP + panel * (PANEL + GAP) + PANEL // 4 + col * PANEL // 2]

    np.testing.assert_allclose(pixel(0, 0, 0), black, atol=1)
    np.testing.assert_allclose(pixel(0, 1, 1), white, atol=1)
    np.testing.assert_allclose(pixel(1, 0, 0), hot, atol=1)
    np.testing.assert_allclose(pixel(1, 1, 0), cold, atol=1)
    np.testing.assert_allclose(pixel(2, 0, 1), (hot + white) / 2, atol=1)
    np.testing.assert_allclose(pixel(2, 1, 0), (cold + black) / 2, atol=1)
    assert (figure[:TITLE_HEIGHT] < 128).any()  # the title is written
