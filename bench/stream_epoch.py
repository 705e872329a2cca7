"""Epoch time from the disk cache against epoch time from memory, measured in one run.

Trains the same configuration on the same data with ``data.storage=memory`` and with
``data.storage=disk`` (float16 shard, built before the timed epochs), alternating
``memory, disk, memory, disk`` so that a change of load on a shared machine touches both
alike, and prints one JSON line with every epoch time (``epoch_time_s`` of
``metrics.csv``), the median per storage and ``disk_speed_ratio`` = median memory epoch time
/ median disk epoch time (>= 0.9: the disk path is at least 0.9x as fast).

Usage:
    python bench/stream_epoch.py DATA [--limit 800] [--epochs 2] [--repeats 2] [--set key=value ...]

``--limit`` takes the first images (sorted by name) of every class folder of every split
folder of a class-folder tree, as symbolic links, to keep the run short.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def subset(data: Path, limit: int, into: Path) -> Path:
    """Symbolic links to the first ``limit`` files of each class folder (with split folders kept)."""
    folders = [p for p in data.rglob("*") if p.is_dir() and any(f.is_file() for f in p.iterdir())]
    for folder in folders:
        target = into / folder.relative_to(data)
        target.mkdir(parents=True, exist_ok=True)
        for f in sorted(x for x in folder.iterdir() if x.is_file() and not x.name.startswith("."))[:limit]:
            (target / f.name).symlink_to(f.resolve())
    return into


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data")
    parser.add_argument("--limit", type=int, default=800, help="images per class folder (0: all)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from medclf.commands.train import train
    work = Path(tempfile.mkdtemp(prefix="medclf-stream-"))
    data = subset(Path(args.data), args.limit, work / "data") if args.limit else Path(args.data)
    common = [f"train.max_epochs={args.epochs}", "train.early_stopping.patience=100", "eval.bootstrap=0",
              "explain.gallery_size=0", f"data.cache_dir={work / 'cache'}", *args.overrides]
    times: dict[str, list[float]] = {"memory": [], "disk": []}
    for repeat in range(args.repeats):
        for storage in ("memory", "disk"):
            result = train(data, out=work / "runs", name=f"{storage}-{repeat}", progress=False,
                           overrides=[*common, f"data.storage={storage}"])
            times[storage] += list(pd.read_csv(result.run_dir / "metrics.csv").epoch_time_s)
    medians = {k: statistics.median(v) for k, v in times.items()}
    print(json.dumps({"data": str(args.data), "limit": args.limit, "epoch_time_s": times,
                      "median_epoch_time_s": medians,
                      "disk_speed_ratio": round(medians["memory"] / medians["disk"], 3)}))


if __name__ == "__main__":
    main()
