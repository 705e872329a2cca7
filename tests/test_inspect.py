"""medclf inspect on generated data: planted exact and near duplicates, unreadable files."""
import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image, ImageEnhance
from scipy.ndimage import gaussian_filter

from medclf.cli import main
from medclf.commands.inspect import inspect_dataset
from medclf.inspect.duplicates import near_duplicate_pairs, thumbnail

from conftest import SHARED_DATA, needs_data


def xray_like(rng, size=64):
    """Distinct images sharing a common layout (bright body, two dark 'lungs'), each with
    its own random anatomy: alike at low resolution, yet genuinely different images."""
    yy, xx = np.mgrid[:size, :size] / size
    body = np.exp(-((xx - 0.5) ** 2) / 0.08)
    lungs = np.exp(-(((xx - 0.3) ** 2) + (yy - 0.45) ** 2) / 0.02) + np.exp(-(((xx - 0.7) ** 2) + (yy - 0.45) ** 2) / 0.02)
    texture = gaussian_filter(rng.normal(size=(size, size)), 3)
    image = 0.5 * body - 0.4 * lungs + 2.5 * texture
    image = (image - image.min()) / (image.max() - image.min())
    return (image * 255).astype(np.uint8)


def build(root, rng, per_class=8):
    for split in ("train", "test"):
        for cls in ("a", "b"):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(xray_like(rng)).save(folder / f"{i}.png")


@pytest.fixture
def planted(tmp_path):
    root = tmp_path / "planted"
    build(root, np.random.default_rng(3))
    # exact copy of a training image in test (same class), and in another train class
    shutil.copy(root / "train/a/0.png", root / "test/a/exact_copy.png")
    shutil.copy(root / "train/b/1.png", root / "train/a/exact_copy_b1.png")
    # near copies: resized + JPEG re-encoded; brightness/contrast changed; noise added
    Image.open(root / "train/a/2.png").resize((48, 48), Image.Resampling.BICUBIC).save(
        root / "test/a/resized.jpg", quality=75)
    ImageEnhance.Contrast(ImageEnhance.Brightness(Image.open(root / "train/b/3.png")).enhance(1.2)).enhance(0.8).save(
        root / "test/b/brighter.png")
    noisy = np.asarray(Image.open(root / "test/b/4.png"), dtype=float) + np.random.default_rng(0).normal(0, 6, (64, 64))
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(root / "train/b/noisy_test_b4.png")
    return root


def test_planted_duplicates_are_all_found_and_nothing_else(planted):
    result = inspect_dataset(planted)
    exact = {frozenset(f["path"].split("planted/")[1] for f in g["files"]) for g in result["exact_duplicates"]}
    assert exact == {frozenset({"train/a/0.png", "test/a/exact_copy.png"}),
                     frozenset({"train/b/1.png", "train/a/exact_copy_b1.png"})}
    near = {frozenset(f["path"].split("planted/")[1] for f in p["files"]) for p in result["near_duplicates"]}
    assert near == {frozenset({"train/a/2.png", "test/a/resized.jpg"}),
                    frozenset({"train/b/3.png", "test/b/brighter.png"}),
                    frozenset({"test/b/4.png", "train/b/noisy_test_b4.png"})}
    conflicting = [g for g in result["exact_duplicates"] if g["conflicting_labels"]]
    assert len(conflicting) == 1
    leaked = {r["path"].split("planted/")[1] for r in result["leaks"]["test"]}
    # test images duplicating train (train/val carve-out may move a source image to val)
    assert leaked == {"test/a/exact_copy.png", "test/a/resized.jpg", "test/b/brighter.png", "test/b/4.png"}
    assert result["counts"]["test"] == {"a": 10, "b": 9}
    assert result["formats"] == {"PNG": 36, "JPEG": 1}
    assert result["intensity_range"] == [0.0, 255.0]
    assert result["unreadable"] == []


def test_distinct_lookalike_images_give_no_pair():
    rng = np.random.default_rng(11)
    images = [xray_like(rng) for _ in range(300)]
    thumbs = np.stack([thumbnail(i) for i in images])
    z = thumbs.reshape(300, -1) - thumbs.reshape(300, -1).mean(1, keepdims=True)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    corr = z @ z.T
    np.fill_diagonal(corr, 0)
    assert corr.max() > 0.5  # they do look alike
    assert near_duplicate_pairs(thumbs) == []


