"""``medclf train``: dataset -> plan -> preprocess -> fit -> evaluate, into a run directory."""
from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import pandas as pd
import torch

from .. import rundir
from ..checkpoints import read_run_checkpoint
from ..config import Config, load_yaml, validate
from ..data.prepare import prepare_splits
from ..data.preprocess import cache_root
from ..data.sources import Manifest, discover_source, ignore_reason
from ..diagnostics import write_architecture
from ..errors import ConfigError, DataError, RunDirError
from ..evaluation.checkpoint import EvaluationSplit, evaluate_model
from ..evaluation.outputs import evaluate_task, summary_lines
from ..evaluation.predict import pick_device, predict_probabilities, predict_tta, training_counts
from ..io import write_csv, write_json, write_yaml
from ..models import create_model
from ..models.prior import add_logit_shift, fit_output_bias
from ..plan import fingerprint, n_pool, n_train, plan_run, read_plan, write_plan
from ..provenance import provenance
from ..training import auto_lr
from ..training.budget import planned_seconds
from ..training.fit import RUN_DIR_ENV, build_trainer, fit, launch_rank, stopped_early
from ..training.reliability import remove_stale_temporaries
from ..training.safety import advise_on_out_of_memory, check_free_space, check_writable, required_bytes
from ..training.task_modules import build_module
from ..training.tasks import finalize_outputs, task_facts
from ._init_from import check_source_leaks, record_source, with_init_from
from ._inspection import adopt_moves, inspect_run
from .fold_processes import start_fold_server
from .folds import fit_folds, fold_threads
from .postrun import after_evaluation

log = logging.getLogger("medclf")


@dataclass
class TrainResult:
    """What :func:`train` returns: the run directory and its test metrics."""

    run_dir: Path
    metrics: dict
    is_global_zero: bool = True  # False in the extra processes of a multi-process (DDP) run


def train(data: str | Path | None, config=None, overrides=None, out: str | Path = "runs",
          name: str | None = None, progress: bool = True, resume: str | Path | None = None,
          overwrite: bool = False, callbacks: list | None = None,
          evaluate_test: bool = True, init_from: str | Path | None = None) -> TrainResult:
    """Train a classifier on a dataset folder and evaluate it on the test split.

    Args:
        data: class-per-folder tree of images, volumes or DICOM series; CSV manifest; MedMNIST
            ``.npz`` or ``medmnist:NAME`` (see :func:`medclf.plan.plan_run`);
            None takes ``data.source`` of the configuration (e.g. a run's own ``config.yaml``).
        config: YAML path, dict or :class:`~medclf.config.Config` with user settings; the
            dataset plan fills in everything not given.
        overrides: ``["train.lr=3e-4", ...]`` or a nested dict, applied last.
        out: folder that receives the run directory.
        name: run name (default ``<data>-<timestamp>``); an existing name gets a suffix.
        progress: show Lightning's progress bar.
        resume: a run directory to continue from its ``checkpoints/last.ckpt`` with its own
            ``config.yaml`` and ``split.csv`` (optimiser, schedule, early stopping, epoch
            counters and per-epoch random state restored); ``data``, ``config`` and
            ``overrides`` must then be empty.
        overwrite: replace an existing run directory named ``name`` instead of picking a
            new name (only a medclf run directory is ever deleted).
        callbacks: extra Lightning callbacks (e.g. the pruning callback of ``medclf tune``).
        evaluate_test: evaluate the best checkpoint on the test split (False: the test split
            is not touched, e.g. in a hyperparameter search, and ``metrics`` is empty).
        init_from: a run directory to fine-tune from: its model settings, its matching
            layers and a new head (:mod:`medclf.commands._init_from`); its training images
            are checked against this run's validation and test images.

    Multi-process training (``trainer.strategy=ddp``): only rank 0 creates the run directory
    and writes run files; the other processes train into it through Lightning (which saves
    checkpoints and logs on rank 0 only) and return ``is_global_zero=False`` without
    evaluating.

    Returns:
        :class:`TrainResult` with the run directory and the test metrics.

    Raises:
        MedclfError: bad configuration, bad data, a diverged training (with advice), an
            output folder that cannot be written or lacks free space, or out of memory
            (:class:`~medclf.training.safety.OutOfMemory`, with advice).
    """
    started = time.perf_counter()
    for noisy in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if resume is not None:
        if data is not None or config is not None or overrides or init_from is not None:
            raise ConfigError("--resume continues a run with its own config.yaml: give no DATA, "
                              "--config or --set with it")
        return _resume(Path(resume), progress, started)
    if init_from is not None:
        overrides = with_init_from(init_from, overrides)
    planned = plan_run(data, config, overrides)
    cfg, manifest, source = planned.config, planned.manifest, planned.source
    if fold_threads(cfg, callbacks) is not None:
        start_fold_server()  # its imports overlap the data's loading (see its module)

    L.seed_everything(cfg.seed, workers=True, verbose=False)  # seeded initialisation
    network = create_model(cfg.model, cfg.data.in_channels, manifest.num_classes)
    _preflight(Path(out), cfg, network, len(manifest.frame))
    data_name = source.split(":", 1)[1] if source.startswith("medmnist:") else Path(source).resolve().name
    rank = launch_rank()
    if rank == 0:
        run_dir = rundir.create_run_dir(out, name, data_name, overwrite=overwrite)
        write_yaml(run_dir / rundir.CONFIG, cfg.to_dict())
        write_plan(run_dir, planned)
    else:  # a DDP process launched by rank 0 (or by torchrun/SLURM): write nothing of its own
        run_dir = Path(os.environ.get(RUN_DIR_ENV) or tempfile.mkdtemp(prefix="medclf-rank"))
    if rank == 0:
        log.warning("%s", planned_time_line(cfg, planned.fingerprint))
    splits, manifest, bad = _prepare(manifest, cfg)
    lr_record = None
    if cfg.train.lr == "auto":  # LR range test at the initial weights; config.yaml gets the number
        lr_record = auto_lr.resolve(cfg, network, splits["train"], manifest.num_classes, run_dir,
                                    auto_lr.planned_lr(planned.plan), rank0=rank == 0)
    if rank == 0:
        _write_manifest(run_dir, manifest, bad, cfg)
        _write_dataset(run_dir, planned.fingerprint, manifest, bad)
        record_source(run_dir, network)
        if lr_record is not None:
            auto_lr.record_choice(run_dir, cfg, lr_record)
    return _fit_and_evaluate(run_dir, cfg, manifest, splits, network, progress, started, ckpt=None,
                             callbacks=callbacks, evaluate_test=evaluate_test)


