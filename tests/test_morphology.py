"""Preprocessing steps (preprocess.steps) against scikit-image called directly, 2D and 3D."""
import numpy as np
import pytest
from PIL import Image
from skimage import exposure, filters, morphology

from medclf.cli import main
from medclf.config import user_settings, validate
from medclf.data.morphology import PreprocessStepError, apply_steps
from medclf.data.preprocess import preprocess_file

from conftest import make_dataset, synthetic_image


def resolve(config_file=None, overrides=None):
    """The user's settings validated without a dataset plan (defaults for the rest)."""
    return validate(user_settings(config_file, overrides))



def steps(*entries):
    """Validated step models, exactly as a YAML `preprocess.steps` list gives them."""
    return resolve(overrides={"preprocess": {"steps": list(entries)}}).preprocess.steps


def specks(shape, seed=0):
    """Raw 8-bit intensities with bright and dark one-pixel specks, float32 (1, *shape)."""
    rng = np.random.default_rng(seed)
    image = rng.normal(100, 20, shape)
    image[rng.random(shape) < 0.02] = 250
    image[rng.random(shape) < 0.02] = 5
    grid = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    inside = sum((g - s / 2) ** 2 for g, s in zip(grid, shape)) < (min(shape) / 3) ** 2
    image[inside] += 80  # a bright blob, so that Otsu has two classes to separate
    return np.clip(image, 0, 255).astype(np.float32)[None]


SHAPES = {2: (40, 48), 3: (12, 16, 20)}
ELEMENT = {2: morphology.disk, 3: morphology.ball}


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("op", ["erosion", "dilation", "opening", "closing"])
def test_grey_morphology_matches_skimage(op, dims):
    image = specks(SHAPES[dims])
    got = apply_steps(image, steps({"name": op, "radius": 2}))
    expected = getattr(morphology, op)(image[0], ELEMENT[dims](2))
    assert got.shape == image.shape and got.dtype == np.float32
    np.testing.assert_array_equal(got[0], expected)
    assert not np.array_equal(got, image)  # the step did something


@pytest.mark.parametrize("dims", [2, 3])
def test_morphology_is_per_channel(dims):
    image = np.concatenate([specks(SHAPES[dims], 0), specks(SHAPES[dims], 1)])
    got = apply_steps(image, steps({"name": "opening", "radius": 1}))
    for c in range(2):
        np.testing.assert_array_equal(got[c], morphology.opening(image[c], ELEMENT[dims](1)))


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("method, threshold", [
    ("otsu", lambda a: filters.threshold_otsu(a)),
    ("percentile", lambda a: np.percentile(a, 70)),
    ("value", lambda a: 125.0),
])
def test_threshold_to_binary_image(method, threshold, dims):
    image = specks(SHAPES[dims])
    entry = {"name": "threshold", "method": method}
    if method == "value":
        entry["value"] = 125
    if method == "percentile":
        entry["percentile"] = 70
    got = apply_steps(image, steps(entry), full_scale=255)
    expected = np.where(image > threshold(image), 255.0, 0.0)
    np.testing.assert_array_equal(got, expected)
    assert 0 < (got > 0).mean() < 1
    below = apply_steps(image, steps({**entry, "keep": "below"}), full_scale=255)
    np.testing.assert_array_equal(below, 255.0 - expected)


@pytest.mark.parametrize("dims", [2, 3])
def test_threshold_as_mask_refined_by_morphology_keeps_the_image(dims):
    image = specks(SHAPES[dims])
    got = apply_steps(image, steps({"name": "threshold", "method": "otsu", "as_mask": True},
                                   {"name": "opening", "radius": 2},
                                   {"name": "dilation", "radius": 1}))
    mask = image[0] > filters.threshold_otsu(image)
    mask = morphology.dilation(morphology.opening(mask, ELEMENT[dims](2)), ELEMENT[dims](1))
    np.testing.assert_array_equal(got[0], np.where(mask, image[0], 0))
    assert set(np.unique(got)) - {0.0} <= set(np.unique(image))  # intensities kept, not binarised


def test_mask_is_applied_before_the_next_contrast_step():
    image = specks(SHAPES[2])
    got = apply_steps(image, steps({"name": "threshold", "method": "value", "value": 150, "as_mask": True},
                                   {"name": "closing", "radius": 1},
                                   {"name": "equalize"}), full_scale=255)
    mask = morphology.closing(image[0] > 150, morphology.disk(1))
    expected = exposure.equalize_hist(np.where(mask, image[0], 0)) * 255
    np.testing.assert_allclose(got[0], expected, rtol=1e-5)


@pytest.mark.parametrize("dims", [2, 3])
def test_contrast_steps_match_skimage(dims):
    image = specks(SHAPES[dims])
    clahe = apply_steps(image, steps({"name": "clahe", "clip_limit": 0.02, "kernel_size": 8}), full_scale=255)
    expected = exposure.equalize_adapthist(image[0] / 255, kernel_size=8, clip_limit=0.02) * 255
    np.testing.assert_allclose(clahe[0], expected, rtol=1e-5, atol=1e-3)
    equalized = apply_steps(image, steps({"name": "equalize", "nbins": 64}), full_scale=255)
    np.testing.assert_allclose(equalized[0], exposure.equalize_hist(image[0], nbins=64) * 255, rtol=1e-5)


