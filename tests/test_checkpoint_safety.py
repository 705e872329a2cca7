"""A checkpoint whose pickle runs code is refused by every loader, before anything in it runs.

The payload is an object whose ``__reduce__`` makes unpickling call ``os.system`` (or
``pathlib.Path.touch``) to create a marker file; the marker must never appear. It is planted
as a user's ``model.weights`` file, as a run's ``checkpoints/best.ckpt`` (evaluate, predict,
the service, explain) and as its ``checkpoints/last.ckpt`` (``medclf train --resume``).
"""
from __future__ import annotations

import os
import pathlib
import shlex
import shutil
from pathlib import Path

import pytest
import torch

from medclf.checkpoints import load_checkpoint
from medclf.errors import ConfigError, MedclfError, RunDirError

from conftest import make_dataset, synthetic_image

FAST = ["train.max_epochs=2", "data.image_size=[24,24]", "model.filters=[4,8]", "train.batch_size=8",
        "trainer.accelerator=cpu", "train.keep_weights=best"]  # both checkpoint files


class ShellPayload:
    """Unpickling this runs ``touch MARKER`` in a shell."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


class TouchPayload:
    """Unpickling this calls ``pathlib.Path.touch(marker)``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


PAYLOADS = [ShellPayload, TouchPayload]


