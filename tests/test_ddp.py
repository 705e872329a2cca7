"""Distributed data parallel training with 2 CPU processes (gloo) writes one run directory."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

from conftest import ROOT


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
    assert (run / "checkpoints" / "best.ckpt").is_file()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert not list(Path(tmp_path).glob("**/medclf-rank*"))
