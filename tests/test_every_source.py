"""Every command on every kind of data source, through the command line (``medclf.cli.main``).

``inspect``, ``sanity``, ``tune``, ``preview``, ``train`` and ``explain`` each run on the four
sources a dataset can come as: a class-per-folder tree of PNGs, a CSV manifest
(``path,label``), a MedMNIST-style ``.npz`` file (official splits) and a folder of NIfTI
volumes (3D). The fixtures are tiny (two classes, 16x16 images or 8x8x8 volumes, a bright
square or cube in class ``b`` only) and written once per module; one training run per
source is reused by ``explain``.
"""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from medclf.cli import main

SOURCES = ("folder", "csv", "npz", "nifti")
CLASSES = ("a", "b")
PER_CLASS = 12  # folder, csv and nifti: images per class (split 15 % test, 15 % val by discovery)
NPZ_SPLITS = {"train": 10, "val": 3, "test": 3}  # npz: images per class in each official split
SIZE_2D, SIZE_3D = 16, 8
PLACES = np.random.default_rng(7).permutation(36)  # square places, see sample()

COMMON = ["--set", "train.max_epochs=1", "--set", "eval.bootstrap=0", "--set", "explain.gallery_size=0",
          "--set", "model.filters=[8,16]", "--set", "train.batch_size=8", "--set", "data.num_workers=0"]