def assert_refused(error: MedclfError, path: Path, marker: Path) -> None:
    message = str(error)
    assert str(path) in message, message
    assert "contains code or objects that are not weights" in message, message
    assert not marker.exists(), "the checkpoint's code ran"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A dataset and a finished 2-epoch run ``runs/tiny`` on it (classes bar, disk)."""
    from medclf.commands.train import train
    root = tmp_path_factory.mktemp("ckpt_safety")
    data = make_dataset(root / "data", per_class=(10, 10))
    run = train(data, out=root / "runs", name="tiny", progress=False, overrides=FAST).run_dir
    return data, run


def tampered(real: Path, target: Path, marker: Path, payload=ShellPayload) -> Path:
    """``real``'s content with the payload added, written to ``target`` with ``torch.save``
    (as a tampered download of a genuine checkpoint would be)."""
    saved = torch.load(real, map_location="cpu", weights_only=True)
    saved["callbacks"] = {**saved.get("callbacks", {}), "extra": payload(marker)}
    torch.save(saved, target)
    return target


def evil_run(trained, tmp_path: Path, which: str) -> tuple[Path, Path, Path]:
    """A copy of the trained run in ``tmp_path/runs/evil`` whose checkpoint ``which``
    (``best.ckpt``/``last.ckpt``) carries the payload; returns (run, checkpoint, marker)."""
    _, run = trained
    copy = tmp_path / "runs" / "evil"
    shutil.copytree(run, copy)
    marker = tmp_path / "MARKER"
    ckpt = copy / "checkpoints" / which
    tampered(run / "checkpoints" / which, ckpt, marker)
    return copy, ckpt, marker


@pytest.mark.parametrize("payload", PAYLOADS)
def test_the_payload_really_runs_code_when_unpickled_fully(tmp_path, payload):
    """Guards the other tests: without ``weights_only`` this file does create the marker."""
    marker = tmp_path / "MARKER"
    torch.save({"state_dict": {}, "x": payload(marker)}, tmp_path / "evil.pt")
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.exists()


def test_genuine_run_checkpoints_load_with_weights_only(trained):
    _, run = trained
    for name in ("best.ckpt", "last.ckpt"):
        saved = load_checkpoint(run / "checkpoints" / name)
        assert {"state_dict", "epoch", "optimizer_states", "loops"} <= set(saved), name
        assert all(isinstance(v, torch.Tensor) for v in saved["state_dict"].values())


@pytest.mark.parametrize("payload", PAYLOADS)
def test_user_weights_file_is_refused(trained, tmp_path, payload):
    from medclf.config import validate
    from medclf.models import create_model, load_weights
    _, run = trained
    marker = tmp_path / "MARKER"
    # a plain state_dict with the payload beside the tensors, and a tampered Lightning checkpoint
    model = create_model(validate({"model": {"filters": [4, 8]}}).model, 1, 2)
    plain = tmp_path / "weights.pt"
    torch.save({**model.state_dict(), "extra": payload(marker)}, plain)
    ckpt = tampered(run / "checkpoints" / "best.ckpt", tmp_path / "weights.ckpt", marker, payload)
    for path in (plain, ckpt):
        with pytest.raises(ConfigError, match="model.weights") as err:
            load_weights(model, str(path))
        assert_refused(err.value, path, marker)
    cfg = validate({"model": {"filters": [4, 8], "weights": str(plain)}})
    with pytest.raises(ConfigError) as err:
        create_model(cfg.model, 1, 2)
    assert_refused(err.value, plain, marker)


def test_evaluate_refuses_a_run_checkpoint_with_code(trained, tmp_path):
    from medclf.commands.evaluate import evaluate_run
    run, ckpt, marker = evil_run(trained, tmp_path, "best.ckpt")
    with pytest.raises(RunDirError, match="^checkpoint: ") as err:
        evaluate_run(run)
    assert_refused(err.value, ckpt, marker)


def test_predict_refuses_a_run_checkpoint_with_code(trained, tmp_path):
    from medclf.commands.predict import predict_files
    data, _ = trained
    run, ckpt, marker = evil_run(trained, tmp_path, "best.ckpt")
    with pytest.raises(RunDirError, match="^checkpoint: ") as err:
        predict_files(run, sorted((data / "test" / "disk").iterdir())[:2])
    assert_refused(err.value, ckpt, marker)


def test_explain_refuses_a_run_checkpoint_with_code(trained, tmp_path):
    import numpy as np

    from medclf.explain import explain_image
    run, ckpt, marker = evil_run(trained, tmp_path, "best.ckpt")
    with pytest.raises(RunDirError, match="^checkpoint: ") as err:
        explain_image(run, synthetic_image("disk", np.random.default_rng(0)))
    assert_refused(err.value, ckpt, marker)


def test_service_refuses_a_run_checkpoint_with_code(trained, tmp_path):
    pytest.importorskip("fastapi")
    import io

    import numpy as np
    from fastapi.testclient import TestClient
    from PIL import Image

    from medclf.serve import create_app
    run, ckpt, marker = evil_run(trained, tmp_path, "best.ckpt")
    buffer = io.BytesIO()
    Image.fromarray(synthetic_image("disk", np.random.default_rng(0))).save(buffer, format="PNG")
    client = TestClient(create_app(run.parent))
    response = client.post("/api/runs/evil/predict", files={"file": ("x.png", buffer.getvalue(), "image/png")})
    assert response.status_code == 500, response.text
    detail = response.json()["detail"]
    assert "contains code or objects that are not weights" in detail and "Traceback" not in response.text
    assert "best.ckpt" in detail and not marker.exists()


def test_resume_refuses_a_last_checkpoint_with_code(trained, tmp_path):
    from medclf.commands.train import train
    run, ckpt, marker = evil_run(trained, tmp_path, "last.ckpt")
    (run / "test_metrics.json").unlink()  # as if killed after the last epoch's checkpoint
    with pytest.raises(RunDirError) as err:
        train(None, resume=run, progress=False)
    assert_refused(err.value, ckpt, marker)


def test_lightning_checkpoint_reader_refuses_it_too(trained, tmp_path, monkeypatch):
    """``trainer.fit(ckpt_path=...)`` reads the file again through the trainer's checkpoint IO
    (:class:`AtomicCheckpointIO`), which forces ``weights_only=True``: Lightning 2.6 passes
    None, which torch >= 2.6 takes as True unless ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` is set;
    with it set, Lightning's own reader would run the payload."""
    import pickle

    from lightning.fabric.plugins.io import TorchCheckpointIO

    from medclf.training.reliability import AtomicCheckpointIO
    _, run = trained
    marker = tmp_path / "MARKER"
    ckpt = tampered(run / "checkpoints" / "last.ckpt", tmp_path / "last.ckpt", marker)
    with pytest.raises(pickle.UnpicklingError):
        AtomicCheckpointIO().load_checkpoint(ckpt)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(pickle.UnpicklingError):
        AtomicCheckpointIO().load_checkpoint(ckpt)
    assert not marker.exists()
    TorchCheckpointIO().load_checkpoint(ckpt)  # Lightning's default reader under that setting
    assert marker.exists()


def test_torn_and_foreign_files_are_clear_errors(tmp_path):
    torn = tmp_path / "torn.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(3)}}, torn)
    torn.write_bytes(torn.read_bytes()[:200])
    with pytest.raises(RunDirError, match=r"checkpoint: cannot load .*torn\.ckpt"):
        load_checkpoint(torn)
    with pytest.raises(ConfigError, match=r"model.weights: file not found: .*missing\.pt"):
        load_checkpoint(tmp_path / "missing.pt", ConfigError, "model.weights")
