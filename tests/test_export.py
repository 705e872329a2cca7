"""``medclf export``: ONNX and TorchScript files give the run's probabilities (2D real X-rays
through a tiny run, 3D generated volumes), with the preprocessing metadata."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
import onnx  # noqa: E402

import medclf  # noqa: E402
from medclf import rundir  # noqa: E402
from medclf.cli import main as cli_main  # noqa: E402
from medclf.data.preprocess import preprocess_file  # noqa: E402
from medclf.errors import ConfigError  # noqa: E402
from medclf.evaluation.predict import load_model, predict_probabilities  # noqa: E402
from medclf.export import export_run, load_onnx_session  # noqa: E402
from medclf.export.export import onnx_probabilities  # noqa: E402

from conftest import SHARED_DATA, make_dataset, needs_data  # noqa: E402

COVID = SHARED_DATA / "covid19-xray"
FAST = ["train.max_epochs=1", "data.image_size=[32,32]", "model.filters=[8,16]", "train.batch_size=8"]


@pytest.fixture(scope="module")
def run_2d(tmp_path_factory):
    root = tmp_path_factory.mktemp("export2d")
    return medclf.train(make_dataset(root / "data"), overrides=FAST, out=root / "runs", name="tiny",
                        progress=False).run_dir


def exported_probabilities(path, fmt, images: torch.Tensor) -> np.ndarray:
    if fmt == "onnx":
        session, _ = load_onnx_session(path)
        return onnx_probabilities(session, images)
    with torch.no_grad():
        return torch.jit.load(str(path))(images)[1].numpy()


@needs_data(COVID)
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_2d_export_matches_pytorch_on_real_xrays(run_2d, fmt, tmp_path):
    run = rundir.load_run(run_2d)
    files = sorted((COVID / "test" / "Covid").iterdir())[:3] + sorted((COVID / "test" / "Normal").iterdir())[:2]
    images = torch.from_numpy(np.stack([preprocess_file(str(f), run.config)[0] for f in files]))
    assert images.shape == (5, 1, 32, 32)
    exported = export_run(run_2d, fmt, out=tmp_path / f"m.{fmt}")
    expected = predict_probabilities(load_model(run), images)
    got = exported_probabilities(exported.path, fmt, images)  # batch of 5: the batch axis is dynamic
    assert got.shape == (5, 2) and np.abs(got - expected).max() <= 1e-4
    one = exported_probabilities(exported.path, fmt, images[:1])
    assert np.abs(one - expected[:1]).max() <= 1e-4
    sidecar = json.loads(exported.sidecar.read_text())
    assert sidecar["class_names"] == ["bar", "disk"] and sidecar["input_shape"] == [-1, 1, 32, 32]
    assert sidecar["spatial_dims"] == 2 and sidecar["format"] == fmt
    assert sidecar["preprocess"]["normalization"] == run.config.preprocess.normalization


def test_onnx_metadata_props_and_cli(run_2d, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    assert cli_main(["export", str(run_2d), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out)
    proto = onnx.load(str(out))
    meta = json.loads({p.key: p.value for p in proto.metadata_props}["medclf"])
    assert meta["class_names"] == ["bar", "disk"] and meta["in_channels"] == 1
    assert meta["data"]["image_size"] == [32, 32] and meta["medclf_version"] == medclf.__version__
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert json.loads(out.with_name("model.onnx.json").read_text())["file"] == "model.onnx"
    assert cli_main(["export", str(run_2d), "--format", "torchscript"]) == 0
    assert (run_2d / "export" / "model.pt").is_file() and (run_2d / "export" / "model.pt.json").is_file()
    with pytest.raises(ConfigError, match="--format"):
        export_run(run_2d, "tflite")


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_3d_export_matches_pytorch_on_volumes(fmt, tmp_path):
    from test_volumes import write_npz
    path = write_npz(tmp_path / "blobs3d.npz", sizes=(("train", 16), ("val", 6), ("test", 6)))
    run_dir = medclf.train(path, overrides=["train.max_epochs=1"], out=tmp_path / "runs", name="vol",
                           progress=False).run_dir
    run = rundir.load_run(run_dir)
    images = torch.from_numpy(np.stack([preprocess_file(f"{path}#test/{i}", run.config)[0] for i in range(4)]))
    assert images.ndim == 5
    exported = export_run(run_dir, fmt)
    assert exported.metadata["spatial_dims"] == 3 and exported.metadata["input_shape"][2:] == [16, 16, 16]
    expected = predict_probabilities(load_model(run), images)
    assert np.abs(exported_probabilities(exported.path, fmt, images) - expected).max() <= 1e-4


def test_an_ensemble_run_exports_its_members_averaged(tmp_path):
    """A k-fold run exports one graph: its fold models and their averaging (the ensemble's
    probabilities, not one member's)."""
    from medclf.models.ensemble import Ensemble
    data = make_dataset(tmp_path / "data", per_class=(12, 12))
    run_dir = medclf.train(data, overrides=[*FAST, "train.folds=2", "train.fold_workers=1"], out=tmp_path / "runs",
                           name="folds", progress=False).run_dir
    run = rundir.load_run(run_dir)
    ensemble = load_model(run)
    assert isinstance(ensemble, Ensemble) and len(ensemble.members) == 2
    images = torch.rand(3, 1, 32, 32)
    expected = predict_probabilities(ensemble, images)
    with torch.no_grad():
        first_member = ensemble.members[0](images).softmax(1).numpy()
    assert np.abs(first_member - expected).max() > 1e-3  # the members differ, so averaging shows
    exported = export_run(run_dir, "onnx")
    assert np.abs(exported_probabilities(exported.path, "onnx", images) - expected).max() <= 1e-4