def sample(label: int, index: int, rng: np.random.Generator, dims: int) -> np.ndarray:
    """uint8 ``(H, W)`` or ``(D, H, W)``: noise, plus a bright square/cube when ``label`` is 1.

    The square of image ``index`` has its own (row, column) place, so that no two images of
    a class are near duplicates (``medclf inspect`` would flag them as leaks between splits,
    and training would warn about them); a volume's cube crosses the middle slice that
    duplicate detection looks at.
    """
    size = SIZE_2D if dims == 2 else SIZE_3D
    side = size // 3 + 1
    array = rng.normal(50, 10, (size,) * dims)
    if label:
        places = size - side + 1
        row, col = divmod(PLACES[index] % places ** 2, places)
        where = (slice(row, row + side), slice(col, col + side))
        if dims == 3:
            where = (slice(size // 2 - side // 2, size // 2 - side // 2 + side), *where)
        array[where] += 150
    return np.clip(array, 0, 255).astype(np.uint8)


def write_pngs(folder: Path, rng: np.random.Generator) -> list[tuple[Path, str]]:
    """``PER_CLASS`` PNGs per class in ``folder/<class>/``; returns ``(path, class)`` pairs."""
    written = []
    for y, cls in enumerate(CLASSES):
        (folder / cls).mkdir(parents=True, exist_ok=True)
        for i in range(PER_CLASS):
            path = folder / cls / f"{cls}{i}.png"
            Image.fromarray(sample(y, i, rng, 2)).save(path)
            written.append((path, cls))
    return written


def make_source(kind: str, root: Path) -> dict:
    """Write one source under ``root``.

    Returns:
        ``{"data": the source argument, "item": one class-``b`` input for explain,
        "dims": 2 or 3, "classes": class names, "counts": {split: images per class},
        "format": the reader inspect reports}``.
    """
    rng = np.random.default_rng(SOURCES.index(kind))
    flat = {"train": 8, "val": 2, "test": 2}  # a stratified 70/15/15 split of 12 per class
    if kind == "folder":
        written = write_pngs(root / "tree", rng)
        return {"data": str(root / "tree"), "item": str(written[-1][0]), "dims": 2, "classes": list(CLASSES),
                "counts": flat, "format": "PNG"}
    if kind == "csv":
        written = write_pngs(root / "images", rng)
        rows = [{"path": str(path.relative_to(root)), "label": cls} for path, cls in written]  # relative paths
        pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
        return {"data": str(root / "manifest.csv"), "item": str(written[-1][0]), "dims": 2,
                "classes": list(CLASSES), "counts": flat, "format": "PNG"}
    if kind == "npz":
        arrays, done = {}, 0
        for split, n in NPZ_SPLITS.items():
            labels = np.arange(2 * n) % 2  # 0, 1, 0, 1, ...: item 1 of each split is of class 1
            arrays[f"{split}_images"] = np.stack([sample(int(y), done + i // 2, rng, 2)
                                                  for i, y in enumerate(labels)])
            arrays[f"{split}_labels"] = labels[:, None].astype(np.uint8)
            done += n
        np.savez_compressed(root / "squares.npz", **arrays)
        return {"data": str(root / "squares.npz"), "item": f"{root / 'squares.npz'}#test/1", "dims": 2,
                "classes": ["0", "1"], "counts": NPZ_SPLITS, "format": "npz"}  # official splits, kept
    assert kind == "nifti"
    written = []
    for y, cls in enumerate(CLASSES):
        (root / "volumes" / cls).mkdir(parents=True)
        for i in range(PER_CLASS):
            path = root / "volumes" / cls / f"{cls}{i}.nii.gz"
            nib.save(nib.Nifti1Image(sample(y, i, rng, 3), np.eye(4)), path)
            written.append(path)
    return {"data": str(root / "volumes"), "item": str(written[-1]), "dims": 3, "classes": list(CLASSES),
            "counts": flat, "format": "nifti"}


@pytest.fixture(scope="module", params=SOURCES)
def source(request, tmp_path_factory) -> dict:
    """One generated source (see :func:`make_source`), plus ``kind``, ``root``, ``n`` (images),
    ``shape`` (of one image) and ``sets`` (its fast ``--set`` options, image size included)."""
    kind = request.param
    root = tmp_path_factory.mktemp(kind)
    made = make_source(kind, root)
    shape = [SIZE_2D if made["dims"] == 2 else SIZE_3D] * made["dims"]
    return {**made, "kind": kind, "root": root, "n": 2 * sum(made["counts"].values()), "shape": shape,
            "sets": [*COMMON, "--set", f"data.image_size=[{','.join(map(str, shape))}]"]}


@pytest.fixture(scope="module")
def trained(source) -> dict:
    """``medclf train`` on the source, once per source: its exit code, printed lines and run directory."""
    out = source["root"] / "runs"
    code = main(["train", source["data"], "--out", str(out), "--name", "run", "--no-progress", *source["sets"]])
    return {"code": code, "run": out / "run"}


def test_inspect(source, tmp_path, capsys):
    out = tmp_path / "inspection.json"
    assert main(["inspect", source["data"], "--out", str(out), *source["sets"]]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out)
    result = json.loads(out.read_text())
    assert result["n_files"] == result["n_readable"] == source["n"] and result["unreadable"] == []
    assert result["class_names"] == source["classes"]
    assert result["counts"] == {split: dict.fromkeys(source["classes"], n) for split, n in source["counts"].items()}
    assert result["formats"] == {source["format"]: source["n"]}
    assert result["sizes"]["min"] == result["sizes"]["max"] == source["shape"]
    # every item is read as itself (an npz reader returning one image for all would make duplicates)
    assert result["n_exact_duplicate_groups"] == 0 and result["n_near_duplicate_pairs"] == 0
    assert (result["spacing"] is None) == (source["dims"] == 2)


def test_preview(source, tmp_path, capsys):
    out = tmp_path / "preview.png"
    assert main(["preview", source["data"], "--n", "2", "--augment", "1", "--out", str(out), *source["sets"]]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1] == str(out)
    assert "preprocessed 2x1, augmented 2x2" in printed[0]  # one image per class, itself and one augmentation
    with Image.open(out) as png:
        assert png.format == "PNG" and min(png.size) > 100


def test_sanity(source, tmp_path, capsys):
    # the overfit check stops as soon as it has fitted the 4 images; 60 steps leave room
    code = main(["sanity", source["data"], "--out", str(tmp_path), "--steps", "60", "--no-lr-test",
                 "--per-class", "2", *source["sets"]])
    printed = capsys.readouterr().out
    assert code == 0, printed
    report = json.loads((Path(printed.strip().splitlines()[-1]) / "sanity.json").read_text())
    assert report["passed"] and report["suggested_lr"] is None
    checks = {c["name"]: c for c in report["checks"]}
    assert all(c["passed"] for c in checks.values()) and "overfit small subset" in checks
    assert f"input {(4, 1, *source['shape'])} -> logits (4, 2)" in checks["forward"]["detail"]


def test_tune(source, tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text("train.lr: [0.001]\n")
    out = tmp_path / "searches"
    code = main(["tune", source["data"], "--space", str(space), "--trials", "1", "--sampler", "grid",
                 "--out", str(out), "--name", "s", *source["sets"]])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert printed.strip().splitlines()[-1] == str(out / "s")
    table = pd.read_csv(out / "s" / "trials.csv")
    assert list(table.state) == ["COMPLETE"] and list(table["train.lr"]) == [0.001]
    assert 0 <= table.val_roc_auc.iloc[0] <= 1
    best = json.loads((out / "s" / "best.json").read_text())
    assert best["trial"] == 0 and 0 <= best["test"]["roc_auc"] <= 1


def test_train(source, trained):
    assert trained["code"] == 0
    run = trained["run"]
    metrics = json.loads((run / "test_metrics.json").read_text())
    assert metrics["n"] == 2 * source["counts"]["test"] and 0 <= metrics["roc_auc"] <= 1
    # planned classification keeps the last weights (train.keep_weights): no best.ckpt
    assert metrics["checkpoint"] == "checkpoints/last.ckpt" and (run / metrics["checkpoint"]).is_file()
    assert not (run / "checkpoints" / "best.ckpt").exists()
    split = pd.read_csv(run / "split.csv", keep_default_na=False)
    assert len(split) == source["n"]
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["spatial_dims"] == source["dims"]


def test_explain(source, trained, tmp_path, capsys):
    assert trained["code"] == 0, "training failed (see test_train)"
    out = tmp_path / "explained"
    assert main(["explain", str(trained["run"]), source["item"], "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out)
    frame = pd.read_csv(out / "explanations.csv", keep_default_na=False, dtype=str)
    assert list(frame.path) == [source["item"]] and frame.predicted[0] in source["classes"]
    png = Path(frame.png[0])
    assert png.parent == out and png.name.endswith("_gradcam.png")
    with Image.open(png) as image:
        assert image.format == "PNG"
    if source["dims"] == 3:  # and the heatmap as a volume on the input's grid
        assert nib.load(frame.nifti[0]).shape == tuple(source["shape"])
    else:
        assert frame.nifti[0] == ""
