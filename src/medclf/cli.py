"""The ``medclf`` command line: argparse only; each verb runs ``medclf.commands.<verb>.main``.

User errors (bad data, bad configuration, a diverged run) print a clear message and exit
with status 2, never a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .errors import MedclfError


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE.yaml", help="configuration file (YAML)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one setting, e.g. --set train.lr=3e-4 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medclf", description=__doc__.splitlines()[0])
    from .version import __version__
    parser.add_argument("--version", action="version", version=f"medclf {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train and evaluate a classifier on a dataset")
    p.add_argument("data", nargs="?", help="dataset: class-per-folder tree (with or without train/val/test "
                   "folders), CSV manifest, MedMNIST .npz or medmnist:NAME (default: data.source of --config, "
                   "e.g. a run's config.yaml)")
    _common(p)
    p.add_argument("--out", default="runs", help="folder that receives run directories (default: runs/)")
    p.add_argument("--name", help="run name (default: <data>-<date>-<time>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a killed run from its last checkpoint")
    p.add_argument("--init-from", metavar="RUN_DIR", help="fine-tune from another run: its model settings and "
                   "matching layers, a new head for this task's classes; its training images are checked "
                   "against this run's validation and test images (see train.freeze_epochs, train.backbone_lr_scale)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing run directory of the same --name (default: pick a new name)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("evaluate", help="re-evaluate a finished run")
    p.add_argument("run", help="run directory")
    p.add_argument("--data", help="evaluate on this dataset (class folders, CSV, .npz) instead of the run's test split")

    p = sub.add_parser("inspect", help="dataset fingerprint, duplicates and leakage between splits, unreadable files")
    p.add_argument("data", help="dataset: class-per-folder tree, CSV manifest, MedMNIST .npz or medmnist:NAME (split as `train` would split it)")
    _common(p)
    p.add_argument("--out", metavar="FILE.json", help="also save the inspection as JSON")

    p = sub.add_parser("predict", help="predict image files with a run's model")
    p.add_argument("run", help="run directory")
    p.add_argument("images", nargs="+", help="image files, DICOM files or series folders, NIfTI volumes, "
                   "or file.npz#split/index items")
    p.add_argument("--csv", help="also write the predictions to this CSV file")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="test-time augmentation: average over flipped and shifted copies "
                        "(default: the run's eval.tta)")

    p = sub.add_parser("preview", help="draw what preprocessing, augmentation and normalisation do to the images")
    p.add_argument("data", help="dataset: class-per-folder tree, CSV manifest, MedMNIST .npz or medmnist:NAME")
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
    p.add_argument("--backend", choices=["torch", "onnx"], default="torch",
                   help="prediction backend: eager PyTorch or ONNX Runtime on the CPU (Grad-CAM stays on PyTorch; "
                        "default: torch)")
    p.add_argument("--batch-window-ms", type=float, default=5.0, help="micro-batching: how long a prediction "
                   "waits for concurrent ones to share its forward pass, milliseconds (0: off; default: 5)")
    p.add_argument("--max-batch", type=int, default=32, help="micro-batching: most images per forward pass "
                   "(default: 32)")
    p = sub.add_parser("export", help="write a run's network as ONNX or TorchScript with its preprocessing metadata")
    p.add_argument("run", help="run directory")
    p.add_argument("--format", choices=["onnx", "torchscript"], default="onnx", help="file format (default: onnx)")
    p.add_argument("--out", metavar="FILE", help="file to write (default: RUN/export/model.onnx or model.pt); "
                   "the metadata also goes to FILE.json")

    p = sub.add_parser("explain", help="heatmaps of where the model looks (Grad-CAM), per image")
    p.add_argument("run", help="run directory")
    p.add_argument("images", nargs="+", help="image files, DICOM files or series folders, NIfTI volumes, "
                   "or file.npz#split/index items")
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
    p.add_argument("data", help="dataset: class-per-folder tree, CSV manifest, MedMNIST .npz or medmnist:NAME, as for train")
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
    p.add_argument("data", help="dataset: class-per-folder tree, CSV manifest, MedMNIST .npz or medmnist:NAME, as for train")
    _common(p)
    p.add_argument("--out", default="runs", help="folder receiving <data>-sanity-<time>/ (default: runs/)")
    p.add_argument("--per-class", type=int, default=8, help="training images per class in the subset (default 8)")
    p.add_argument("--steps", type=int, default=200, help="step budget of the overfit check (default 200)")
    p.add_argument("--no-lr-test", action="store_true", help="skip the LR range test")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="medclf: %(levelname)s: %(message)s")
    command = importlib.import_module(f"medclf.commands.{args.command}")  # only the verb's imports
    try:
        return command.main(args)
    except MedclfError as err:
        print(f"medclf {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("medclf: interrupted", file=sys.stderr)
        return 130


COMMANDS = ("train", "evaluate", "predict", "preview", "explain", "report", "serve", "inspect", "tune", "sanity", "export")

if __name__ == "__main__":
    sys.exit(main())