def planned_time_line(cfg: Config, facts: dict) -> str:
    """One line saying what will be trained and its estimated time on a 2-core CPU
    (:func:`medclf.training.budget.planned_seconds`)."""
    seconds = planned_seconds(cfg, n_pool(facts), n_train(facts))
    models = f"{cfg.train.folds} fold models" if cfg.train.folds >= 2 else "one model"
    size = "x".join(str(s) for s in cfg.data.image_size)
    budget = f" (train.time_budget_s={cfg.train.time_budget_s:g})" if cfg.train.time_budget_s else ""
    return (f"planned: {models}, {cfg.train.max_epochs} epochs each, {size} pixels: about "
            f"{seconds / 60:.1f} min of training on a 2-core CPU{budget}")


def _prepare(manifest, cfg):
    with advise_on_out_of_memory(cfg, "preprocessing"):
        return prepare_splits(manifest, cfg)


def _preflight(out: Path, cfg: Config, network, n_images: int) -> None:
    """Fail before any work when ``out`` is not writable or its disk is too full."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunDirError(f"cannot create the output folder {out}: {err.strerror or err}") from None
    check_writable(out)
    image_shape = [cfg.data.in_channels, *cfg.data.image_size]
    check_free_space(out, required_bytes(network, n_images, image_shape, disk_cache=False))
    if cfg.data.cache == "disk":
        root = cache_root(cfg)
        root.mkdir(parents=True, exist_ok=True)
        check_writable(root)
        check_free_space(root, n_images * 4 * int(torch.tensor(image_shape).prod()) + 2 ** 20)


def _write_manifest(run_dir: Path, manifest, bad, cfg: Config) -> None:
    write_csv(run_dir / rundir.SPLIT, manifest.frame)
    if bad:
        write_csv(run_dir / rundir.BAD_FILES, pd.DataFrame(bad, columns=["path", "reason"]))
        log.warning("skipped %d unreadable file(s), listed in %s", len(bad), run_dir / rundir.BAD_FILES)
    if manifest.ignored:
        write_csv(run_dir / rundir.IGNORED_FILES,
                  pd.DataFrame([(p, ignore_reason(p)) for p in manifest.ignored], columns=["path", "reason"]))
    write_json(run_dir / rundir.PROVENANCE, provenance(manifest.frame, cfg.to_dict()))


def _write_dataset(run_dir: Path, facts: dict, manifest: Manifest, bad: list) -> None:
    write_json(run_dir / rundir.DATASET, {**facts, "counts": manifest.counts(), "n_skipped": len(bad),
                                          "carved_splits": list(manifest.carved), **task_facts(manifest)})


def _resume(run_dir: Path, progress: bool, started: float) -> TrainResult:
    """Continue a killed run from ``checkpoints/last.ckpt`` (or from scratch without one)."""
    if not (run_dir / rundir.CONFIG).is_file():
        raise RunDirError(f"{run_dir} is not a medclf run directory (no {rundir.CONFIG})")
    cfg = validate(load_yaml(run_dir / rundir.CONFIG))
    if (run_dir / rundir.TEST_METRICS).exists():
        raise RunDirError(f"{run_dir} has finished (test_metrics.json exists); use 'medclf evaluate' "
                          "or start a new run")
    if fold_threads(cfg) is not None:
        start_fold_server()
    removed = remove_stale_temporaries(run_dir)
    if removed:
        log.warning("removed %d partly written file(s) of the killed run", len(removed))
    if (run_dir / rundir.SPLIT).exists() and (run_dir / rundir.DATASET).exists():
        run = rundir.load_run(run_dir)
        stored = pd.read_csv(run_dir / rundir.SPLIT, dtype={"label": str, "path": str, "patient_id": str})
        task = run.dataset.get("task", "classification")
        columns = ["path", "label", "split"] + (run.class_names if task != "classification" else []) \
            + (["patient_id"] if "patient_id" in stored.columns else [])
        manifest = Manifest(stored[columns].copy(), run.class_names, task=task,
                            carved=tuple(run.dataset.get("carved_splits", ())))
    else:  # killed while preprocessing: the seeded split is found again
        manifest = discover_source(cfg.data.source, cfg.data, cfg.seed)
        stored = None
    stored_plan = read_plan(run_dir) or {}  # {} for a run written before plan.json
    facts = (stored_plan.get("fingerprint") or fingerprint(manifest)) if stored is None else None
    splits, manifest, bad = _prepare(manifest, cfg)
    if stored is not None:
        old = dict(zip(stored.path, stored.sha.astype(str)))
        new = dict(zip(manifest.frame.path, manifest.frame.sha))
        changed = sorted(path for path in set(old) | set(new) if old.get(path) != new.get(path))
        if changed:
            raise DataError(f"{len(changed)} image(s) changed since the run started (content hash "
                            f"differs from {rundir.SPLIT}), e.g. {changed[0]}; start a new run")
    else:
        _write_manifest(run_dir, manifest, bad, cfg)
        _write_dataset(run_dir, facts, manifest, bad)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    network = create_model(cfg.model, cfg.data.in_channels, manifest.num_classes)
    check_free_space(run_dir, required_bytes(network, 0, [1], disk_cache=False))
    if cfg.train.lr == "auto":  # killed before the range test had chosen: nothing was trained yet
        plan = stored_plan.get("plan") or plan_run(cfg.data.source, cfg).plan
        record = auto_lr.resolve(cfg, network, splits["train"], manifest.num_classes, run_dir,
                                 auto_lr.planned_lr(plan))
        auto_lr.record_choice(run_dir, cfg, record)
    ckpt = run_dir / rundir.LAST
    if not ckpt.exists():
        if cfg.train.folds < 2:  # an ensemble's folds resume from their own checkpoints
            log.warning("%s has no checkpoint yet: training starts from the first epoch", run_dir)
        ckpt = None
    return _fit_and_evaluate(run_dir, cfg, manifest, splits, network, progress, started, ckpt=ckpt)


def _fit_and_evaluate(run_dir: Path, cfg: Config, manifest, splits, network, progress: bool,
                      started: float, ckpt: Path | None, callbacks: list | None = None,
                      evaluate_test: bool = True) -> TrainResult:
    rank0 = launch_rank() == 0  # the other DDP processes write nothing of their own
    if rank0:  # carved splits lose their copies of training images (DDP processes adopt rank 0's split)
        splits, manifest, leaks = inspect_run(run_dir, manifest, splits, regroup=cfg.train.folds < 2)
    else:
        (splits, manifest), leaks = adopt_moves(run_dir, manifest, splits), {"val": set(), "test": set()}
    if rank0:  # a run started from another run: that run's training images against val/test
        leaks = check_source_leaks(run_dir, cfg, manifest, splits, leaks)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    train_labels = splits["train"][1]
    module = build_module(network, manifest, cfg, train_labels)  # loss and metrics of the task
    with torch.random.fork_rng():  # drawing the graph must not change the training's randomness
        if rank0:
            write_architecture(network, (cfg.data.in_channels, *cfg.data.image_size), run_dir)
    if cfg.train.folds >= 2:  # the small-data protocol: k fold models and their ensemble
        metrics, zero = fit_folds(run_dir, cfg, manifest, splits, progress, started, callbacks, evaluate_test)
        if zero and metrics:
            after_evaluation(run_dir, cfg)
        return TrainResult(run_dir, metrics, is_global_zero=zero)
    trainer = build_trainer(cfg, run_dir, progress, n_train=len(train_labels), train=splits["train"])
    resumed_from = None
    ckpt_arg = None
    if ckpt is not None:
        saved = read_run_checkpoint(ckpt)  # refuses a file holding code before Lightning reads it
        resumed_from = int(saved.get("epoch", -1))
        log.warning("resuming %s after epoch %d", run_dir, resumed_from)
        if stopped_early(saved):
            trainer = None  # early stopping had ended the run: only the evaluation is left
        else:
            ckpt_arg = str(ckpt)
        del saved
    if trainer is not None:
        trainer.callbacks.extend(callbacks or [])
        fit(trainer, module, splits, cfg, run_dir, ckpt_arg)
        if not trainer.is_global_zero:
            return TrainResult(run_dir, {}, is_global_zero=False)
    if not evaluate_test:
        return TrainResult(run_dir, {})

    best = run_dir / rundir.BEST
    checkpoint = best if best.exists() else run_dir / rundir.LAST
    saved = read_run_checkpoint(checkpoint)
    module.load_state_dict(saved["state_dict"])
    # the outputs assume train.output_prior from here on, as they do in evaluate/predict/serve
    finalize_outputs(module.model, manifest.task, training_counts(manifest.frame, manifest.class_names),
                     cfg.train, task_facts(manifest))
    bias = _fit_output_bias(run_dir, module.model, cfg, manifest, splits) if manifest.task == "classification" else None
    epochs_run = trainer.current_epoch if trainer is not None else resumed_from + 1
    extra = {"checkpoint_epoch": saved.get("epoch"), "epochs_run": epochs_run,
             "world_size": trainer.world_size if trainer is not None else 1,
             "train_time_s": round(time.perf_counter() - started, 1)}
    if resumed_from is not None:
        extra["resumed_after_epoch"] = resumed_from
    if bias is not None:
        extra["output_bias"] = bias
    frame = manifest.frame
    test = EvaluationSplit(*splits["test"], frame[frame.split == "test"])
    val = EvaluationSplit(*splits["val"], frame[frame.split == "val"])
    if manifest.task != "classification":  # multilabel / regression (medclf.evaluation.outputs)
        metrics = evaluate_task(module.model, run_dir, manifest.class_names, test, val, cfg,
                                str(checkpoint.relative_to(run_dir)), extra, task_facts(manifest),
                                pick_device(cfg.trainer.accelerator))
    else:
        metrics = evaluate_model(module.model, run_dir, manifest.class_names, test, val, cfg,
                                 str(checkpoint.relative_to(run_dir)), extra, leaks,
                                 pick_device(cfg.trainer.accelerator))
    after_evaluation(run_dir, cfg)  # gallery and report.html (plug-ins; failures only warn)
    return TrainResult(run_dir, metrics)


def _fit_output_bias(run_dir: Path, model: torch.nn.Module, cfg: Config, manifest, splits: dict) -> dict | None:
    """``train.output_bias=validation``: fit the bias on the validation split
    (:func:`medclf.models.prior.fit_output_bias`, on the probabilities the evaluation uses,
    test-time augmentation included), add it to ``model`` when the test keeps it, and store
    it in ``dataset.json``, where every later load of the run finds it. Returns the fit's
    record for ``test_metrics.json``, or None (no such setting, or no validation split)."""
    images, labels = splits["val"]
    if cfg.train.output_bias != "validation" or len(labels) == 0:
        return None
    device = pick_device(cfg.trainer.accelerator)
    probabilities = predict_probabilities(model, images, cfg.eval.batch_size, device)
    if cfg.eval.tta:
        probabilities = predict_tta(model, images, cfg, device, probabilities)[0]
    counts = training_counts(manifest.frame, manifest.class_names)
    fitted = fit_output_bias(probabilities, labels.numpy(), counts, cfg.train)
    facts = json.loads((run_dir / rundir.DATASET).read_text(encoding="utf-8"))
    facts.pop("output_bias", None)
    if fitted["shift"] is not None:
        add_logit_shift(model, fitted["shift"])
        facts["output_bias"] = fitted["shift"]
        log.warning("output bias: the validation split rejects the trained-for class prior (likelihood ratio "
                    "%.1f, p = %.2g); the logits are shifted by %s", fitted["likelihood_ratio"], fitted["p_value"],
                    [round(v, 3) for v in fitted["shift"]])
    write_json(run_dir / rundir.DATASET, facts)
    return fitted


def main(args) -> int:
    """``medclf train``: print the test metrics and, last, the run directory."""
    result = train(args.data, config=args.config, overrides=args.overrides, out=args.out,
                   name=args.name, progress=not args.no_progress, resume=args.resume,
                   overwrite=args.overwrite, init_from=args.init_from)
    if not result.is_global_zero:  # a DDP process launched by rank 0: rank 0 reports
        return 0
    print("\n".join(summary_lines(result.metrics, result.metrics["class_names"])))
    print(result.run_dir)
    return 0
