"""The disk-streamed data path: shard building, resuming a killed build, parity with memory."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch

from medclf.config import validate
from medclf.data.prepare import prepare_splits
from medclf.data.sources import discover_source
from medclf.data.store import DiskImages, Shard, build_shard, choose_storage, shard_key
from medclf.errors import ConfigError

from conftest import ROOT, make_dataset


def _config(tmp_path, **data):
    return validate({"data": {"image_size": [32, 32], "cache_dir": str(tmp_path / "cache"), **data},
                     "seed": 0})


def test_choose_storage_from_size_and_available_memory(tmp_path):
    cfg = _config(tmp_path)
    assert choose_storage(100, cfg, available=8 * 2 ** 30)[0] == "memory"
    # 100k items of 1x32x32 float32 = 400 MB > 15 % of 2 GiB
    storage, reason = choose_storage(100_000, cfg, available=2 * 2 ** 30)
    assert storage == "disk" and "GiB" in reason
    big = _config(tmp_path, image_size=[224, 224])  # 30k X-rays: 6 GB > 1 GiB whatever is free
    assert choose_storage(30_000, big, available=512 * 2 ** 30)[0] == "disk"
    assert choose_storage(10, _config(tmp_path, storage="disk"))[0] == "disk"
    with pytest.raises(ConfigError, match="resize"):
        choose_storage(10, validate({"data": {"storage": "disk"}, "preprocess": {"resize": "none"}}))


def test_disk_splits_equal_memory_splits(tmp_path):
    data = make_dataset(tmp_path / "data", per_class=(6, 6))
    (data / "train" / "bar" / "broken.png").write_bytes(b"not a png")
    manifest = discover_source(str(data), _config(tmp_path).data, 0)
    memory, kept_m, bad_m = prepare_splits(manifest, _config(tmp_path, storage="memory", on_bad_file="skip"))
    disk, kept_d, bad_d = prepare_splits(manifest, _config(tmp_path, storage="disk", storage_dtype="float32",
                                                           on_bad_file="skip"))
    assert [p for p, _ in bad_d] == [p for p, _ in bad_m] and len(bad_d) == 1
    assert list(kept_d.frame.sha) == list(kept_m.frame.sha)
    for split in memory:
        assert isinstance(disk[split][0], DiskImages)
        assert disk[split][0].shape == memory[split][0].shape
        assert torch.equal(disk[split][0][torch.arange(len(disk[split][0]))], memory[split][0])
        assert torch.equal(disk[split][0][1], memory[split][0][1])
        assert torch.equal(disk[split][1], memory[split][1])
    half, _, _ = prepare_splits(manifest, _config(tmp_path, storage="disk", on_bad_file="skip"))
    assert torch.allclose(half["train"][0][:], memory["train"][0], rtol=2e-3, atol=2e-3)
    assert half["train"][0].dtype == np.float16


@pytest.mark.parametrize("kind", ["multilabel", "regression"])
def test_disk_splits_of_multilabel_and_regression_sets_carry_their_targets(tmp_path, kind):
    """Findings ``(N, K)`` and numbers ``(N,)`` from a disk shard, equal to the in-memory targets
    (a multilabel set too large for memory once failed: class names looked up for 'A|H')."""
    from taskdata import make_multilabel_csv, make_regression_csv
    make = make_multilabel_csv if kind == "multilabel" else make_regression_csv
    csv = make(tmp_path / kind, n=40)
    columns = {"multilabel": ["disk", "bar", "square"], "regression": ["radius"]}[kind]
    settings = {"path_column": "file" if kind == "multilabel" else "path", "label_columns": columns, "task": kind}
    manifest = discover_source(str(csv), _config(tmp_path, **settings).data, 0)
    memory, _, _ = prepare_splits(manifest, _config(tmp_path, storage="memory", **settings))
    disk, kept, _ = prepare_splits(manifest, _config(tmp_path, storage="disk", storage_dtype="float32", **settings))
    assert kept.task == kind
    for split in memory:
        assert disk[split][1].dtype == torch.float32 and torch.equal(disk[split][1], memory[split][1])
        assert torch.equal(disk[split][0][:], memory[split][0])
    assert disk["train"][1].dim() == (2 if kind == "multilabel" else 1)


_SLOW_BUILD = """
import sys, time
import medclf.data.store as store
from medclf.config import validate
from medclf.data.sources import discover_source
original = store.preprocess_item
def slow(path, config):
    time.sleep(0.05)
    return original(path, config)
