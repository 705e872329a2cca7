import pytest
from PIL import Image

from medclf.data.sources.folder import discover
from medclf.errors import DataError

from conftest import make_dataset


def test_train_test_layout_carves_stratified_validation(tmp_path):
    root = make_dataset(tmp_path / "d", per_class=(20, 40))
    manifest = discover(root, val_fraction=0.15, seed=1)
    counts = manifest.counts()
    assert set(counts) == {"train", "val", "test"}
    assert counts["val"] == {"bar": 6, "disk": 3}  # 15 % of 60, stratified 2:1
    assert counts["test"] == {"bar": 13, "disk": 6}
    assert sum(counts["train"].values()) == 60 - 9
    assert manifest.class_names == ["bar", "disk"]
    assert discover(root, seed=1).frame.equals(manifest.frame)  # seeded
    assert not discover(root, seed=2).frame.equals(manifest.frame)


def test_existing_val_folder_is_used(tmp_path):
    root = make_dataset(tmp_path / "d", splits=("train", "val", "test"))
    manifest = discover(root)
    assert manifest.counts()["val"] == {"bar": 12, "disk": 12}


def test_flat_tree_is_split_three_ways(tmp_path):
    root = make_dataset(tmp_path / "flat", per_class=(40, 40), splits=("",))
    counts = discover(root, val_fraction=0.15, test_fraction=0.15).counts()
    assert counts["test"] == {"bar": 6, "disk": 6}
    assert counts["val"] == {"bar": 6, "disk": 6}
    assert counts["train"] == {"bar": 28, "disk": 28}


def test_hidden_files_ignored_and_unicode_names_work(tmp_path):
    root = make_dataset(tmp_path / "d", classes=("Viral Pneumonia", "Normal ü"))
    (root / "train" / "Normal ü" / ".DS_Store").write_bytes(b"junk")
    (root / "train" / "Normal ü" / "Thumbs.db").write_bytes(b"junk")
    (root / "train" / ".hidden").mkdir()
    Image.new("L", (8, 8)).save(root / "train" / "Normal ü" / "ünïcode näme.png")
    manifest = discover(root)
    assert manifest.class_names == ["Normal ü", "Viral Pneumonia"]
    paths = " ".join(manifest.frame.path)
    assert ".DS_Store" not in paths and "Thumbs.db" not in paths
    assert "ünïcode näme.png" in paths


def test_empty_class_and_single_class_are_errors(tmp_path):
    root = make_dataset(tmp_path / "d")
    (root / "train" / "empty").mkdir()
    with pytest.raises(DataError, match="empty.*no image files"):
        discover(root)
    one = make_dataset(tmp_path / "one", classes=("disk",), per_class=(10,))
    with pytest.raises(DataError, match="at least two class"):
        discover(one)
    with pytest.raises(DataError, match="not found"):
        discover(tmp_path / "missing")