def test_local_contrast_evens_out_illumination_and_keeps_small_spots():
    """Graham's step: a dark-to-bright illumination ramp becomes mid-grey everywhere, while a
    small bright spot on the dark side stays brighter than its surroundings."""
    rows, cols = np.mgrid[0:120, 0:120]
    image = (40 + 1.5 * cols).astype(np.float32)  # illumination from 40 to 218
    image[58:62, 18:22] += 30  # a 4-pixel lesion on the dark side
    out = apply_steps(image[None], steps({"name": "local_contrast"}), full_scale=255)[0]
    expected = np.clip(127.5 + 4 * (image - filters.gaussian(image, sigma=2.0, preserve_range=True)), 0, 255)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-3)  # sigma: 1/60 of the 120-pixel side
    inner = out[10:-10, 10:-10].copy()
    inner[40:60, 0:20] = 127.5  # the lesion and its halo (3 sigma)
    assert np.abs(inner - 127.5).max() < 1.0  # the ramp is gone
    assert out[58:62, 18:22].mean() > 127.5 + 50  # the lesion is not
    ramp = image[10:-10, 10:-10]
    assert ramp.max() - ramp.min() > 100


@pytest.mark.parametrize("entry, words", [
    ({"name": "blur"}, ["preprocess.steps.1", "'blur'", "opening"]),
    ({"name": "opening", "radius": -3}, ["preprocess.steps.1.opening.radius", "greater than or equal to 1"]),
    ({"name": "closing", "radus": 2}, ["preprocess.steps.1.closing.radus", "unknown key", "radius"]),
    ({"name": "threshold", "method": "value"}, ["preprocess.steps.1.threshold", "needs a `value`"]),
    ({"name": "threshold", "percentile": 120}, ["preprocess.steps.1.threshold.percentile"]),
])
def test_bad_step_in_the_config_names_the_step(entry, words, tiny_dataset, capsys):
    code = main(["train", str(tiny_dataset), "--no-progress",
                 "--set", f"preprocess.steps=[{{name: equalize}}, {entry!s}]".replace("'", "")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    for word in words:
        assert word.replace("'", "") in err.replace("'", ""), err


def test_threshold_outside_the_intensity_range_names_the_step(tiny_dataset, tmp_path, capsys):
    code = main(["train", str(tiny_dataset), "--no-progress", "--out", str(tmp_path / "runs"),
                 "--set", "data.cache=none", "--set", "data.image_size=[32,32]",
                 "--set", "preprocess.steps=[{name: clahe}, {name: threshold, method: value, value: 300}]"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "preprocess.steps.1.threshold: value 300 is outside the intensity range 0..255" in err
    with pytest.raises(PreprocessStepError, match=r"steps\.0\.opening: radius 30 is too large"):
        apply_steps(specks(SHAPES[2]), steps({"name": "opening", "radius": 30}))


def test_steps_run_inside_the_cached_preprocessing(tmp_path):
    image = synthetic_image("disk", np.random.default_rng(3), size=48)
    path = tmp_path / "x.png"
    Image.fromarray(image).save(path)
    base = {"data": {"image_size": [48, 48], "cache": "memory"}, "preprocess": {"normalization": "scale255"}}
    plain = resolve(overrides=base)
    opened = resolve(overrides={**base, "preprocess": {"normalization": "scale255",
                                                       "steps": [{"name": "opening", "radius": 3}]}})
    got, _ = preprocess_file(str(path), opened)
    expected = morphology.opening(image.astype(np.float32), morphology.disk(3)) / 255
    np.testing.assert_allclose(got[0], expected, atol=1e-6)
    again, _ = preprocess_file(str(path), opened)
    assert again is got  # served from the cache
    untouched, _ = preprocess_file(str(path), plain)  # a different setting is a different cache entry
    np.testing.assert_allclose(untouched[0], image / 255, atol=1e-6)


def test_train_with_steps_on_generated_data(tmp_path, capsys):
    data = make_dataset(tmp_path / "d")
    assert main(["train", str(data), "--out", str(tmp_path / "runs"), "--name", "m", "--no-progress",
                 "--set", "train.max_epochs=2", "--set", "data.image_size=[32,32]",
                 "--set", "model.filters=[8]", "--set", "train.batch_size=8",
                 "--set", "preprocess.steps=[{name: threshold, method: otsu, as_mask: true}, "
                          "{name: opening, radius: 1}, {name: clahe}]"]) == 0, capsys.readouterr().err
    import yaml
    saved = yaml.safe_load((tmp_path / "runs" / "m" / "config.yaml").read_text())
    assert [s["name"] for s in saved["preprocess"]["steps"]] == ["threshold", "opening", "clahe"]
