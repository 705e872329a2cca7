"""`medclf preview`: the PNG of the real covid19-xray data, a generated 3D volume, run reports."""

import numpy as np
from PIL import Image

from medclf.cli import main
from medclf.commands.preview import preview
from medclf.config import user_settings, validate
from medclf.preview import Sample, display_array, render_preview

from conftest import COVID, make_dataset, needs_data


def resolve(config_file=None, overrides=None):
    """The user's settings validated without a dataset plan (defaults for the rest)."""
    return validate(user_settings(config_file, overrides))



def panel_pixels(png: np.ndarray, panel: dict) -> np.ndarray:
    left, top, right, bottom = panel["bbox"]
    assert 0 <= left < right <= png.shape[1] and 0 <= top < bottom <= png.shape[0], panel
    return png[top + 2:bottom - 2, left + 2:right - 2]  # inside the frame


def check_panels(result, expected_grids):
    """The PNG has the reported size, the expected grids, and every panel shows something."""
    png = np.asarray(Image.open(result.path).convert("L"), dtype=np.float32)
    assert (png.shape[1], png.shape[0]) == result.size
    assert result.grids == expected_grids
    for section, (rows, cols) in expected_grids.items():
        cells = {(p["row"], p["col"]) for p in result.panels if p["section"] == section}
        if section != "preprocessed":
            assert cells == {(r, c) for r in range(rows) for c in range(cols)}, section
    images = [p for p in result.panels if p["kind"] == "image"]
    for panel in images:
        assert panel_pixels(png, panel).std() > 5, f"blank panel {panel}"
    # no two panels overlap
    boxes = [p["bbox"] for p in result.panels]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a, b)
    return png


def diff(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two panels (cropped to the common size; boxes may differ by a pixel)."""
    h, w = min(a.shape[0], b.shape[0]), min(a.shape[1], b.shape[1])
    return float(np.abs(a[:h, :w] - b[:h, :w]).mean())


def pixels_of(png, result, section, row, col):
    panel = next(p for p in result.panels if (p["section"], p["row"], p["col"]) == (section, row, col))
    return panel_pixels(png, panel)


@needs_data(COVID)
def test_preview_of_covid19_xray(tmp_path, capsys):
    out = tmp_path / "small.png"
    assert main(["preview", str(COVID), "--n", "3", "--augment", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1] == str(out) and Image.open(out).format == "PNG"
    assert "preprocessed 3x1, augmented 3x2, normalization 2x5" in printed[0]

    result = preview(COVID, n=16, out=tmp_path / "preview.png")
    grids = {"preprocessed": (3, 5), "augmented": (3, 6), "normalization": (2, 5)}
    png = check_panels(result, grids)
    assert len([p for p in result.panels if p["kind"] == "image"]) == 3 * 5 + 3 * 6 + 5
    assert len([p for p in result.panels if p["kind"] == "histogram"]) == 5
    # 5 distinct training images of each class, in class order
    for cls, names in zip(["Covid", "Normal", "Viral Pneumonia"], result.names):
        assert len(set(names)) == 5 and all((COVID / "train" / cls / n).is_file() for n in names)
    # different images differ; augmentation changes the image; the normalisation modes differ
    first = pixels_of(png, result, "preprocessed", 0, 0)
    assert diff(first, pixels_of(png, result, "preprocessed", 0, 1)) > 5
    original = pixels_of(png, result, "augmented", 0, 0)
    draws = [pixels_of(png, result, "augmented", 0, k) for k in range(1, 6)]
    assert sum(diff(original, d) > 2 for d in draws) >= 3
    assert diff(pixels_of(png, result, "normalization", 0, 1),
                pixels_of(png, result, "normalization", 0, 3)) > 2  # scale255 vs percentile


def volume(seed: int, shape=(16, 24, 32)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    centre = [s / 2 + rng.integers(-2, 3) for s in shape]
    ball = sum((g - c) ** 2 for g, c in zip(grid, centre)) < 36
    return (rng.normal(60, 10, shape) + 150 * ball).clip(0, 255).astype(np.float32)[None]


def test_display_array_shows_orthogonal_mid_slices():
    vol = volume(0)  # (1, D=16, H=24, W=32)
    shown = display_array(vol)
    assert shown.shape == (24, 32 + 1 + 32 + 1 + 24)
    np.testing.assert_array_equal(shown[:, :32], vol[0, 8])  # axial
    np.testing.assert_array_equal(shown[4:20, 33:65], vol[0, :, 12, :])  # coronal, centred
    np.testing.assert_array_equal(shown[4:20, 66:], vol[0, :, :, 16])  # sagittal
    assert np.isnan(shown[:4, 33:65]).all() and np.isnan(shown[:, 32]).all()
    image = np.random.default_rng(0).random((1, 20, 30)).astype(np.float32)
    np.testing.assert_array_equal(display_array(image), image[0])
    assert display_array(np.repeat(image, 3, 0)).shape == (20, 30, 3)


def test_preview_of_generated_volumes(tmp_path):
    cfg = resolve(overrides={"model": {"spatial_dims": 3}, "data": {"image_size": [16, 24, 32]},
                             "preprocess": {"steps": [{"name": "closing", "radius": 1}]}})
    samples = [Sample(volume(i), 255.0, i % 2, f"vol{i}.nii.gz") for i in range(6)]
    result = render_preview(samples, ["normal", "lesion"], cfg, tmp_path / "vol.png", per_class=3, n_augment=2)
    png = check_panels(result, {"preprocessed": (2, 3), "augmented": (2, 3), "normalization": (2, 5)})
    assert result.names == [["vol0.nii.gz", "vol2.nii.gz", "vol4.nii.gz"], ["vol1.nii.gz", "vol3.nii.gz", "vol5.nii.gz"]]
    panel = next(p for p in result.panels if p["section"] == "preprocessed")
    left, top, right, bottom = panel["bbox"]
    assert (right - left) > 2.5 * (bottom - top)  # three slices side by side
    assert png.shape[1] > png.shape[0] / 2


def test_preview_errors_are_clean(tmp_path, capsys):
    data = make_dataset(tmp_path / "d")
    code = main(["preview", str(data), "--out", str(tmp_path / "p.png"),
                 "--set", "preprocess.steps=[{name: threshold, method: value, value: 999}]"])
    err = capsys.readouterr().err
    assert code == 2 and "preprocess.steps.0.threshold: value 999 is outside" in err
    assert not (tmp_path / "p.png").exists()
    assert main(["preview", str(tmp_path / "missing")]) == 2
    assert "not found" in capsys.readouterr().err
