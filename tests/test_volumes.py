"""NIfTI volumes, MedMNIST npz files, CSV manifests and 3D training end to end."""
import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml

import medclf
from medclf.config import Config
from medclf.data.formats.nifti import read_nifti
from medclf.data.prepare import prepare_splits
from medclf.data.preprocess import preprocess_all
from medclf.data.sources import discover_source
from medclf.data.sources.folder import discover
from medclf.data.sources.medmnist import discover_npz, resolve
from medclf.errors import BadFilesError, DataError
from medclf.plan import fingerprint, plan_config

from conftest import SHARED_DATA, needs_data

ADRENAL = SHARED_DATA / "medmnist" / "adrenalmnist3d_64.npz"

QUICK_REPORT = ["explain.gallery_size=1", "eval.bootstrap=0"]
"""A gallery of one right and one wrong volume (a volume's figure, nine panels in three slice
planes, takes about 0.5 s) and no bootstrap intervals: these tests check training, evaluation
and prediction."""


def blob_volume(kind: str, rng, size: int = 16) -> np.ndarray:
    """uint8 (D, H, W): a bright ball or a bright slab, at a random place."""
    volume = rng.normal(40, 8, (size,) * 3)
    zz, yy, xx = np.mgrid[:size, :size, :size]
    c = rng.integers(size // 3, 2 * size // 3, 3)
    if kind == "ball":
        volume[(zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 < (size // 4) ** 2] += 150
    else:
        volume[:, :, max(0, c[2] - 2):c[2] + 2] += 150
    return np.clip(volume, 0, 255).astype(np.uint8)


def write_npz(path, sizes=(("train", 40), ("val", 12), ("test", 12)), size=16, seed=0, **drop):
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in sizes:
        labels = np.arange(n) % 2
        arrays[f"{split}_images"] = np.stack([blob_volume("ball" if y else "slab", rng, size) for y in labels])
        arrays[f"{split}_labels"] = labels[:, None].astype(np.uint8)
    for key in drop:
        arrays.pop(key)
    np.savez_compressed(path, **arrays)
    return path


def volume_config(**data):
    cfg = Config().model_copy(deep=True)
    cfg.model.spatial_dims = 3
    for key, value in data.items():
        setattr(cfg.data, key, value)
    return cfg


def test_nifti_is_reoriented_to_ras_with_spacing(tmp_path):
    volume = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    affine = np.diag([-2.0, -1.0, 3.0, 1.0])  # LPS-like: first two axes point left and posterior
    nib.save(nib.Nifti1Image(volume, affine), tmp_path / "lps.nii.gz")
    data, spacing, ras_affine = read_nifti(str(tmp_path / "lps.nii.gz"))
    np.testing.assert_array_equal(data, volume[::-1, ::-1, :])
    assert spacing == (2.0, 1.0, 3.0)
    assert (np.diag(ras_affine)[:3] > 0).all()
    # already RAS: unchanged
    nib.save(nib.Nifti1Image(volume, np.diag([1.0, 1.0, 1.0, 1.0])), tmp_path / "ras.nii")
    np.testing.assert_array_equal(read_nifti(str(tmp_path / "ras.nii"))[0], volume)


def test_nifti_resample_to_spacing_and_resize(tmp_path):
    volume = np.zeros((10, 20, 20), np.float32)
    volume[:, 5:15, 5:15] = 100
    nib.save(nib.Nifti1Image(volume, np.diag([2.0, 1.0, 1.0, 1.0])), tmp_path / "v.nii.gz")
    cfg = volume_config(image_size=[8, 8, 8])
    cfg.preprocess.spacing = [1.0, 2.0, 2.0]
    cfg.preprocess.resize = "none"
    arrays, _, bad = preprocess_all([str(tmp_path / "v.nii.gz")], cfg)
    # MONAI Spacing keeps the extent between the first and last voxel centres: (n - 1) * old / new + 1
    assert not bad and arrays[0].shape[1:] == (19, 10, 10)
    cfg.preprocess.resize = "resize"
    cfg.preprocess.spacing = None
    arrays, _, _ = preprocess_all([str(tmp_path / "v.nii.gz")], cfg)
    assert arrays[0].shape == (1, 8, 8, 8)


def test_bad_volumes_are_named(tmp_path):
    nib.save(nib.Nifti1Image(np.ones((8, 8), np.float32), np.eye(4)), tmp_path / "flat.nii.gz")
    (tmp_path / "broken.nii.gz").write_bytes(b"\x1f\x8b garbage")
    cfg = volume_config(image_size=[8, 8, 8])
    _, _, bad = preprocess_all([str(tmp_path / "flat.nii.gz"), str(tmp_path / "broken.nii.gz")], cfg)
    reasons = dict(bad)
    assert "is 2D (shape 8x8) where a 3D volume is expected" in reasons[str(tmp_path / "flat.nii.gz")]
    assert "NIfTI" in reasons[str(tmp_path / "broken.nii.gz")]
    with pytest.raises(BadFilesError, match="flat.nii.gz"):
        from medclf.data.preprocess import check_bad_files
        check_bad_files(bad, "error")


def test_different_shapes_without_resize_is_an_error(tmp_path):
    for cls, shape, n in (("a", (8, 8, 8), 7), ("b", (8, 8, 6), 5)):
        for i in range(n):
            (tmp_path / "d" / cls).mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(np.full(shape, i, np.float32), np.eye(4)), tmp_path / "d" / cls / f"{i}.nii.gz")
    manifest = discover(tmp_path / "d", val_fraction=0.2, test_fraction=0.2)
    cfg = volume_config(image_size=[8, 8, 8])
    cfg.preprocess.resize = "none"
    with pytest.raises(DataError, match=r"different shapes.*\n.*b/\d.nii.gz: 8x8x6"):
        prepare_splits(manifest, cfg)


def test_npz_uses_official_splits_and_plans_3d(tmp_path):
    path = write_npz(tmp_path / "blobs3d.npz")
    manifest = discover_source(str(path), Config().data)
    assert manifest.counts() == {"train": {"0": 20, "1": 20}, "val": {"0": 6, "1": 6}, "test": {"0": 6, "1": 6}}
    assert manifest.frame.path[0].endswith("blobs3d.npz#train/0")
    fp = fingerprint(manifest)
    assert fp["spatial_dims"] == 3 and fp["median_size"] == [16, 16, 16] and fp["readers"] == {"npz": 64}
    plan = plan_config(fp)
    assert plan["model"]["spatial_dims"] == 3 and plan["data"]["image_size"] == [16, 16, 16]
    assert plan["preprocess"]["normalization"] == "scale255"
    # no val split in the file: carved out of train
    no_val = write_npz(tmp_path / "noval.npz", sizes=(("train", 40), ("test", 12)))
    counts = discover_source(str(no_val), Config().data).counts()
    assert sum(counts["val"].values()) == 6 and sum(counts["train"].values()) == 34


def test_bad_npz_files(tmp_path):
    missing = write_npz(tmp_path / "nolabels.npz", test_labels=True)
    with pytest.raises(DataError, match=r"nolabels.npz: missing key\(s\) test_labels"):
        discover_npz(str(missing))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="junk.npz: not a readable .npz"):
        discover_npz(str(tmp_path / "junk.npz"))
    with pytest.raises(DataError, match="medmnist_root|not installed"):
        resolve("medmnist:pneumoniamnist", str(tmp_path))
    copy = write_npz(tmp_path / "pneumoniamnist.npz", size=8)
    assert resolve("medmnist:pneumoniamnist", str(tmp_path)) == copy


def test_csv_manifest_keeps_patients_in_one_split(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for patient in range(30):
        label = "ball" if patient % 3 == 0 else "slab"
        for k in range(int(rng.integers(1, 4))):
            path = tmp_path / "img" / f"p{patient}_{k}.nii.gz"
            path.parent.mkdir(exist_ok=True)
            nib.save(nib.Nifti1Image(blob_volume(label, rng, 8).astype(np.float32), np.eye(4)), path)
            rows.append({"path": f"img/{path.name}", "label": label, "patient_id": f"P{patient}"})
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    manifest = discover_source(str(tmp_path / "manifest.csv"), Config().data)
    frame = manifest.frame
    assert set(frame.split) == {"train", "val", "test"}
    assert (frame.groupby("patient_id").split.nunique() == 1).all()
    for split in ("val", "test"):
        assert set(frame[frame.split == split].label) == {"ball", "slab"}  # stratified
    # a row pointing to a missing file
    pd.DataFrame(rows + [{"path": "img/gone.nii.gz", "label": "ball", "patient_id": "P99"}]).to_csv(
        tmp_path / "bad.csv", index=False)
    with pytest.raises(DataError, match=r"bad.csv: 1 row\(s\) point to files that do not exist:\n  row \d+: .*gone.nii.gz"):
        discover_source(str(tmp_path / "bad.csv"), Config().data)


def test_train_3d_from_npz_end_to_end(tmp_path):
    path = write_npz(tmp_path / "blobs3d.npz")
    result = medclf.train(path, overrides=["train.max_epochs=2", *QUICK_REPORT], out=tmp_path / "runs", name="vol",
                          progress=False)
    run = result.run_dir
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"]["spatial_dims"] == 3 and config["data"]["image_size"] == [16, 16, 16]
    split = pd.read_csv(run / "split.csv")
    assert split.path.str.contains(r"blobs3d.npz#(?:train|val|test)/\d+$").all()
    test = json.loads((run / "test_metrics.json").read_text())
    assert test["n"] == 12 and 0 <= test["roc_auc"] <= 1
    assert test["tta"]["views"] == 8  # the 3D plan: predictions average the 8 flips of a volume
    _, again = medclf.evaluate(run)
    assert again["roc_auc"] == test["roc_auc"]
    out, other = medclf.evaluate(run, data=path)  # the npz's test split, evaluated apart
    assert out == run / "evaluations" / "blobs3d.npz" and other["roc_auc"] == test["roc_auc"]
    frame = medclf.predict(run, [f"{path}#test/0", f"{path}#test/1"])
    assert (frame.error == "").all() and frame.probability.between(0, 1).all()
    assert (frame.tta_views == 8).all()


@needs_data(ADRENAL)
def test_folder_of_nifti_volumes_from_adrenalmnist3d(tmp_path):
    """Part of AdrenalMNIST3D exported to class folders of .nii.gz trains like PNG folders."""
    with np.load(ADRENAL) as data:
        images, labels = data["train_images"][:48], data["train_labels"][:48, 0]
    names = {0: "normal", 1: "hyperplasia"}
    picked = np.concatenate([np.flatnonzero(labels == 0)[:14], np.flatnonzero(labels == 1)[:8]])
    for i in picked:
        folder = tmp_path / "adrenal" / names[labels[i]]
        folder.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(images[i], np.diag([1.0, 1.0, 1.0, 1.0])), folder / f"case{i:03d}.nii.gz")
    result = medclf.train(tmp_path / "adrenal", out=tmp_path / "runs", name="nifti", progress=False,
                          overrides=["train.max_epochs=1", "data.image_size=[16,16,16]"])
    config = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    dataset = json.loads((result.run_dir / "dataset.json").read_text())
    assert config["model"]["spatial_dims"] == 3 and dataset["readers"] == {"nifti": len(picked)}
    assert dataset["median_size"] == [64, 64, 64] and dataset["median_spacing"] == [1.0, 1.0, 1.0]
    assert result.metrics["n"] == sum(dataset["counts"]["test"].values()) > 0


def test_max_shrink_keeps_thin_structures_of_masks(tmp_path):
    """preprocess.shrink=max max-pools a binary mask to the grid; area averaging fades a
    one-voxel-thick line to grey (it fills 2 of the 8 voxels of each 2x2x2 block)."""
    from medclf.data.preprocess import fit_to_size
    mask = np.zeros((1, 16, 16, 16), np.float32)
    mask[0, 5, 7, :] = 255  # a line one voxel thick
    cfg = volume_config(image_size=[8, 8, 8])
    area = fit_to_size(mask, cfg)
    cfg.preprocess.shrink = "max"
    pooled = fit_to_size(mask, cfg)
    assert pooled.shape == area.shape == (1, 8, 8, 8)
    assert pooled.max() == 255 and pooled[0, 2, 3].tolist() == [255] * 8 and (pooled > 0).sum() == 8
    assert area.max() == pytest.approx(255 / 4)
    # enlarging still interpolates
    cfg.data.image_size = [20, 20, 20]
    assert fit_to_size(mask, cfg).shape == (1, 20, 20, 20)
    # 2D images from files: decoded at full size, then max-pooled
    import io

    from PIL import Image

    from medclf.data.preprocess import preprocess_bytes
    line = np.zeros((64, 64), np.uint8)
    line[21, :] = 255
    buffer = io.BytesIO()
    Image.fromarray(line).save(buffer, format="PNG")
    cfg2d = Config().model_copy(deep=True)
    cfg2d.data.image_size = [16, 16]
    cfg2d.preprocess.normalization = "scale255"
    bilinear = preprocess_bytes(buffer.getvalue(), cfg2d)
    cfg2d.preprocess.shrink = "max"
    pooled2d = preprocess_bytes(buffer.getvalue(), cfg2d)
    assert pooled2d[0, 5].tolist() == [1.0] * 16 and pooled2d.sum() == 16
    assert bilinear.max() < 1.0


def test_binary_npz_volumes_plan_max_shrink_and_maxpool_network(tmp_path):
    masks = tmp_path / "masks.npz"
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 12), ("val", 4), ("test", 4)):
        arrays[f"{split}_images"] = (rng.random((n, 16, 16, 16)) > 0.7).astype(np.uint8) * 255
        arrays[f"{split}_labels"] = (np.arange(n) % 2)[:, None].astype(np.uint8)
    np.savez(masks, **arrays)
    grey = write_npz(tmp_path / "grey.npz")
    fp_masks = fingerprint(discover_source(str(masks), Config().data))
    fp_grey = fingerprint(discover_source(str(grey), Config().data))
    assert fp_masks["binary"] is True and fp_grey["binary"] is False
    plan_masks, plan_grey = plan_config(fp_masks), plan_config(fp_grey)
    assert plan_masks["preprocess"]["shrink"] == "max" and plan_grey["preprocess"]["shrink"] == "area"
    for plan in (plan_masks, plan_grey):
        assert plan["model"]["downsample"] == "maxpool" and plan["model"]["filters"] == [8, 16, 32, 64]
        Config.model_validate(plan)


