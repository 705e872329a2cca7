"""Carved validation/test splits lose their copies of training images to training
(medclf.data.regroup), in memory and on disk, and a training run ends with none left."""
import json
import logging
import shutil

import numpy as np
import pandas as pd
import torch

from medclf.cli import main
from medclf.data.regroup import copies_of_training, move_to_train
from medclf.data.sources import Manifest
from medclf.provenance import manifest_hash

from conftest import make_dataset

FAST = ["--set", "train.folds=0", "--set", "train.max_epochs=1", "--set", "data.image_size=[32,32]", "--set", "model.filters=[8,16]",
        "--set", "train.batch_size=8", "--no-progress", "--set", "eval.bootstrap=0",
        "--set", "explain.gallery_size=0"]


def _manifest():
    rows = [("t0", "a", "train"), ("t1", "b", "train"), ("t2", "a", "train"), ("t3", "b", "train"),
            ("v0", "a", "val"), ("v1", "a", "val"), ("v2", "b", "val"), ("v3", "b", "val"), ("v4", "a", "val"),
            ("s0", "a", "test"), ("s1", "b", "test"), ("s2", "b", "test"), ("s3", "a", "test")]
    frame = pd.DataFrame(rows, columns=["path", "label", "split"])
    return Manifest(frame, ["a", "b"], carved=("val", "test"))


def _splits(manifest):
    """Each image is filled with its row number in the manifest, so a moved image is found by value."""
    frame, index = manifest.frame, {"a": 0, "b": 1}
    splits = {}
    for split in ("train", "val", "test"):
        rows = np.flatnonzero(frame.split == split)
        images = torch.stack([torch.full((1, 4, 4), float(r)) for r in rows])
        splits[split] = (images, torch.tensor([index[frame.label[r]] for r in rows]))
    return splits


def test_copies_are_found_through_chains_of_copies_and_patients_but_a_class_stays():
    manifest = _manifest()
    # v1 copies v0, which copies t0: both reach training; s1 copies t3; v2 and v3, val's only
    # images of class b, both copy training images: they stay, so that val keeps the class
    pairs = [("v1", "v0"), ("v0", "t0"), ("s1", "t3"), ("v2", "t1"), ("v3", "t3"), ("s0", "s2")]
    assert sorted(copies_of_training(manifest.frame, pairs, ("val", "test"))) == ["s1", "v0", "v1"]
    assert sorted(copies_of_training(manifest.frame, pairs, ("test",))) == ["s1"]  # a given val stays
    # multi-label findings and regression targets have no classes to keep
    assert sorted(copies_of_training(manifest.frame, pairs, ("val", "test"), keep_classes=False)) \
        == ["s1", "v0", "v1", "v2", "v3"]
    # but no carved split is emptied: when v4 is a copy too, val keeps all five
    assert copies_of_training(manifest.frame, pairs + [("v4", "t2")], ("val", "test"), keep_classes=False) == ["s1"]
    assert copies_of_training(manifest.frame, [("s0", "s2")], ("val", "test")) == []
    ids = ["P1", "P2", "P3", "P4", "P5", "P5", "P6", "P7", "P0", "P4", "P8", "P9", "P10"]
    # s0 is another image of t3's patient P4; s1 copies t3
    assert sorted(copies_of_training(manifest.frame.assign(patient_id=ids), [("s1", "t3")], ("val", "test"))) \
        == ["s0", "s1"]


def test_moved_images_join_training_with_their_labels_in_manifest_order():
    manifest = _manifest()
    splits = _splits(manifest)
    new, moved = move_to_train(splits, manifest, ["v1", "s1", "t2"])
    frame = moved.frame
    assert list(frame.path[frame.split == "train"]) == ["t0", "t1", "t2", "t3", "v1", "s1"]
    assert list(frame.path[frame.split == "val"]) == ["v0", "v2", "v3", "v4"]
    assert moved.carved == ("val", "test") and len(frame) == len(manifest.frame)
    original = {p: i for i, p in enumerate(manifest.frame.path)}
    for split in ("train", "val", "test"):
        images, labels = new[split]
        paths = list(frame.path[frame.split == split])
        assert [original[p] for p in paths] == [int(v) for v in images[:, 0, 0, 0]]
        assert labels.tolist() == moved.labels(split)
    assert move_to_train(splits, manifest, ["t0"])[1] is manifest  # nothing to move


def test_a_run_moves_carved_copies_of_training_images_to_training(tmp_path, caplog):
    root = make_dataset(tmp_path / "d", per_class=(16, 16))
    for cls in ("disk", "bar"):  # half the training images get an exact twin: a carve cannot miss them all
        for path in sorted((root / "train" / cls).glob("*.png"))[::2]:
            shutil.copy(path, path.with_name("twin_" + path.name))
    with caplog.at_level(logging.WARNING, logger="medclf"):
        assert main(["train", str(root), "--out", str(tmp_path / "runs"), "--name", "r", *FAST]) == 0
    run = tmp_path / "runs" / "r"
    split = pd.read_csv(run / "split.csv")
    dataset = json.loads((run / "dataset.json").read_text())
    inspection = json.loads((run / "inspection.json").read_text())
    assert dataset["carved_splits"] == ["val"] and dataset["moved_to_train"] >= 2
    assert inspection["n_val_leaked"] == 0 and "moved" in caplog.text
    by_name = split.assign(name=split.path.str.rsplit("/", n=1).str[1].str.removeprefix("twin_"), cls=split.label)
    val = by_name[by_name.split == "val"]
    train_names = set(zip(by_name.cls[by_name.split == "train"], by_name.name[by_name.split == "train"]))
    assert len(val) >= 2 and not set(zip(val.cls, val.name)) & train_names  # no twin validates the other
    assert dataset["counts"]["val"] == val.label.value_counts().to_dict()
    provenance = json.loads((run / "provenance.json").read_text())
    assert provenance["manifest_sha256"] == manifest_hash(split)  # the hash of the split as trained
    metrics = json.loads((run / "test_metrics.json").read_text())
    assert metrics["n"] == int((split.split == "test").sum())
