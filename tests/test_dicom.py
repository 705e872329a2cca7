"""DICOM reading on the files that pydicom ships, checked against values computed here."""
import os
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from medclf.config import WINDOW_PRESETS, Config
from medclf.data.formats.dicom import read_dicom_file, read_dicom_series
from medclf.data.preprocess import preprocess_all
from medclf.data.sources.folder import discover
from medclf.errors import UnreadableImage

TEST_FILES = Path(get_testdata_file("CT_small.dcm")).parent
MONOCHROME1 = TEST_FILES / "dicomdirtests" / "77654033" / "CR1" / "6154"
CT_SERIES = sorted((TEST_FILES / "dicomdirtests" / "77654033" / "CT2").iterdir())


def window(values, center, width):
    return np.clip((values - (center - width / 2)) / width, 0, 1)


def test_ct_rescale_to_hounsfield_and_presets():
    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert float(ds.RescaleIntercept) == -1024  # the rescale really does something here
    values, spacing = read_dicom_file(path)
    assert values.shape == (128, 128) and values.dtype == np.float32
    np.testing.assert_allclose(values, hu)
    assert spacing == pytest.approx(tuple(float(s) for s in ds.PixelSpacing))
    for preset in ("lung", "soft_tissue", "bone"):
        center, width = WINDOW_PRESETS[preset]
        np.testing.assert_allclose(read_dicom_file(path, preset)[0], window(hu, center, width), atol=1e-6)
    np.testing.assert_allclose(read_dicom_file(path, [40, 400])[0], window(hu, 40, 400), atol=1e-6)
    lung = read_dicom_file(path, "lung")[0]
    assert 0 < lung.mean() < 1 and lung.min() >= 0 and lung.max() <= 1


def dicom_linear(values, center, width):
    """The LINEAR VOI function of DICOM PS3.3 C.11.2.1.2.1, written out, output in [0, 1]."""
    values = np.asarray(values, np.float64)
    c, w = center - 0.5, width - 1
    out = (values - c) / w + 0.5
    out[values <= c - w / 2] = 0
    out[values > c + w / 2] = 1
    return out


def test_mr_window_from_the_file():
    path = get_testdata_file("MR_small.dcm")
    ds = pydicom.dcmread(path)
    raw = ds.pixel_array.astype(np.float64)  # MR: no rescale
    assert "RescaleSlope" not in ds
    np.testing.assert_allclose(read_dicom_file(path)[0], raw)
    center, width = float(ds.WindowCenter), float(ds.WindowWidth)
    assert (center, width) == (600, 1600)
    windowed = read_dicom_file(path, "file")[0]
    np.testing.assert_allclose(windowed, dicom_linear(raw, 600, 1600), atol=1e-6)
    assert 0 < windowed.min() < 0.3 and windowed.max() == 1  # the window really clips here
    # the same as the plain linear window up to DICOM's half-pixel convention
    np.testing.assert_allclose(windowed, window(raw, 600, 1600), atol=1 / 1600)
    # presets and [center, width] keep the plain linear mapping
    np.testing.assert_allclose(read_dicom_file(path, [600, 1600])[0], window(raw, 600, 1600), atol=1e-6)


def saved(ds, tmp_path, name) -> str:
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True)
    return str(path)