def test_plans_for_large_2d_small_2d_and_3d():
    counts = {"train": {"a": 3000, "b": 1000}}  # above the k-fold protocol's size (test_folds.py)
    large = plan_config({"spatial_dims": 2, "median_size": [1500, 1600], "counts": counts, "readers": {"image": 400}})
    assert large["data"]["image_size"] == [224, 224] and large["model"]["spatial_dims"] == 2
    assert large["augment"]["batched"] is True and large["preprocess"]["normalization"] == "percentile"
    assert large["augment"]["flip_prob"] > 0  # only thumbnails lose the left-right flip
    assert large["train"]["clean_bn_statistics"] is True  # no weight average: statistics re-estimated
    assert large["model"]["stem_stride"] == 2 and large["model"]["filters"] == Config().model.filters
    small = plan_config({"spatial_dims": 2, "median_size": [28, 28], "counts": counts, "readers": {"npz": 400},
                         "dtypes": {"uint8": 400}})
    assert small["data"]["image_size"] == [28, 28] and small["model"]["stem_stride"] == 1
    assert small["augment"]["batched"] is True and small["augment"]["flip_prob"] == 0
    assert small["train"]["ema_epochs"] > 0 and small["train"]["clean_bn_statistics"] is False
    volume = plan_config({"spatial_dims": 3, "median_size": [40, 128, 128], "counts": counts,
                          "readers": {"nifti": 400}})
    assert volume["model"]["spatial_dims"] == 3 and volume["data"]["image_size"] == [10, 32, 32]
    assert volume["augment"]["batched"] is True and volume["preprocess"]["normalization"] == "percentile"
    assert volume["train"]["ema_epochs"] > 0 and volume["train"]["clean_bn_statistics"] is False
    assert volume["eval"]["tta"] is True and small["eval"]["tta"] is False
    assert volume["model"].get("projection_branch", False) is False
    Config.model_validate(volume)
    # binary masks: up to 64 voxels a side for the projection branch, the 3D branch pooled to 32
    masks = plan_config({"spatial_dims": 3, "median_size": [80, 128, 128], "counts": counts,
                         "readers": {"npz": 400}, "binary": True})
    assert masks["data"]["image_size"] == [40, 64, 64] and masks["preprocess"]["shrink"] == "max"
    assert masks["model"]["projection_branch"] is True and masks["model"]["volume_pool"] == 1
    small_masks = plan_config({"spatial_dims": 3, "median_size": [16, 24, 24], "counts": counts,
                               "readers": {"npz": 400}, "binary": True})
    assert small_masks["data"]["image_size"] == [16, 24, 24] and small_masks["model"]["volume_pool"] == 0
    Config.model_validate(masks)


