"""Cost of the training diagnostics: the same training with diagnostics off and on.

The dataset is discovered, planned and preprocessed once; then ``trainer.fit`` runs
alternately with ``diagnostics.enabled=false`` and ``true`` (default sampling:
``diagnostics.every_n_steps`` and the other diagnostics keys at their defaults), each
``--repeats`` times with the same seed, and the fastest fit of each mode is compared (the
fit time includes the diagnostics figures drawn at the end of training). Wall time and the
process's CPU time are both reported: on a shared machine the CPU time is the steadier
measure. Prints one JSON line: ``{"slowdown_pct", "cpu_slowdown_pct", "fit_s_off",
"fit_s_on", "cpu_s_off", "cpu_s_on", "s_per_epoch_off", "s_per_epoch_on", ...}``.

Usage: python bench/diagnostics.py [--data DIR] [--epochs 4] [--repeats 2] [--set key=value ...]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "covid19-xray"))
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()

    import lightning as L
    import torch

    from medclf.config import deep_merge, parse_overrides, validate
    from medclf.data.datamodule import ImageDataModule
    from medclf.data.prepare import prepare_splits
    from medclf.data.sources.folder import discover
    from medclf.models import create_model
    from medclf.plan import fingerprint, plan_config
    from medclf.training.fit import build_trainer, class_weights
    from medclf.training.module import Classifier

    tree = deep_merge(parse_overrides(args.overrides),
                      {"train": {"max_epochs": args.epochs, "early_stopping": {"enabled": False}}})
    early = validate(tree)
    manifest = discover(Path(args.data), early.data.val_fraction, early.data.test_fraction, early.seed)
    base = deep_merge(plan_config(fingerprint(manifest)), tree)
    started = time.perf_counter()
    splits, manifest, _ = prepare_splits(manifest, validate(base))
    prepare_s = time.perf_counter() - started

    times = {"off": [], "on": []}
    cpu_times = {"off": [], "on": []}
    recorded = None
    with tempfile.TemporaryDirectory() as out:
        for repeat in range(args.repeats):
            for mode in ("off", "on"):
                cfg = validate(deep_merge(base, {"diagnostics": {"enabled": mode == "on"}}))
                run_dir = Path(out) / f"{mode}{repeat}"
                (run_dir / "checkpoints").mkdir(parents=True)
                L.seed_everything(cfg.seed, workers=True, verbose=False)
                weights = class_weights(splits["train"][1], manifest.num_classes, cfg.train.class_weights)
                network = create_model(cfg.model, cfg.data.in_channels, manifest.num_classes)
                module = Classifier(network, manifest.num_classes, cfg.train, weights)
                trainer = build_trainer(cfg, run_dir, progress=False)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    start, cpu = time.perf_counter(), time.process_time()
                    trainer.fit(module, datamodule=ImageDataModule(splits, cfg))
                    times[mode].append(time.perf_counter() - start)
                    cpu_times[mode].append(time.process_time() - cpu)
                if mode == "on":
                    stats = run_dir / "diagnostics" / "stats.csv"
                    recorded = len({line.split(",")[0] for line in stats.read_text().splitlines()[1:]})
                steps = trainer.global_step
    best = {mode: min(values) for mode, values in times.items()}
    cpu = {mode: min(values) for mode, values in cpu_times.items()}
    print(json.dumps({
        "data": args.data, "image_size": cfg.data.image_size, "model": cfg.model.name,
        "epochs": args.epochs, "train_images": len(splits["train"][1]), "steps": steps,
        "every_n_steps": cfg.diagnostics.every_n_steps, "recorded_steps": recorded,
        "fit_s_off": [round(t, 2) for t in times["off"]], "fit_s_on": [round(t, 2) for t in times["on"]],
        "s_per_epoch_off": round(best["off"] / args.epochs, 3), "s_per_epoch_on": round(best["on"] / args.epochs, 3),
        "slowdown_pct": round(100 * (best["on"] / best["off"] - 1), 1),
        "cpu_s_off": [round(t, 2) for t in cpu_times["off"]], "cpu_s_on": [round(t, 2) for t in cpu_times["on"]],
        "cpu_slowdown_pct": round(100 * (cpu["on"] / cpu["off"] - 1), 1),
        "torch_threads": torch.get_num_threads(), "prepare_s": round(prepare_s, 1),
        "overrides": args.overrides}))


if __name__ == "__main__":
    main()
