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
from medclf.data.sources.folder import discover
from medclf.data.preprocess import preprocess_all
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


def test_mr_window_from_the_file():
    path = get_testdata_file("MR_small.dcm")
    ds = pydicom.dcmread(path)
    raw = ds.pixel_array.astype(np.float64)  # MR: no rescale
    assert "RescaleSlope" not in ds
    np.testing.assert_allclose(read_dicom_file(path)[0], raw)
    center, width = float(ds.WindowCenter), float(ds.WindowWidth)
    assert (center, width) == (600, 1600)
    np.testing.assert_allclose(read_dicom_file(path, "file")[0], window(raw, 600, 1600), atol=1e-6)


def test_monochrome1_is_inverted_after_rescale_and_window():
    ds = pydicom.dcmread(MONOCHROME1)
    assert ds.PhotometricInterpretation == "MONOCHROME1" and float(ds.RescaleSlope) != 1
    values = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    plain, _ = read_dicom_file(str(MONOCHROME1))
    np.testing.assert_allclose(plain, values.max() + values.min() - values, rtol=1e-5)
    windowed, _ = read_dicom_file(str(MONOCHROME1), "file")
    expected = 1 - window(values, float(ds.WindowCenter), float(ds.WindowWidth))
    np.testing.assert_allclose(windowed, expected, atol=1e-6)
    # the brightest stored value is the darkest displayed one
    assert plain.flat[np.argmax(ds.pixel_array)] == pytest.approx(plain.min())


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
