"""The whole pipeline learns: medclf's own ``train`` on a small real subset of
../shared/data/chest-xray-pneumonia (paediatric chest X-rays, NORMAL vs PNEUMONIA, 224x224
JPEG) reaches a test ROC AUC and accuracy far above chance (0.5), on images of the official
test split that it never saw.

Subset: ``N_TRAIN`` images per class from ``train/`` (medclf carves its 15 % validation
split out of them) and ``N_TEST`` per class from the official ``test/`` split, picked evenly
over the sorted file names, as symlinks in tmp_path; 64x64 pixels. With 150 images per class
the plan trains the k-fold ensemble (5 fold models, 12 epochs each here, about 50 s).

The margins: AUC >= 0.85 and accuracy >= 0.70 (70 of 100 balanced test images; chance gives
that with probability ~4e-5). This test split differs from the training split (its NORMAL
images are often called PNEUMONIA), so the accuracy varies more than the AUC.
"""
from __future__ import annotations

import json
from pathlib import Path

from conftest import SHARED_DATA, require_data

PNEUMONIA = SHARED_DATA / "chest-xray-pneumonia"
N_TRAIN, N_TEST = 150, 50
OVERRIDES = ["data.image_size=[64,64]", "train.max_epochs=12", "train.batch_size=16", "augment.batched=true",
             "trainer.accelerator=cpu", "eval.bootstrap=0", "explain.gallery_size=0"]
MIN_ROC_AUC, MIN_ACCURACY = 0.85, 0.70


def pneumonia_subset(root: Path, n_train: int = N_TRAIN, n_test: int = N_TEST) -> Path:
    """``root/{train,test}/{NORMAL,PNEUMONIA}/`` of symlinks: ``n_train``/``n_test`` files
    per class, evenly spaced over the sorted names of the real split."""
    for split, n in (("train", n_train), ("test", n_test)):
        for cls in ("NORMAL", "PNEUMONIA"):
            files = sorted((PNEUMONIA / split / cls).glob("*.jpeg"))
            assert len(files) >= n, f"{PNEUMONIA / split / cls}: {len(files)} images, need {n}"
            target = root / split / cls
            target.mkdir(parents=True)
            for i in range(n):
                f = files[i * len(files) // n]
                (target / f.name).symlink_to(f)
    return root


def train_subset(root: Path, seed: int) -> dict:
    """Train on the subset in ``root / "data"`` with ``seed``; the run's test_metrics.json."""
    from medclf.commands.train import train
    result = train(root / "data", out=root / "runs", name=f"seed{seed}", progress=False,
                   overrides=[*OVERRIDES, f"seed={seed}"])
    return json.loads((result.run_dir / "test_metrics.json").read_text())


def test_training_on_real_xrays_beats_chance_by_far(tmp_path):
    require_data(PNEUMONIA)  # skipped without the data, a failure under CI=true
    pneumonia_subset(tmp_path / "data")
    test = train_subset(tmp_path, seed=0)
    assert test["n"] == 2 * N_TEST and test["class_names"] == ["NORMAL", "PNEUMONIA"]
    assert test["roc_auc"] >= MIN_ROC_AUC, test
    assert test["accuracy"] >= MIN_ACCURACY, test
