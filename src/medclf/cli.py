"""The ``medclf`` command: train, evaluate, predict, preview, explain, report, serve.

User errors (bad data, bad configuration, a diverged run) print a clear message and exit
with status 2, never a traceback.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from .errors import MedclfError


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE.yaml", help="configuration file (YAML)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one setting, e.g. --set train.lr=3e-4 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medclf", description=__doc__.splitlines()[0])
    from . import __version__
    parser.add_argument("--version", action="version", version=f"medclf {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train and evaluate a classifier on a dataset folder")
    p.add_argument("data", nargs="?", help="class-per-folder tree, with or without train/val/test "
                   "folders (default: data.source of --config, e.g. a run's config.yaml)")
    _common(p)
    p.add_argument("--out", default="runs", help="folder that receives run directories (default: runs/)")
    p.add_argument("--name", help="run name (default: <data>-<date>-<time>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a killed run from its last checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing run directory of the same --name (default: pick a new name)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("evaluate", help="re-evaluate a finished run")
    p.add_argument("run", help="run directory")
    p.add_argument("--data", help="evaluate on this folder instead of the run's test split")

    p = sub.add_parser("inspect", help="dataset fingerprint, duplicates and leakage between splits, unreadable files")
    p.add_argument("data", help="class-per-folder tree (split as `train` would split it)")
    _common(p)
    p.add_argument("--out", metavar="FILE.json", help="also save the inspection as JSON")

    p = sub.add_parser("predict", help="predict image files with a run's model")
    p.add_argument("run", help="run directory")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--csv", help="also write the predictions to this CSV file")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="test-time augmentation: average over flipped and shifted copies "
                        "(default: the run's eval.tta)")

    p = sub.add_parser("preview", help="draw what preprocessing, augmentation and normalisation do to the images")
    p.add_argument("data", help="class-per-folder tree, with or without train/val/test folders")
    _common(p)
    p.add_argument("--n", type=int, default=16, help="images in the per-class grid (default: 16)")
    p.add_argument("--augment", type=int, default=5, metavar="K", help="random augmentations per image (default: 5)")
    p.add_argument("--out", default="preview.png", help="PNG file to write (default: preview.png)")

    p = sub.add_parser("serve", help="HTTP API and web page over a folder of runs")
    p.add_argument("runs_dir", nargs="?", default="runs", metavar="RUNS_DIR",
                   help="folder of run directories (default: runs/)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default: 8000)")
    p.add_argument("--max-upload-mb", type=float, default=50.0, help="larger uploads get 413 (default: 50)")
    p = sub.add_parser("explain", help="heatmaps of where the model looks (Grad-CAM), per image")
    p.add_argument("run", help="run directory")
    p.add_argument("images", nargs="+", help="image files (2D) or NIfTI volumes (3D)")
    p.add_argument("--class", dest="class_name", metavar="NAME",
                   help="class to explain (default: the predicted class)")
    p.add_argument("--out", help="output folder (default: RUN/explanations)")
    p.add_argument("--method", choices=["gradcam", "gradcampp", "occlusion"],
                   help="saliency method (default: the run's explain.method, gradcam)")
    p.add_argument("--layer", help="target layer of Grad-CAM (default: the last convolutional block)")

    p = sub.add_parser("report", help="write the run's report.html (one self-contained page)")
    p.add_argument("run", help="run directory")
    p.add_argument("--out", help="HTML file to write (default: RUN/report.html)")

    p = sub.add_parser("tune", help="hyperparameter search (Optuna): resumable, prunable, distributed")
    p.add_argument("data", help="dataset folder, as for train")
    p.add_argument("--space", required=True, metavar="SPACE.yaml",
                   help="search space: config keys with choices or ranges (see medclf.search.space)")
    p.add_argument("--sampler", choices=["grid", "random", "tpe"], default="tpe", help="default: tpe")
    p.add_argument("--trials", type=int, help="finished trials wanted (default: grid size, else 20)")
    p.add_argument("--storage", help="Optuna storage URL shared by workers, e.g. postgresql://user:pw@host/db "
                                     "(default: SQLite in the search directory)")
    p.add_argument("--name", help="study name (default: <data>-<space>-<sampler>); same command = same study")
    p.add_argument("--out", default="searches", help="folder of search directories (default: searches/)")
    p.add_argument("--pruner", choices=["auto", "median", "hyperband", "none"], default="auto",
                   help="pruning of hopeless trials (auto: median, none for grid)")
    p.add_argument("--metric", default="val_roc_auc", help="validation metric to optimise (default: val_roc_auc)")
    _common(p)
    p.add_argument("--progress", action="store_true", help="show each trial's progress bar")

    p = sub.add_parser("sanity", help="checks before a full training: forward, initial loss, gradients, "
                                      "activations, overfit a small subset, LR range test")
    p.add_argument("data", help="dataset folder, as for train")
    _common(p)
    p.add_argument("--out", default="runs", help="folder receiving <data>-sanity-<time>/ (default: runs/)")
    p.add_argument("--per-class", type=int, default=8, help="training images per class in the subset (default 8)")
    p.add_argument("--steps", type=int, default=200, help="step budget of the overfit check (default 200)")
    p.add_argument("--no-lr-test", action="store_true", help="skip the LR range test")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="medclf: %(levelname)s: %(message)s")
    try:
        return COMMANDS[args.command](args)
    except MedclfError as err:
        print(f"medclf {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("medclf: interrupted", file=sys.stderr)
        return 130


def _train(args) -> int:
    from .evaluation.metrics import summary_lines
    from .training.run import train
    result = train(args.data, config=args.config, overrides=args.overrides, out=args.out,
                   name=args.name, progress=not args.no_progress, resume=args.resume,
                   overwrite=args.overwrite)
    if not result.is_global_zero:  # a DDP process launched by rank 0: rank 0 reports
        return 0
    print("\n".join(summary_lines(result.metrics, result.metrics["class_names"])))
    print(result.run_dir)
    return 0


def _evaluate(args) -> int:
    from .evaluation.evaluate import evaluate_run
    from .evaluation.metrics import summary_lines
    out, metrics = evaluate_run(args.run, data=args.data)
    print("\n".join(summary_lines(metrics, metrics["class_names"])))
    print(out)
    return 0


def _inspect(args) -> int:
    from .config import validate
    from .inspect import inspect_dataset, summary_lines
    from .io import write_json
    from .training.run import user_tree
    cfg = validate(user_tree(args.config, args.overrides))
    result = inspect_dataset(args.data, cfg.data.val_fraction, cfg.data.test_fraction, cfg.seed)
    print("\n".join(summary_lines(result)))
    if args.out:
        write_json(args.out, result)
        print(Path(args.out))
    return 0


def _predict(args) -> int:
    from .io import write_csv
    from .inference import predict_files
    frame = predict_files(args.run, args.images, tta=args.tta)
    tta = "tta_prob_" if frame.tta_views.max() > 0 else ""
    prob_cols = [c for c in frame.columns if c.startswith(tta + "prob_")]
    for _, row in frame.iterrows():
        if row.error:
            print(f"{row.path}: error: {row.error}")
            continue
        probs = "  ".join(f"{c[len(tta) + 5:]}={row[c]:.3f}" for c in prob_cols)
        note = f"  (test-time augmentation, {row.tta_views} views)" if tta else ""
        print(f"{row.path}: {row.predicted} ({row.probability:.3f})  {probs}{note}")
    if args.csv:
        write_csv(args.csv, frame)
        print(Path(args.csv))
    return 1 if (frame.error != "").any() else 0


def _preview(args) -> int:
    from .errors import ConfigError
    from .preview import preview
    if args.n < 1 or args.augment < 0:
        raise ConfigError("--n must be at least 1 and --augment at least 0")
    result = preview(args.data, config=args.config, overrides=args.overrides, n=args.n,
                     out=args.out, n_augment=args.augment)
    grids = ", ".join(f"{name} {r}x{c}" for name, (r, c) in result.grids.items())
    print(f"preview: {grids} panels, {result.size[0]}x{result.size[1]} pixels")
    print(result.path)
    return 0


def _serve(args) -> int:
    from .serve import serve
    serve(args.runs_dir, host=args.host, port=args.port, max_upload_mb=args.max_upload_mb)
    return 0


def _explain(args) -> int:
    from . import rundir
    from .explain import explain_files
    run = rundir.load_run(args.run)
    method = args.method or run.config.explain.method
    out, frame = explain_files(run.path, args.images, args.out, args.class_name, method,
                               args.layer or run.config.explain.target_layer)
    for _, row in frame.iterrows():
        extra = f"  {row.nifti}" if row.nifti else ""
        print(f"{row.path}: {row.predicted} ({row.probability:.3f}); {method} for {row.class_name}: "
              f"{row.png}{extra}")
    print(out)
    return 0


def _report(args) -> int:
    from .report import write_report
    print(write_report(args.run, args.out))
    return 0


def _tune(args) -> int:
    from .search.tune import format_table, tune
    try:
        result = tune(args.data, args.space, sampler=args.sampler, trials=args.trials, storage=args.storage,
                      name=args.name, out=args.out, pruner=args.pruner, config=args.config,
                      overrides=args.overrides, metric=args.metric, progress=args.progress)
    except (KeyboardInterrupt, SystemExit):
        print("medclf tune: interrupted; run the same command again to continue the search", file=sys.stderr)
        return 130
    print(format_table(result.table))
    if result.test_metrics:
        m = result.test_metrics
        print(f"best trial on the test split (never used to rank): accuracy {m['accuracy']:.3f}  "
              f"balanced accuracy {m['balanced_accuracy']:.3f}  ROC AUC {m['roc_auc']:.3f}")
    if result.best_config:
        print(f"best configuration: {result.best_config}  (medclf train {args.data} --config {result.best_config})")
    if not result.complete:
        print("the study does not have all its trials yet (other workers?): run the command again to continue")
    print(result.search_dir)
    return 0


def _sanity(args) -> int:
    from .sanity import sanity
    report = sanity(args.data, config=args.config, overrides=args.overrides, out=args.out,
                    per_class=args.per_class, max_steps=args.steps, lr_test=not args.no_lr_test)
    print("\n".join(report.lines()))
    print(report.out_dir)
    return 0 if report.passed else 1


COMMANDS = {"train": _train, "evaluate": _evaluate, "predict": _predict, "preview": _preview,
            "explain": _explain, "report": _report, "serve": _serve, "inspect": _inspect,
            "tune": _tune, "sanity": _sanity}

if __name__ == "__main__":
    sys.exit(main())