store.preprocess_item = slow
cfg = validate({"data": {"image_size": [32, 32], "cache_dir": sys.argv[2]}})
paths = list(discover_source(sys.argv[1], cfg.data, 0).frame.path)
store.build_shard(paths, cfg, workers=0, progress=False)
"""


def test_killed_build_resumes_where_it_stopped(tmp_path, monkeypatch):
    data = make_dataset(tmp_path / "data", per_class=(40, 40), splits=("",))
    cfg = _config(tmp_path)
    paths = list(discover_source(str(data), cfg.data, 0).frame.path)
    folder = tmp_path / "cache" / "shards" / shard_key(paths, cfg)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    child = subprocess.Popen([sys.executable, "-c", _SLOW_BUILD, str(data), str(tmp_path / "cache")], env=env)
    try:
        deadline = time.monotonic() + 60
        written = 0
        while time.monotonic() < deadline:
            if (folder / "index.json").exists() and (folder / "status.npy").exists():
                written = int((np.load(folder / "status.npy", mmap_mode="r") == 1).sum())
                if written >= 10:
                    break
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait()
    status = np.load(folder / "status.npy")
    written = int((status == 1).sum())
    assert 10 <= written < len(paths), written
    assert not json.loads((folder / "index.json").read_text())["complete"]
    before = np.load(folder / "images.npy")[status == 1].copy()

    import medclf.data.store as store
    decoded = []
    original = store.preprocess_item

    def counting(path, config):
        decoded.append(path)
        return original(path, config)

    monkeypatch.setattr(store, "preprocess_item", counting)
    shard = build_shard(paths, cfg, workers=0, progress=False)
    assert len(decoded) == len(paths) - written  # only the items not written before
    assert set(decoded).isdisjoint(np.array(paths)[status == 1])
    assert (np.asarray(shard.status()) == 1).all() and shard.index["complete"]
    np.testing.assert_array_equal(np.load(folder / "images.npy")[status == 1], before)
    decoded.clear()
    assert Shard(build_shard(paths, cfg, workers=0, progress=False).folder).index["complete"]
    assert decoded == []  # complete: reused without decoding


def test_disk_images_pickles_without_pixels(tmp_path):
    import pickle
    data = make_dataset(tmp_path / "data", per_class=(6, 6), splits=("",))
    cfg = _config(tmp_path)
    paths = list(discover_source(str(data), cfg.data, 0).frame.path)
    view = build_shard(paths, cfg, workers=0, progress=False).images([4, 0, 2])
    first = view[0]
    copy = pickle.loads(pickle.dumps(view))
    assert len(pickle.dumps(view)) < 2000
    assert torch.equal(copy[0], first) and copy.shape == (3, 1, 32, 32)
    assert torch.equal(view[torch.tensor([2, 0])][1], first)


@pytest.mark.parametrize("tta", ["false", "true"])
def test_training_from_disk_gives_the_metrics_of_memory(tiny_dataset, tmp_path, tta):
    # with test-time augmentation too: its views are built from the disk shard chunk by chunk
    from medclf.commands.train import train
    common = ["train.max_epochs=2", "data.image_size=[32,32]", "model.filters=[8,16]", "train.batch_size=8",
              f"data.cache_dir={tmp_path / 'cache'}", "data.storage_dtype=float32", f"eval.tta={tta}",
              "explain.gallery_size=0", "eval.bootstrap=0"]
    metrics = {}
    for storage in ("memory", "disk"):
        result = train(tiny_dataset, out=tmp_path / "runs", name=storage, progress=False,
                       overrides=[*common, f"data.storage={storage}"])
        metrics[storage] = result.metrics
        rows = pd.read_csv(result.run_dir / "metrics.csv").drop(columns="epoch_time_s")
        metrics[storage + "_rows"] = rows
    assert list((tmp_path / "cache" / "shards").iterdir())  # the disk run used a shard
    for key in ("roc_auc", "balanced_accuracy", "accuracy"):
        assert metrics["disk"][key] == metrics["memory"][key], key
    assert ("tta" in metrics["disk"]) == (tta == "true")
    if tta == "true":
        assert metrics["disk"]["tta"] == metrics["memory"]["tta"]
    pd.testing.assert_frame_equal(metrics["disk_rows"], metrics["memory_rows"])  # every epoch's loss and validation metrics
