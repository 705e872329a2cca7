"""Fine-tuning from another run (--init-from): matching layers loaded, a new head, frozen
backbone phase, backbone learning-rate scale, provenance; and the leakage check of this
run's validation/test images against the source run's training images (generated data)."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from PIL import Image, ImageEnhance

import medclf
from medclf import rundir
from medclf.checkpoints import load_checkpoint
from medclf.config import validate
from medclf.errors import ConfigError
from medclf.models import create_model
from medclf.training.finetune import parameter_groups

from conftest import make_dataset

FAST = ["train.max_epochs=1", "data.image_size=[32,32]", "model.filters=[8,16]", "train.batch_size=8"]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A two-class run (disk, bar) to start from."""
    root = tmp_path_factory.mktemp("source")
    data = make_dataset(root / "data", per_class=(16, 16))
    return medclf.train(data, overrides=FAST, out=root / "runs", name="source", progress=False).run_dir


def source_weights(run_dir) -> dict:
    state = load_checkpoint(rundir.load_run(run_dir).checkpoint)["state_dict"]
    return {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}


def target_dataset(root, source_run):
    """Three classes with train/val/test folders; one test image is an exact copy of a
    source training image, one validation image a re-encoded, brightened copy of another."""
    data = make_dataset(root, per_class=(10, 10, 10), splits=("train", "val", "test"),
                        classes=("disk", "bar", "wide"), seed=7)
    train = rundir.load_run(source_run).split()
    train = train[train.split == "train"].reset_index(drop=True)
    exact, near = train.path[0], train.path[len(train) - 1]
    shutil.copy(exact, data / "test" / "disk" / "copied.png")
    image = Image.open(near).convert("L").resize((40, 40))
    ImageEnhance.Contrast(image).enhance(1.3).save(data / "val" / "bar" / "near.jpg", quality=85)
    return data, exact, near


def test_create_model_from_a_run_loads_matching_layers_and_a_new_head(source):
    model_cfg = rundir.load_run(source).config.model.model_copy(update={"weights": str(source)})
    network = create_model(model_cfg, 1, 3)  # three classes: the head cannot be loaded
    report = network.transfer_report
    weights = source_weights(source)
    own = network.state_dict()
    assert report.loaded and all(torch.equal(own[name], weights[name]) for name in report.loaded)
    head = [name for name, reason in report.skipped.items() if reason == "head"]
    assert head and all(own[name].shape[0] == 3 for name in head if name.endswith("weight"))
    assert set(report.loaded) | set(report.skipped) == set(own)
    same = create_model(model_cfg, 1, 2)
    assert not torch.equal(same.state_dict()[head[0]], weights[head[0]])  # same classes: still a new head
    with pytest.raises(ConfigError, match="no tensor .* matches"):
        create_model(validate({"model": {"name": "resnet18", "weights": str(source)}}).model, 1, 3)
    user_pt = source.parent / "plain.pt"  # a user's .pt state dict: loaded strictly, as before
    torch.save(weights, user_pt)
    plain = create_model(model_cfg.model_copy(update={"weights": str(user_pt)}), 1, 2)
    assert all(torch.equal(v, weights[k]) for k, v in plain.state_dict().items())


def test_parameter_groups_scale_the_backbone_learning_rate(source):
    network = create_model(validate({"model": {"filters": [8, 16]}}).model, 1, 3)
    cfg = validate({"train": {"lr": 1e-2, "backbone_lr_scale": 0.1}}).train
    groups = parameter_groups(network, 3, cfg)
    assert [g["lr"] for g in groups] == [pytest.approx(1e-3), 1e-2]
    assert sum(len(g["params"]) for g in groups) == len(list(network.parameters()))
    assert all(p.shape[0] == 3 for p in groups[1]["params"])  # the head: weight (3, F) and bias (3,)
    assert len(parameter_groups(network, 3, validate({}).train)) == 1


def test_init_from_run_freezes_backbone_records_source_and_flags_leaks(source, tmp_path, caplog):
    data, exact, near = target_dataset(tmp_path / "target", source)
    caplog.set_level("WARNING", logger="medclf")
    result = medclf.train(data, out=tmp_path / "runs", name="tuned", progress=False, init_from=source,
                          overrides=["train.max_epochs=2", "train.freeze_epochs=2", "train.batch_size=8", "train.folds=0",
                                     "data.image_size=[32,32]", "train.backbone_lr_scale=0.3",
                                     "eval.drop_duplicates=true", "augment.enabled=false"])
    run = result.run_dir
    config = rundir.load_run(run).config
    assert config.model.filters == [8, 16] and config.model.weights == str(source.resolve())
    provenance = json.loads((run / "provenance.json").read_text())
    assert provenance["init_from"]["source_run"] == str(source.resolve())
    assert provenance["init_from"]["n_loaded"] > 0 and len(provenance["init_from"]["checkpoint_sha256"]) == 64
    transfer = json.loads((run / "transfer.json").read_text())
    assert "head" in transfer["skipped"].values()
    # backbone frozen for both epochs: convolutions as in the source run; the head trained
    tuned, weights = source_weights(run), source_weights(source)
    convs = [k for k in weights if k.endswith("weight") and weights[k].ndim == 4]
    # (the planned EMA of the weights averages a constant tensor: equal up to float rounding)
    assert convs and all(torch.allclose(tuned[k], weights[k], atol=1e-6) for k in convs)
    head = [k for k, r in transfer["skipped"].items() if r == "head" and k.endswith("weight")]
    assert tuned[head[0]].shape[0] == 3
    # the leakage check: exact copy in test, near copy in val, listed and dropped
    inspection = json.loads((run / "inspection.json").read_text())
    leaks = inspection["source_run_leaks"]
    assert leaks["source_run"] == str(source.resolve()) and leaks["n_source_train"] > 0
    flagged = {split: {r["path"].split("/")[-1]: r["duplicates"] for r in leaks[split]} for split in ("val", "test")}
    assert [(d["path"], d["kind"]) for d in flagged["test"]["copied.png"]] == [(exact, "exact")]
    # (near.jpg may also resemble another source training image: generated disks look alike)
    assert (near, "near") in [(d["path"], d["kind"]) for d in flagged["val"]["near.jpg"]]
    assert flagged["val"]["near.jpg"][0]["correlation"] >= 0.97
    # (generated disks and bars at nearby places can also be near copies of each other: counted, not asserted)
    in_leaks = {r["path"] for r in inspection["leaks"]["test"]}
    assert {r["path"] for r in leaks["test"]} <= in_leaks and inspection["n_test_leaked"] == len(in_leaks)
    assert "TRAINING images of the source run" in caplog.text
    metrics = json.loads((run / "test_metrics.json").read_text())
    n_test = int((rundir.load_run(run).split().split == "test").sum())
    assert metrics["duplicates"]["dropped"] and metrics["n"] == n_test - len(in_leaks)
    assert any(p.endswith("copied.png") for p in metrics["duplicates"]["paths"])


def test_init_from_needs_a_run_directory(tmp_path):
    with pytest.raises(ConfigError, match="not a medclf run directory"):
        medclf.train(make_dataset(tmp_path / "d"), out=tmp_path / "runs", init_from=tmp_path, progress=False)