def test_sigmoid_and_linear_exact_window_functions(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    raw = ds.pixel_array.astype(np.float64)
    ds.VOILUTFunction = "SIGMOID"
    sigmoid = read_dicom_file(saved(ds, tmp_path, "sigmoid.dcm"), "file")[0]
    # PS3.3 C.11.2.1.3.1: y = (y_max - y_min) / (1 + exp(-4 (x - c) / w)) + y_min, mapped to [0, 1]
    np.testing.assert_allclose(sigmoid, 1 / (1 + np.exp(-4 * (raw - 600) / 1600)), atol=1e-6)
    ds.VOILUTFunction = "LINEAR_EXACT"
    exact = read_dicom_file(saved(ds, tmp_path, "exact.dcm"), "file")[0]
    np.testing.assert_allclose(exact, np.clip((raw - (600 - 800)) / 1600, 0, 1), atol=1e-6)
    ds.VOILUTFunction = "WAVY"
    with pytest.raises(UnreadableImage, match="own window or VOI LUT.*WAVY"):
        read_dicom_file(saved(ds, tmp_path, "wavy.dcm"), "file")


def test_voi_lut_sequence_is_applied_and_preferred_to_the_window(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    raw = ds.pixel_array.astype(np.int64)
    first, entries = 200, 1500  # inputs 200..1699; the image holds 127..2145
    lut = (np.sqrt(np.arange(entries)) * 20).astype(np.uint16)  # a non-linear LUT, entries 0..774
    item = pydicom.Dataset()
    item.LUTDescriptor = [entries, first, 16]
    item.add_new(0x00283006, "OW", lut.astype("<u2").tobytes())  # LUTData
    ds.VOILUTSequence = pydicom.Sequence([item])
    assert "WindowCenter" in ds  # pydicom prefers the LUT
    out = read_dicom_file(saved(ds, tmp_path, "lut.dcm"), "file")[0]
    expected = lut[np.clip(raw, first, first + entries - 1) - first] / lut.max()  # by hand
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert out.min() == 0 and out.max() == 1
    del ds.WindowCenter, ds.WindowWidth  # a LUT alone is a window of its own
    np.testing.assert_allclose(read_dicom_file(saved(ds, tmp_path, "lut_only.dcm"), "file")[0], expected, atol=1e-6)


def monochrome1_with(stored: np.ndarray, tmp_path, name) -> str:
    """pydicom's MONOCHROME1 test image with other stored values (its header unchanged)."""
    ds = pydicom.dcmread(MONOCHROME1)
    ds.PixelData = stored.astype(ds.pixel_array.dtype).tobytes()
    return saved(ds, tmp_path, name)


def test_monochrome1_is_inverted_after_rescale_and_window():
    ds = pydicom.dcmread(MONOCHROME1)
    assert ds.PhotometricInterpretation == "MONOCHROME1" and float(ds.RescaleSlope) != 1
    slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
    values = ds.pixel_array.astype(np.float64) * slope + intercept
    plain, _ = read_dicom_file(str(MONOCHROME1))
    # inverted against the stored range 0 .. 2^BitsStored - 1 (unsigned) after the rescale
    assert ds.BitsStored == 12 and ds.PixelRepresentation == 0
    low, high = intercept, (2 ** 12 - 1) * slope + intercept
    np.testing.assert_allclose(plain, low + high - values, rtol=1e-5)
    windowed, _ = read_dicom_file(str(MONOCHROME1), "file")
    expected = 1 - dicom_linear(values, float(ds.WindowCenter), float(ds.WindowWidth))
    np.testing.assert_allclose(windowed, expected, atol=1e-6)
    preset, _ = read_dicom_file(str(MONOCHROME1), [1500, 1000])
    np.testing.assert_allclose(preset, 1 - window(values, 1500, 1000), atol=1e-6)
    # the brightest stored value is the darkest displayed one
    assert plain.flat[np.argmax(ds.pixel_array)] == pytest.approx(plain.min())


def test_monochrome1_inversion_does_not_depend_on_the_image(tmp_path):
    # two images of different value ranges that share the stored value 2500 at pixel (3, 4)
    narrow = np.full((16, 16), 2400)
    narrow[0, 0], narrow[3, 4] = 2450, 2500
    wide = np.linspace(0, 4000, 256).reshape(16, 16).round()
    wide[3, 4] = 2500
    paths = [monochrome1_with(a, tmp_path, f"{n}.dcm") for n, a in (("narrow", narrow), ("wide", wide))]
    for window_setting in (None, "file", "bone", [2000, 3000]):
        a, b = (read_dicom_file(path, window_setting)[0] for path in paths)
        assert a[3, 4] == b[3, 4], window_setting
        assert a[3, 4] <= a[0, 0] <= a[0, 1], window_setting  # higher stored value, darker
    ds = pydicom.dcmread(MONOCHROME1)
    slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
    expected = (intercept + (2 ** 12 - 1) * slope + intercept) - (2500 * slope + intercept)
    assert read_dicom_file(paths[0])[0][3, 4] == pytest.approx(expected, rel=1e-6)
    # an inversion by each image's own min and max would not agree: 2400 + 2500 - 2500 vs 0 + 4000 - 2500
    assert narrow.min() + narrow.max() != wide.min() + wide.max()


def test_multiframe_file_is_a_volume():
    path = get_testdata_file("rtdose.dcm")
    ds = pydicom.dcmread(path)
    values, spacing = read_dicom_file(path)
    assert values.shape == (int(ds.NumberOfFrames), ds.Rows, ds.Columns) == (15, 10, 10)
    np.testing.assert_allclose(values, ds.pixel_array * float(ds.DoseGridScaling), rtol=1e-6)
    assert len(spacing) == 3


@pytest.fixture
def ct_series(tmp_path) -> Path:
    """A series folder of the 4 CT slices of pydicom's dicomdirtests, renamed so that name
    order is not position order, plus a stray text file."""
    folder = tmp_path / "series"
    folder.mkdir()
    for i, src in enumerate(CT_SERIES):
        shutil.copy(src, folder / f"slice_{(7 * i) % 5}.dcm")
    (folder / "notes.txt").write_text("not a slice")
    return folder


def test_series_sorted_by_position(ct_series):
    datasets = [pydicom.dcmread(p) for p in ct_series.glob("*.dcm")]
    datasets.sort(key=lambda d: float(d.ImagePositionPatient[2]))  # axial: normal is z
    expected = np.stack([d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in datasets])
    volume, spacing, files = read_dicom_series(ct_series)
    assert volume.shape == (len(CT_SERIES), 16, 16)
    np.testing.assert_allclose(volume, expected)
    assert all(f.endswith(".dcm") for f in files)  # notes.txt ignored
    z = sorted(float(d.ImagePositionPatient[2]) for d in datasets)
    assert spacing[0] == pytest.approx(float(np.median(np.diff(z))))


def test_inspect_reports_the_series_spacing_from_the_headers(tmp_path, ct_series):
    from medclf.commands.inspect import inspect_dataset
    datasets = [pydicom.dcmread(p) for p in ct_series.glob("*.dcm")]
    z = sorted(float(d.ImagePositionPatient[2]) for d in datasets)
    expected = [float(np.median(np.diff(z))), *map(float, datasets[0].PixelSpacing)]
    assert read_dicom_series(ct_series)[1] == pytest.approx(expected)
    for cls in ("a", "b"):
        for i in range(3):
            shutil.copytree(ct_series, tmp_path / "data" / "train" / cls / f"p{i}")
            shutil.copytree(ct_series, tmp_path / "data" / "test" / cls / f"p{i}")
    result = inspect_dataset(tmp_path / "data")
    assert not result["unreadable"] and result["formats"] == {"dicom-series": 12}
    for split in ("train", "val", "test", "all"):
        facts = result["spacing"][split]
        assert facts["median"] == facts["min"] == facts["max"] == pytest.approx(expected)
        assert facts["distinct"] == 1


def test_folder_of_series_is_discovered_as_volumes(tmp_path, ct_series):
    for cls in ("a", "b"):
        for i in range(5):
            shutil.copytree(ct_series, tmp_path / "data" / cls / f"patient{i}")
    manifest = discover(tmp_path / "data", val_fraction=0.2, test_fraction=0.2)
    assert len(manifest.frame) == 10 and all(os.path.isdir(p) for p in manifest.frame.path)
    cfg = Config().model_copy(deep=True)
    cfg.model.spatial_dims = 3
    cfg.data.image_size = [4, 8, 8]
    arrays, _, bad = preprocess_all(list(manifest.frame.path), cfg)
    assert not bad and arrays[0].shape == (1, 4, 8, 8)


def test_bad_dicom_files_are_named(tmp_path):
    truncated = get_testdata_file("MR_truncated.dcm")
    no_pixels = tmp_path / "no_pixels.dcm"
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del ds.PixelData
    ds.save_as(no_pixels)
    not_dicom = tmp_path / "fake.dcm"
    not_dicom.write_bytes(b"hello" * 100)
    with pytest.raises(UnreadableImage, match="truncated"):
        read_dicom_file(truncated)
    with pytest.raises(UnreadableImage, match="no pixel data"):
        read_dicom_file(str(no_pixels))
    with pytest.raises(UnreadableImage, match="WindowCenter"):
        read_dicom_file(get_testdata_file("CT_small.dcm"), "file")
    cfg = Config().model_copy(deep=True)
    cfg.data.image_size = [32, 32]
    arrays, _, bad = preprocess_all([truncated, str(no_pixels), str(not_dicom), get_testdata_file("CT_small.dcm")], cfg)
    assert [p for p, _ in bad] == [truncated, str(no_pixels), str(not_dicom)]
    assert "truncated" in bad[0][1] and "no pixel data" in bad[1][1] and "not a DICOM" in bad[2][1]
    assert arrays[3].shape == (1, 32, 32)


def test_uploaded_dicom_bytes_match_the_file_pipeline():
    from medclf.data.preprocess import preprocess_bytes, preprocess_file
    path = get_testdata_file("CT_small.dcm")
    cfg = Config().model_copy(deep=True)
    cfg.data.image_size = [32, 32]
    cfg.preprocess.window = "soft_tissue"
    from_file, _ = preprocess_file(path, cfg)
    with open(path, "rb") as handle:
        from_bytes = preprocess_bytes(handle.read(), cfg, name="upload.bin")  # found by its DICM magic
    np.testing.assert_array_equal(from_bytes, from_file)


def test_a_damaged_header_value_is_named(tmp_path):
    from medclf.data.formats.dicom import probe_dicom
    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    assert data.count(b"0.661468\\0.661468") == 1  # PixelSpacing, a DS value
    path = tmp_path / "bad_spacing.dcm"
    path.write_bytes(data.replace(b"0.661468\\0.661468", b"0.661468\\0.66K468"))  # one damaged byte
    with pytest.raises(UnreadableImage, match=r"PixelSpacing .*0\.66K468.* is not a number"):
        read_dicom_file(str(path))
    with pytest.raises(UnreadableImage, match="PixelSpacing"):
        probe_dicom(str(path))