@pytest.mark.parametrize("train_counts, sampler", [
    ({"a": 300, "b": 100}, "balanced"),   # 3:1
    ({"a": 200, "b": 100}, "balanced"),   # 2:1, the threshold
    ({"a": 111, "b": 70, "c": 70}, "shuffle"),  # covid19-xray's 1.6:1
    ({"a": 100, "b": 100}, "shuffle"),
])
def test_imbalanced_training_split_gets_balanced_batches(train_counts, sampler):
    for dims, size in ((2, [28, 28]), (2, [512, 512]), (3, [64, 64, 64])):
        plan = plan_config({"spatial_dims": dims, "median_size": size, "counts": {"train": train_counts,
                            "test": {k: 10 for k in train_counts}}, "readers": {"image": 1}})
        assert plan["train"]["sampler"] == sampler
        assert Config.model_validate(plan).train.sampler == sampler


def test_binary_masks_train_the_projection_branch_end_to_end(tmp_path):
    """Masks plan the fused 2D-projection + 3D network; training, evaluation, prediction and
    Grad-CAM all run on it."""
    from medclf.explain import explain_image
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 24), ("val", 8), ("test", 8)):
        labels = np.arange(n) % 2
        masks = np.zeros((n, 16, 16, 16), np.uint8)
        for i, label in enumerate(labels):  # a cube or a flat slab, at a random place
            z, y, x = rng.integers(2, 8, 3)
            masks[i, z:z + (6 if label else 2), y:y + 6, x:x + 6] = 255
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = masks, labels[:, None].astype(np.uint8)
    path = tmp_path / "masks.npz"
    np.savez(path, **arrays)
    result = medclf.train(path, overrides=["train.max_epochs=2", *QUICK_REPORT], out=tmp_path / "runs", name="masks",
                          progress=False)
    config = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    assert config["model"]["projection_branch"] is True and config["model"]["volume_pool"] == 0
    assert "projections" in (result.run_dir / "architecture.txt").read_text()
    _, again = medclf.evaluate(result.run_dir)
    assert again["roc_auc"] == result.metrics["roc_auc"] and result.metrics["n"] == 8
    frame = medclf.predict(result.run_dir, [f"{path}#test/0"])
    assert (frame.error == "").all() and frame.probability.between(0, 1).all()
    explanation = explain_image(result.run_dir, arrays["test_images"][1])
    assert explanation.heatmap.shape == (16, 16, 16) and np.isfinite(explanation.heatmap).all()
    assert abs(sum(explanation.probabilities.values()) - 1) < 1e-5
