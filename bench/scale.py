"""How the cost of ``medclf train`` grows with the number of images.

Generates synthetic class-folder datasets (two classes, ``disk`` and ``bar``, grayscale PNG
256x256, each image its own random background and shape position) with N images, and/or a
3D set of NIfTI volumes (``--volumes N``, 128^3, uint8), then runs ``medclf train`` on
each (one epoch, a small network, the disk cache emptied first so preprocessing is
measured) in a fresh process, timing every stage:

``discover`` (listing and splitting), ``fingerprint`` (header probe), ``plan`` (the rest of
planning), ``preprocess`` (decode, resize, normalise into the in-memory tensors or the disk
shard), ``inspect`` (duplicates and leakage), ``fit`` (one epoch and validation),
``evaluate`` (test and validation predictions, TTA, metrics, plots), ``postrun`` (gallery
and report), ``total``; and the peak resident memory of the training process
(``ru_maxrss``) and of its largest child process (DataLoader workers).

Prints one JSON line: ``{"runs": [{"n", "kind", "storage", "seconds": {stage: s},
"peak_rss_mb", "peak_rss_children_mb"}, ...], "growth": {...}}`` where ``growth`` gives,
for consecutive sizes, each stage's time ratio and the size ratio (a size given twice, as in
``--n 10000 100000 10000``, counts with its median).

Usage:
    python bench/scale.py --n 10000 100000 10000 [--volumes 1000] [--root /tmp/medclf-scale]
        [--set key=value ...] [--keep-cache] [--record --note "quiet machine"]

The datasets are kept under ``--root`` (generated once; reruns reuse them). 100k images
take about 4 GB of PNG and the disk shard 100k x 224^2 x 2 bytes = 10 GB.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("disk", "bar")
STAGES = ("discover", "fingerprint", "plan", "preprocess", "inspect", "fit", "evaluate", "postrun", "total")


def _image(seed: int, kind: str, size: int = 256) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    gy, gx = rng.uniform(-40, 40, 2)
    image = 70 + gy * yy + gx * xx + rng.normal(0, 3, (size, size))
    cy, cx = rng.uniform(0.3, 0.7, 2)
    if kind == "disk":
        image[(yy - cy) ** 2 + (xx - cx) ** 2 < rng.uniform(0.08, 0.16) ** 2] += 120
    else:
        image[:, (xx[0] > cx - 0.03) & (xx[0] < cx + 0.03)] += 120
    return np.clip(image, 0, 255).astype(np.uint8)


def _write_images(args) -> None:
    from PIL import Image
    folder, start, stop = args
    for i in range(start, stop):
        kind = CLASSES[i % 2]
        path = Path(folder) / kind / f"{kind}_{i:06d}.png"
        if not path.exists():
            Image.fromarray(_image(i, kind)).save(path, compress_level=1)


def _volume(seed: int, kind: str, size: int = 128) -> np.ndarray:
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.ogrid[:size, :size, :size]
    volume = rng.normal(60, 4, (size, size, size)).astype(np.float32)
    c = rng.uniform(0.3, 0.7, 3) * size
    if kind == "disk":
        volume[(zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 < (0.12 * size) ** 2] += 120
    else:
        volume[:, :, np.abs(np.arange(size) - c[2]) < 4] += 120
    return np.clip(volume, 0, 255).astype(np.uint8)


def _write_volumes(args) -> None:
    import nibabel as nib
    folder, start, stop = args
    for i in range(start, stop):
        kind = CLASSES[i % 2]
        path = Path(folder) / kind / f"{kind}_{i:05d}.nii.gz"
        if not path.exists():
            tmp = path.with_name("." + path.name)
            nib.save(nib.Nifti1Image(_volume(i, kind), np.eye(4)), tmp)
            os.replace(tmp, path)


def generate(folder: Path, n: int, volumes: bool = False, workers: int = 2) -> Path:
    """Write ``n`` images (or volumes) into ``folder/<class>/`` (existing files are kept)."""
    for kind in CLASSES:
        (folder / kind).mkdir(parents=True, exist_ok=True)
    chunk = 500 if not volumes else 20
    jobs = [(str(folder), s, min(n, s + chunk)) for s in range(0, n, chunk)]
    started = time.perf_counter()
    with ProcessPoolExecutor(workers) as pool:
        for k, _ in enumerate(pool.map(_write_volumes if volumes else _write_images, jobs)):
            if k % 20 == 0:
                print(f"generating {folder}: {min(n, (k + 1) * chunk)}/{n} "
                      f"({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
    return folder


def _child(data: str, out: str, overrides: list[str]) -> None:
    """Run ``train`` with every stage timed; print one JSON line (called in a fresh process)."""
    sys.path.insert(0, str(ROOT / "src"))
    import medclf.commands.train as train_cmd
    import medclf.plan as plan
    seconds: dict[str, float] = {}

    def timed(module, name, stage):
        original = getattr(module, name)

        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                seconds[stage] = seconds.get(stage, 0.0) + time.perf_counter() - started
        setattr(module, name, wrapper)

    for module, name, stage in ((plan, "discover_source", "discover"), (plan, "fingerprint", "fingerprint"),
                                (train_cmd, "plan_run", "plan"), (train_cmd, "_prepare", "preprocess"),
                                (train_cmd, "inspect_run", "inspect"), (train_cmd, "fit", "fit"),
                                (train_cmd, "evaluate_model", "evaluate"),
                                (train_cmd, "after_evaluation", "postrun")):
        timed(module, name, stage)
    import medclf.data.prepare as prepare
    chosen = []
    storage_of = prepare.storage_of
    prepare.storage_of = lambda manifest, config: chosen.append(storage_of(manifest, config)) or chosen[-1]
    import logging
    logging.basicConfig(level=logging.WARNING, format="medclf: %(levelname)s: %(message)s")
    started = time.perf_counter()
    result = train_cmd.train(data, out=out, overrides=overrides, progress=True)
    seconds["total"] = time.perf_counter() - started
    seconds["plan"] -= seconds.get("discover", 0) + seconds.get("fingerprint", 0)
    print("SCALE-RESULT " + json.dumps({
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_rss_children_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
        "storage": chosen[0] if chosen else None, "roc_auc": result.metrics.get("roc_auc")}), flush=True)


def run_one(data: Path, root: Path, extra: list[str], keep_cache: bool) -> dict:
    """Train on ``data`` in a fresh process; returns its stage times and peak memory."""
    cache = root / "cache"
    if not keep_cache:
        shutil.rmtree(cache, ignore_errors=True)
    out = root / "runs"
    overrides = ["train.max_epochs=1", "model.filters=[8,16]", "model.blocks_per_stage=1",
                 f"data.cache_dir={cache}", *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, __file__, "--child", str(data), str(out), *overrides],
                          stdout=subprocess.PIPE, text=True, env=env)
    line = next((x for x in done.stdout.splitlines() if x.startswith("SCALE-RESULT ")), None)
    if done.returncode != 0 or line is None:
        raise SystemExit(f"training on {data} failed (exit {done.returncode})")
    return json.loads(line.split(" ", 1)[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="*", default=[1000, 10000], help="dataset sizes (images)")
    parser.add_argument("--volumes", type=int, default=0, help="also a 3D set of this many 128^3 volumes")
    parser.add_argument("--root", default="/tmp/medclf-scale", help="folder of the datasets, cache and runs")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="extra key=value settings")
    parser.add_argument("--keep-cache", action="store_true", help="do not empty the disk cache before a run")
    parser.add_argument("--generate-only", action="store_true", help="only write the datasets")
    parser.add_argument("--record", action="store_true",
                        help="append the JSON line to bench/scale.jsonl (shown in docs/benchmarks.md)")
    parser.add_argument("--note", default="", help="machine note stored with the record, e.g. 'quiet machine'")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child[0], args.child[1], args.child[2:])
        return
    root = Path(args.root)
    plans = [(n, "2d", root / f"images-{n}") for n in args.n]  # a size may repeat (see growth_of)
    if args.volumes:
        plans.append((args.volumes, "3d", root / f"volumes-{args.volumes}"))
    for n, kind, folder in plans:
        generate(folder, n, volumes=kind == "3d")
    if args.generate_only:
        return
    runs = []
    for n, kind, folder in plans:
        result = run_one(folder, root, args.overrides, args.keep_cache)
        runs.append({"n": n, "kind": kind, **result})
        print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    record = {"runs": runs, "growth": growth_of(runs)}
    print(json.dumps(record))
    if args.record:
        import records  # bench/records.py (this script's folder is on sys.path)
        records.append(records.SCALE, record, args.note, "python bench/scale.py " + shlex.join(sys.argv[1:]))
        print(f"appended to {records.SCALE} (python bench/suite.py --render shows it in docs/benchmarks.md)",
              file=sys.stderr)


def growth_of(runs: list[dict]) -> dict:
    """Each stage's time ratio between consecutive 2D sizes. A size run more than once (e.g.
    ``--n 10000 100000 10000``, before and after the large run, so that a drift of the
    machine's speed during the large run weighs on both sides) counts with its median time."""
    seconds: dict[int, dict[str, list[float]]] = {}
    for run in runs:
        if run["kind"] == "2d":
            for stage, value in run["seconds"].items():
                seconds.setdefault(run["n"], {}).setdefault(stage, []).append(value)
    sizes = sorted(seconds)
    growth = {}
    for small, large in zip(sizes, sizes[1:]):
        a = {stage: float(np.median(v)) for stage, v in seconds[small].items()}
        b = {stage: float(np.median(v)) for stage, v in seconds[large].items()}
        growth[f"{small}->{large}"] = {"size_ratio": large / small, "runs": [
            sum(r["n"] == small for r in runs), sum(r["n"] == large for r in runs)],
            **{stage: round(b[stage] / max(a[stage], 1e-3), 2) for stage in STAGES if stage in a and stage in b}}
    return growth


if __name__ == "__main__":
    main()
