"""Reading awkward image files and the normalisation modes, on generated files."""
import io

import numpy as np
import pytest
from PIL import Image

from medclf.config import Config
from medclf.data.formats.image import read_image
from medclf.data.preprocess import normalize, preprocess_all, settings_key
from medclf.errors import UnreadableImage


def encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def test_16bit_png_keeps_its_range():
    array = np.linspace(0, 60000, 64 * 64).reshape(64, 64).astype(np.uint16)
    out, full_scale = read_image(encode(Image.fromarray(array)), (32, 32))
    assert full_scale == 65535.0
    assert out.shape == (1, 32, 32) and out.max() > 50000
    assert normalize(out, "scale255", full_scale).max() <= 1.0


def test_rgba_and_palette_become_grayscale():
    rgba = Image.new("RGBA", (40, 40), (200, 200, 200, 255))
    rgba.putpixel((0, 0), (255, 0, 0, 0))  # a transparent pixel goes to black
    out, _ = read_image(encode(rgba), (40, 40))
    assert out.shape == (1, 40, 40)
    assert out[0, 20, 20] == pytest.approx(200, abs=1) and out[0, 0, 0] == 0
    palette = Image.new("L", (40, 40), 90).convert("P")
    out, _ = read_image(encode(palette), (20, 20), in_channels=3)
    assert out.shape == (3, 20, 20) and np.allclose(out, 90, atol=1)


def test_exif_orientation_is_applied():
    image = np.zeros((20, 60), np.uint8)  # wide, bright on the left
    image[:, :10] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    data = encode(Image.fromarray(image), "JPEG", exif=exif.tobytes(), quality=95)
    out, _ = read_image(data, (60, 20))
    assert out.shape == (1, 60, 20)  # tall after applying the orientation
    assert out[0, :10].mean() > 200 and out[0, -10:].mean() < 50  # bright part now on top


def test_grayscale_jpeg_fast_path_matches_rgb_path():
    yy, xx = np.mgrid[:800, :800] / 800.0
    smooth = (127 + 100 * np.sin(6 * xx) * np.cos(4 * yy)).astype(np.uint8)
    data = encode(Image.fromarray(smooth).convert("RGB"), "JPEG", quality=95)
    gray, _ = read_image(data, (100, 100), in_channels=1)
    rgb, _ = read_image(data, (100, 100), in_channels=3)
    assert np.abs(gray[0] - rgb.mean(axis=0)).mean() < 1.5


@pytest.mark.parametrize("data, reason", [
    (b"", "empty"),
    (b"this is a text file, not an image", "not a readable image"),
    (b"<html><body>nope</body></html>", "not a readable image"),
])
def test_non_images_are_rejected_with_a_reason(data, reason):
    with pytest.raises(UnreadableImage, match=reason):
        read_image(data, (32, 32))


def test_truncated_files_and_bombs_are_rejected():
    rng = np.random.default_rng(1)
    png = encode(Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)))
    jpeg = encode(Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)), "JPEG")
    for data in (png[: len(png) // 2], jpeg[: len(jpeg) // 2]):
        with pytest.raises(UnreadableImage, match="truncated|corrupt|not a readable"):
            read_image(data, (32, 32))
    with pytest.raises(UnreadableImage, match="max_pixels"):
        read_image(png, (32, 32), max_pixels=1000)
    with pytest.raises(UnreadableImage, match="1x1"):
        read_image(encode(Image.new("L", (1, 1))), (32, 32))


def test_normalisation_modes():
    rng = np.random.default_rng(0)
    image = rng.uniform(20, 220, (1, 32, 32)).astype(np.float32)
    assert normalize(image, "scale255").max() == pytest.approx(image.max() / 255)
    minmax = normalize(image, "minmax")
    assert minmax.min() == pytest.approx(0) and minmax.max() == pytest.approx(1)
    pct = normalize(image, "percentile")
    assert np.percentile(pct, 5) == pytest.approx(0, abs=1e-4)
    assert np.percentile(pct, 95) == pytest.approx(1, abs=1e-4)
    z = normalize(image, "zscore")
    assert z.mean() == pytest.approx(0, abs=1e-5) and z.std() == pytest.approx(1, abs=1e-3)
    flat = np.full((1, 8, 8), 7, np.float32)
    assert np.isfinite(normalize(flat, "percentile")).all()


@pytest.mark.parametrize("shape", [(1, 224, 224), (3, 160, 160), (1, 32, 32, 32)])
def test_percentile_normalisation_gives_monais_values(shape):
    from monai.transforms import ScaleIntensityRangePercentiles
    image = np.random.default_rng(1).gamma(2.0, 40.0, shape).round().astype(np.float32)  # skewed, with ties
    ours = normalize(image, "percentile")
    monai = np.asarray(ScaleIntensityRangePercentiles(lower=5, upper=95, b_min=0.0, b_max=1.0, clip=False)(image))
    assert ours.dtype == np.float32 and ours.shape == image.shape
    np.testing.assert_allclose(ours, monai, rtol=0, atol=3e-5)


def test_cache_returns_same_array_and_key_tracks_settings(tmp_path):
    path = tmp_path / "a.png"
    Image.fromarray(np.arange(64 * 64, dtype=np.uint8).reshape(64, 64)).save(path)
    for mode in ("memory", "disk"):
        cfg = Config().model_copy(deep=True)
        cfg.data.cache = mode
        cfg.data.cache_dir = str(tmp_path / "cache")
        first, hashes, bad = preprocess_all([str(path)], cfg)
        second, _, _ = preprocess_all([str(path)], cfg)
        assert not bad and np.array_equal(first[0], second[0])
    assert list((tmp_path / "cache").rglob("*.npy"))
    other = Config().model_copy(deep=True)
    other.preprocess.normalization = "zscore"
    assert settings_key(other) != settings_key(Config())


@pytest.mark.parametrize("fmt", ["BMP", "TIFF", "PNG", "JPEG"])
def test_every_2d_format_decodes_to_the_same_picture(fmt):
    yy, xx = np.mgrid[:64, :64]
    array = (xx * 3 + yy).astype(np.uint8)
    out, full_scale = read_image(encode(Image.fromarray(array), fmt), (64, 64))
    assert full_scale == 255.0 and out.shape == (1, 64, 64)
    assert np.abs(out[0] - array).mean() < (2.0 if fmt == "JPEG" else 1e-6)