@needs_data(SHARED_DATA / "medmnist/pneumoniamnist_reduced.npz")
def test_real_xrays_reencoded_copies_found_without_false_pairs():
    data = np.load(SHARED_DATA / "medmnist/pneumoniamnist_reduced.npz")
    images = data["test_images"][:400]
    _, first = np.unique(images.reshape(len(images), -1), axis=0, return_index=True)
    images = images[np.sort(first)]  # distinct images only
    copies = []
    for k in range(0, 100, 10):  # re-encode ten of them: upsampled, JPEG
        buffer = io.BytesIO()
        Image.fromarray(images[k]).resize((56, 56), Image.Resampling.BILINEAR).save(buffer, "JPEG", quality=70)
        copies.append(np.asarray(Image.open(buffer)))
    thumbs = np.stack([thumbnail(i) for i in list(images) + copies])
    n = len(images)
    found = {(i, j) for i, j, _, _ in near_duplicate_pairs(thumbs)}
    assert found == {(k, n + c) for c, k in enumerate(range(0, 100, 10))}


def test_unreadable_files_are_listed_not_fatal(planted, tmp_path, capsys):
    folder = planted / "train" / "a"
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.jpg").write_text("not an image")
    data = (folder / "1.png").read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    out = tmp_path / "inspection.json"
    assert main(["inspect", str(planted), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    bad = {b["path"].rsplit("/", 1)[1]: b["reason"] for b in result["unreadable"]}
    assert set(bad) == {"empty.png", "text.jpg", "truncated.png"}
    assert "empty" in bad["empty.png"]
    assert result["n_readable"] == result["n_files"] - 3 == 37
    assert printed.count("UNREADABLE") == 3
    assert len(result["exact_duplicates"]) == 2  # the rest was still inspected


def test_voxel_spacing_per_split_from_nifti_headers(tmp_path, capsys):
    """Two known spacings A and B; one B volume is stored with permuted axes (header zooms
    (2.5, 0.8, 0.8)), so only the RAS+ reorientation of the reader gives it spacing B."""
    import nibabel as nib
    a, b = [1.5, 1.5, 3.0], [0.8, 0.8, 2.5]
    permuted = np.array([[0, 0.8, 0, 0], [0, 0, 0.8, 0], [2.5, 0, 0, 0], [0, 0, 0, 1]])
    rng = np.random.default_rng(0)
    layout = {("train", "x"): [a, a, a], ("train", "y"): [b, b, "permuted"],
              ("val", "x"): [a], ("val", "y"): [b], ("test", "x"): [b, b], ("test", "y"): [b, b]}
    for (split, cls), spacings in layout.items():
        folder = tmp_path / "vols" / split / cls
        folder.mkdir(parents=True)
        for i, spacing in enumerate(spacings):
            affine = permuted if spacing == "permuted" else np.diag(spacing + [1.0])
            nib.save(nib.Nifti1Image(rng.random((6, 7, 8)).astype(np.float32), affine), folder / f"{i}.nii.gz")
    assert nib.load(tmp_path / "vols/train/y/2.nii.gz").header.get_zooms() == pytest.approx((2.5, 0.8, 0.8))

    result = inspect_dataset(tmp_path / "vols")
    assert result["n_readable"] == 12 and not result["unreadable"]
    spacing = result["spacing"]
    mid = [(x + y) / 2 for x, y in zip(a, b)]  # median of an even number of A and B values
    assert spacing["train"] == {"n": 6, "median": pytest.approx(mid), "min": b, "max": a, "distinct": 2}
    assert spacing["val"] == {"n": 2, "median": pytest.approx(mid), "min": b, "max": a, "distinct": 2}
    assert spacing["test"] == {"n": 4, "median": b, "min": b, "max": b, "distinct": 1}
    assert spacing["all"]["median"] == b and spacing["all"]["distinct"] == 2  # 4 A, 8 B
    # the permuted volume is [7, 8, 6] in RAS+ order, the others [6, 7, 8]
    assert result["sizes"]["min"] == [6, 7, 6] and result["sizes"]["max"] == [7, 8, 8]
    assert result["formats"] == {"nifti": 12} and result["bit_depths"] == {"32": 12}
    # training inspects its already decoded arrays: the spacing then comes from the headers alone
    from medclf.data.sources.folder import discover
    from medclf.inspect import inspect_manifest
    assert inspect_manifest(discover(tmp_path / "vols"), decoded={})["spacing"] == spacing

    out = tmp_path / "inspection.json"
    assert main(["inspect", str(tmp_path / "vols"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "voxel spacing (mm) test : median [0.8, 0.8, 2.5]" in printed
    assert json.loads(out.read_text())["spacing"]["train"]["distinct"] == 2


@pytest.mark.parametrize("pca_sample", [20000, 300], ids=["axes-from-all", "axes-from-a-sample"])
def test_indexed_near_duplicate_search_equals_all_pairs(monkeypatch, pca_sample):
    from medclf.inspect import duplicates
    from medclf.inspect.duplicates import near_duplicate_pairs_all
    monkeypatch.setattr(duplicates, "PCA_SAMPLE", pca_sample)  # 300 of 1500: the large-set path
    rng = np.random.default_rng(3)
    base = np.stack([thumbnail(xray_like(rng)) for _ in range(200)])
    n = 1500  # look-alike blends of the bases, many pairs close to the thresholds
    a, b = rng.integers(0, 200, n), rng.integers(0, 200, n)
    w = rng.uniform(0.3, 0.7, n)[:, None, None]
    thumbs = (w * base[a] + (1 - w) * base[b] + rng.normal(0, 2, (n, 32, 32))).astype(np.float32)
    thumbs[-10:] = thumbs[:10] * 1.1 + 3 + rng.normal(0, 0.5, (10, 32, 32))  # planted copies
    thumbs[100] = 7.0  # a flat image correlates with nothing
    indexed = near_duplicate_pairs(thumbs, exclude={(0, n - 10)})
    reference = near_duplicate_pairs_all(thumbs, exclude={(0, n - 10)})
    assert [(i, j, d) for i, j, _, d in indexed] == [(i, j, d) for i, j, _, d in reference]
    assert np.allclose([c for *_, c, _ in indexed], [c for *_, c, _ in reference])
    assert {(k, n - 10 + k) for k in range(1, 10)} <= {(i, j) for i, j, _, _ in indexed}
    assert (0, n - 10) not in {(i, j) for i, j, _, _ in indexed}


def test_file_names_with_patient_ids_get_a_suggested_pattern_and_image_numbers_none(tmp_path):
    """Kermany-style names (``person7_virus_2.jpeg``): several images per id give a suggestion
    with its counts; bare image numbers (``3.png``, restarting per folder) give none."""
    from medclf.data.sources.folder import discover
    from medclf.inspect.patients import suggest_patient_pattern, suggestion_lines

    rng = np.random.default_rng(5)
    for cls, prefix in (("a", "person"), ("b", "IM-0")):
        folder = tmp_path / "named" / "train" / cls
        folder.mkdir(parents=True)
        for patient in range(6):
            for image in range(3 if patient < 3 else 1):
                Image.fromarray(xray_like(rng, 32)).save(folder / f"{prefix}{patient}_x_{image}.png")
    suggestion = suggest_patient_pattern(discover(tmp_path / "named").frame)
    assert suggestion["n_files"] == 24 and suggestion["n_ids"] == 12
    assert suggestion["grouped_share"] == 0.75 and suggestion["largest"][0][1] == 3
    assert "data.patient_id_pattern=" in suggestion_lines(suggestion)[1]
    named = discover(tmp_path / "named", patient_id_pattern=suggestion["pattern"]).frame
    assert named.patient_id.nunique() == 12  # the suggestion is a valid pattern for every file
    assert suggest_patient_pattern(named) is None  # ids given: nothing to suggest

    build(tmp_path / "numbered", rng, per_class=4)  # 0.png ... 3.png in every folder
    assert suggest_patient_pattern(discover(tmp_path / "numbered").frame) is None
    assert suggestion_lines(None) == []


@needs_data(SHARED_DATA / "chest-xray-pneumonia")
def test_chest_xray_file_names_suggest_person_ids():
    """On the real chest-xray-pneumonia tree the suggestion groups ``personN`` files."""
    from medclf.data.sources.folder import discover
    from medclf.inspect.patients import suggest_patient_pattern

    suggestion = suggest_patient_pattern(discover(SHARED_DATA / "chest-xray-pneumonia").frame)
    assert suggestion is not None and suggestion["n_files"] == 5840
    assert 1000 < suggestion["n_ids"] < 5000 and suggestion["grouped_share"] > 0.5
