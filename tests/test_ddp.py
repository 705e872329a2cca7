"""Distributed data parallel training with 2 CPU processes (gloo) writes one run directory."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

from conftest import ROOT, free_port


def test_ddp_two_cpu_processes_write_one_run_directory(tiny_dataset, tmp_path):
    out = tmp_path / "runs"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MEDCLF_RUN_DIR"):
        env.pop(name, None)
    done = subprocess.run(
        [sys.executable, "-m", "medclf.cli", "train", str(tiny_dataset), "--out", str(out),
         "--no-progress", "--set", "trainer.strategy=ddp", "--set", "trainer.devices=2",
         "--set", "trainer.accelerator=cpu", "--set", "train.max_epochs=1",
         "--set", "data.image_size=[32,32]", "--set", "model.filters=[8,16]",
         "--set", "train.batch_size=4"],
        capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = [p for p in out.iterdir()]
    assert len(runs) == 1, runs  # the second process wrote no run directory of its own
    run = runs[0]
    assert done.stdout.strip().splitlines()[-1] == str(run)  # printed once, by rank 0
    assert done.stdout.count(str(run)) == 1
    test = json.loads((run / "test_metrics.json").read_text())
    assert test["world_size"] == 2 and test["n"] == 8
    assert list(pd.read_csv(run / "metrics.csv").epoch) == [0]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt"]  # planned: the last weights
    assert test["checkpoint"] == "checkpoints/last.ckpt"
    assert not list(Path(tmp_path).glob("**/medclf-rank*"))


def test_torchrun_two_nodes_train_one_run_from_the_disk_cache(tmp_path):
    """Two "machines" on localhost (torchrun --nnodes 2, one gloo process each, static
    rendezvous, node ranks 0 and 1) train one run from the shared disk shard, each rank
    reading its half of the training set (Lightning's DistributedSampler)."""
    import torch

    from conftest import make_dataset
    data = make_dataset(tmp_path / "data", per_class=(20, 20))
    out, cache = tmp_path / "runs", tmp_path / "cache"
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MEDCLF_RUN_DIR", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    batch_size = 4
    nodes = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
         "--node-rank", str(rank), "--master-addr", "127.0.0.1", "--master-port", str(port),
         "-m", "medclf.cli", "train", str(data), "--out", str(out), "--no-progress",
         "--set", "trainer.strategy=ddp", "--set", "trainer.num_nodes=2", "--set", "trainer.devices=1",
         "--set", "trainer.accelerator=cpu", "--set", "train.max_epochs=1", "--set", "train.lr=1e-3",
         "--set", "train.folds=0",  # one model (an ensemble run trains with DDP in test_folds.py)
         "--set", "data.image_size=[32,32]", "--set", "model.filters=[8,16]",
         "--set", f"train.batch_size={batch_size}", "--set", "data.storage=disk",
         "--set", f"data.cache_dir={cache}", "--set", "eval.bootstrap=0", "--set", "explain.gallery_size=0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for rank in (0, 1)]
    try:
        outputs = [node.communicate(timeout=240) for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
                node.wait()
    for node, (stdout, stderr) in zip(nodes, outputs):
        assert node.returncode == 0, stderr[-3000:]
    runs = list(out.iterdir())
    assert len(runs) == 1, runs  # node 1 wrote no run directory of its own
    run = runs[0]
    assert outputs[0][0].strip().splitlines()[-1] == str(run)  # printed by rank 0 only
    assert str(run) not in outputs[1][0]
    shards = list((cache / "shards").iterdir())
    assert len(shards) == 1  # built once, by whichever node took the lock first, read by both
    assert json.loads((shards[0] / "index.json").read_text())["complete"]
    test = json.loads((run / "test_metrics.json").read_text())
    assert test["world_size"] == 2
    n_train = int((pd.read_csv(run / "split.csv").split == "train").sum())
    steps = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]
    assert steps == -(-n_train // 2) // batch_size < n_train // batch_size  # each rank: its half
    assert list(pd.read_csv(run / "metrics.csv").epoch) == [0]
