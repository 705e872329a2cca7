"""One input path: for the same file, `explain`, `predict` and the web service give the same
class probabilities, because all three read and preprocess it with the data stage
(medclf.data.preprocess), for a PNG X-ray, a DICOM file, a NIfTI volume and an npz item."""
from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from test_volumes import blob_volume, write_npz

import medclf
from medclf.commands.predict import predict_files
from medclf.data.preprocess import fit_to_size, preprocess_bytes, preprocess_file
from medclf.explain import explain_image, read_input
from medclf.rundir import load_run

from conftest import COVID, needs_data

TOLERANCE = 1e-5
# a NIfTI affine that is neither identity nor RAS: array axis 0 runs inferior (2 mm), axis 1
# to the left (0.8 mm), axis 2 anterior (1 mm), so reading it RAS+ permutes and flips the axes
NON_RAS_AFFINE = np.array([[0.0, -0.8, 0.0, 20.0],
                           [0.0, 0.0, 1.0, -30.0],
                           [-2.0, 0.0, 0.0, 40.0],
                           [0.0, 0.0, 0.0, 1.0]])


@pytest.fixture(scope="module")
def volume_run(tmp_path_factory):
    """A 3D run trained for one epoch on generated 16^3 npz volumes; ``(run_dir, npz)``.
    No bootstrap, gallery or test-time augmentation: they cost time and no parity."""
    root = tmp_path_factory.mktemp("parity3d")
    npz = write_npz(root / "blobs3d.npz", sizes=(("train", 12), ("val", 6), ("test", 6)))
    result = medclf.train(npz, out=root / "runs", name="vol", progress=False, overrides=[
        "train.max_epochs=1", "eval.bootstrap=0", "eval.tta=false", "explain.gallery_size=0"])
    return result.run_dir, npz


def by_predict(run_dir, path) -> dict:
    """``prob_<class>`` of ``medclf predict`` (one forward pass, no test-time augmentation)."""
    frame = predict_files(run_dir, [path], tta=False)
    assert frame.error[0] == "", frame.error[0]
    return {c.removeprefix("prob_"): float(frame[c][0]) for c in frame.columns if c.startswith("prob_")}


def by_service(run_dir, name: str, data: bytes) -> dict:
    """Probabilities of ``POST /api/runs/<run>/predict`` for uploaded bytes."""
    from fastapi.testclient import TestClient

    from medclf.serve import create_app
    client = TestClient(create_app(run_dir.parent))
    response = client.post(f"/api/runs/{run_dir.name}/predict", files={"file": (name, data)})
    assert response.status_code == 200, response.text
    return response.json()["probabilities"]


def assert_same(**sources: dict) -> None:
    (first_name, first), *others = sources.items()
    assert abs(sum(first.values()) - 1) < 1e-5
    for name, probs in others:
        assert set(probs) == set(first), f"{name} and {first_name} name different classes"
        for cls in first:
            assert abs(probs[cls] - first[cls]) <= TOLERANCE, \
                f"p({cls}): {name} {probs[cls]:.7f} vs {first_name} {first[cls]:.7f}"


@needs_data(COVID / "test" / "Covid")
def test_png_xray_parity(tiny_run, tmp_path):
    path = tmp_path / "xray.png"
    Image.open(sorted((COVID / "test" / "Covid").glob("*.jp*g"))[0]).save(path)  # a real X-ray, as PNG
    explained = explain_image(tiny_run, path).probabilities
    assert_same(explain=explained, predict=by_predict(tiny_run, path),
                service=by_service(tiny_run, "xray.png", path.read_bytes()))


def test_dicom_file_parity(tiny_run, tmp_path):
    from pydicom.data import get_testdata_file
    path = tmp_path / "CT_small.dcm"
    shutil.copy(get_testdata_file("CT_small.dcm"), path)
    explained = explain_image(tiny_run, path).probabilities
    assert_same(explain=explained, predict=by_predict(tiny_run, path),
                service=by_service(tiny_run, "CT_small.dcm", path.read_bytes()))


def test_nifti_volume_parity(volume_run, tmp_path):
    run_dir, _ = volume_run
    volume = np.repeat(blob_volume("ball", np.random.default_rng(5), 16), 2, axis=1)[:12]  # (12, 32, 16)
    path = tmp_path / "case.nii.gz"
    nib.save(nib.Nifti1Image(volume.astype(np.int16), NON_RAS_AFFINE), path)
    result = explain_image(run_dir, path)
    assert_same(explain=result.probabilities, predict=by_predict(run_dir, path),
                service=by_service(run_dir, "case.nii.gz", path.read_bytes()))
    # explain feeds the model exactly what predict does: RAS+, fit_to_size, normalised
    config = load_run(run_dir).config
    np.testing.assert_array_equal(result.image, preprocess_file(str(path), config)[0])
    canonical = nib.as_closest_canonical(nib.load(path))
    assert result.original_shape == canonical.shape == (32, 16, 12)
    np.testing.assert_allclose(result.affine, canonical.affine)
    # and reorientation matters here: the stored array, not reoriented, is another input
    stored = fit_to_size(volume[None].astype(np.float32), config)
    assert stored.shape == result.image.shape
    assert not np.allclose(stored / stored.max(), result.image)


def test_nifti_window_and_spacing_are_applied_as_in_training(volume_run, tmp_path):
    """With a window and a target spacing, explain's input still equals predict's and the
    service's (before this, explain read the bare voxel data)."""
    run_dir, _ = volume_run
    volume = np.random.default_rng(6).normal(0, 300, (12, 20, 18)).astype(np.int16)
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(volume, NON_RAS_AFFINE), path)
    config = load_run(run_dir).config.model_copy(deep=True)
    config.preprocess.window, config.preprocess.spacing = [40.0, 400.0], [1.5, 1.5, 1.5]
    config.preprocess.normalization, config.data.cache = "none", "none"
    image = read_input(path, config).image
    np.testing.assert_array_equal(image, preprocess_file(str(path), config)[0])
    np.testing.assert_array_equal(image, preprocess_bytes(path.read_bytes(), config, name="ct.nii.gz"))
    assert image.min() >= 0 and image.max() <= 1  # windowed to [0, 1]


def test_npz_item_parity(volume_run):
    """explain and predict only: the service takes uploaded files, and an npz item is not one."""
    run_dir, npz = volume_run
    item = f"{npz}#test/0"
    explained = explain_image(run_dir, item).probabilities
    with np.load(npz) as data:
        stored = data["test_images"][0]  # the same item as an array: read like an npz item
    assert_same(explain=explained, predict=by_predict(run_dir, item),
                explain_array=explain_image(run_dir, stored).probabilities)
