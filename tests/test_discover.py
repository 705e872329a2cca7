import numpy as np
import pytest
from PIL import Image

from medclf.config import validate
from medclf.data.sources.folder import discover
from medclf.errors import ConfigError, DataError

from conftest import make_dataset, synthetic_image


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


def _patients_tree(root, per_patient=(1, 2, 3, 4)):
    """train/{disk,bar} and test/{disk,bar}; training images named ``pNN_<class>_k.png``,
    1-4 images per patient, so an ungrouped carve splits patients."""
    rng = np.random.default_rng(0)
    patient = 0
    for split, n_patients in (("train", 16), ("test", 3)):
        for cls in ("disk", "bar"):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for _ in range(n_patients):
                patient += 1
                for k in range(per_patient[patient % len(per_patient)]):
                    Image.fromarray(synthetic_image(cls, rng)).save(folder / f"p{patient:02d}_{cls}_{k}.png")
    return root


def test_patient_id_pattern_keeps_each_patients_images_in_one_carved_split(tmp_path, caplog):
    root = _patients_tree(tmp_path / "d")
    ungrouped = discover(root, val_fraction=0.3, seed=3).frame
    ungrouped_ids = ungrouped.path.str.extract(r"/(p\d+)_")[0]
    assert (ungrouped.assign(pid=ungrouped_ids).groupby("pid").split.nunique() > 1).any()  # the trap
    for seed in (0, 1, 2, 3):
        manifest = discover(root, val_fraction=0.3, seed=seed, patient_id_pattern=r"^(p\d+)_")
        frame = manifest.frame
        assert set(frame.patient_id) == set(ungrouped_ids)
        assert (frame.groupby("patient_id").split.nunique() == 1).all()
        assert set(manifest.counts()["val"].values()) and min(manifest.counts()["val"].values()) >= 1
        assert manifest.carved == ("val",)
    # a pattern without a group takes its whole match
    whole = discover(root, val_fraction=0.3, seed=0, patient_id_pattern=r"^p\d+").frame
    assert set(whole.patient_id) == set(ungrouped_ids)
    # patient numbers shared by train/ and test/ are reported, not refused
    first = sorted((root / "test" / "disk").iterdir())[0]
    (root / "test" / "disk" / "p01_disk_9.png").write_bytes(first.read_bytes())
    discover(root, patient_id_pattern=r"^(p\d+)_")
    assert "also name images of the test/ folder" in caplog.text


def test_patient_id_pattern_names_a_file_it_does_not_match(tmp_path):
    root = _patients_tree(tmp_path / "d")
    first = sorted((root / "train" / "bar").iterdir())[0]
    (root / "train" / "bar" / "scan-7.png").write_bytes(first.read_bytes())
    with pytest.raises(DataError, match=r"patient_id_pattern .* 1 file\(s\), e\.g\. .*scan-7\.png"):
        discover(root, patient_id_pattern=r"^(p\d+)_")
    with pytest.raises(ConfigError, match="patient_id_pattern"):
        validate({"data": {"patient_id_pattern": "(p\\d+"}})
