"""``medclf train``: dataset -> plan -> preprocess -> fit -> evaluate, into a run directory."""
from __future__ import annotations

import logging
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import pandas as pd
import torch
from lightning.pytorch.callbacks import (EarlyStopping, EMAWeightAveraging, ModelCheckpoint,
                                         TQDMProgressBar)
from lightning.pytorch.loggers import TensorBoardLogger

from .. import rundir
from ..config import Config, deep_merge, load_yaml, parse_overrides, validate
from ..diagnostics import build_callbacks as build_diagnostics, write_architecture
from ..postrun import after_evaluation
from ..data.datamodule import ImageDataModule
from ..data.sources import Manifest, discover_source, ignore_reason
from ..data.prepare import prepare_splits
from ..evaluation.run import pick_device, predict_probabilities, predict_tta, training_counts, write_evaluation
from ..models.prior import apply_output_prior
from ..inspect import inspect_manifest, leaked_paths
from ..io import write_csv, write_json, write_yaml
from ..models import create_model
from ..plan import fingerprint, plan_config
from ..errors import ConfigError, DataError, RunDirError
from ..provenance import provenance
from ..testing.faults import fault_callbacks
from . import auto_lr
from .callbacks import MetricsCSV
from .reliability import AtomicCheckpointIO, EpochSeeder, remove_stale_temporaries
from .safety import (check_free_space, check_writable, is_out_of_memory, out_of_memory_advice,
                     required_bytes)
from .module import MONITOR_MODES, Classifier

log = logging.getLogger("medclf")


@dataclass
class TrainResult:
    """What :func:`train` returns: the run directory and its test metrics."""

    run_dir: Path
    metrics: dict
    is_global_zero: bool = True  # False in the extra processes of a multi-process (DDP) run


RUN_DIR_ENV = "MEDCLF_RUN_DIR"  # rank 0 tells the DDP processes it launches where its run is


def launch_rank() -> int:
    """This process's global rank as set by the launcher (Lightning, torchrun, SLURM); 0 alone.

    Reads ``RANK``, ``SLURM_PROCID``, ``LOCAL_RANK`` and ``NODE_RANK``: any non-zero value
    means this process is not rank 0 of a multi-process run.
    """
    for name in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK"):
        value = os.environ.get(name, "0")
        if value.isdigit() and int(value) != 0:
            return int(value)
    return 0


def user_tree(config: str | Path | dict | Config | None, overrides) -> dict:
    """The user's settings (YAML file, dict or Config) with ``--set`` overrides, unvalidated."""
    if isinstance(config, Config):
        tree = config.to_dict()
    elif isinstance(config, dict):
        tree = dict(config)
    elif config:
        tree = load_yaml(config)
    else:
        tree = {}
    if isinstance(overrides, dict):
        return deep_merge(tree, overrides)
    return deep_merge(tree, parse_overrides(overrides))


def class_weights(labels: torch.Tensor, num_classes: int, setting,
                  sampler: str = "shuffle") -> torch.Tensor | None:
    """Cross-entropy class weights ``(num_classes,)`` from training labels ``(N,)``.

    ``'auto'`` gives ``N / (K * n_c)`` (scikit-learn's 'balanced' rule), or None with the
    class-balanced sampler (``sampler='balanced'``), whose batches are balanced already
    (weighting them as well would over-correct); ``'none'`` gives None; a list is used as
    given. Raises ConfigError for a list of the wrong length."""
    if setting == "none" or (setting == "auto" and sampler == "balanced"):
        return None
    if setting == "auto":
        counts = torch.bincount(labels, minlength=num_classes).float().clamp(min=1)
        return counts.sum() / (num_classes * counts)
    if len(setting) != num_classes:
        from ..errors import ConfigError
        raise ConfigError(f"train.class_weights: {len(setting)} weights given for {num_classes} classes")
    return torch.tensor(setting, dtype=torch.float32)


def train(data: str | Path | None, config=None, overrides=None, out: str | Path = "runs",
          name: str | None = None, progress: bool = True, resume: str | Path | None = None,
          overwrite: bool = False, callbacks: list | None = None,
          evaluate_test: bool = True) -> TrainResult:
    """Train a classifier on a dataset folder and evaluate it on the test split.

    Args:
        data: class-per-folder tree of images, volumes or DICOM series; CSV manifest; MedMNIST
            ``.npz`` or ``medmnist:NAME`` (see :func:`medclf.data.sources.discover_source`);
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
        if data is not None or config is not None or overrides:
            raise ConfigError("--resume continues a run with its own config.yaml: give no DATA, "
                              "--config or --set with it")
        return _resume(Path(resume), progress, started)
    tree = user_tree(config, overrides)
    early = validate(tree)  # the user's settings alone, to find and split the data
    if data is None and not early.data.source:
        raise ConfigError("no dataset: give DATA or set data.source (a run's config.yaml has it)")
    source = str(data if data is not None else early.data.source)
    manifest = discover_source(source, early.data, early.seed)
    fp = fingerprint(manifest)
    plan = plan_config(fp)
    cfg = validate(deep_merge(plan, deep_merge(tree, {"data": {"source": source}})))

    L.seed_everything(cfg.seed, workers=True, verbose=False)  # seeded initialisation
    network = create_model(cfg.model, cfg.data.in_channels, manifest.num_classes)
    _preflight(Path(out), cfg, network, len(manifest.frame))
    data_name = source.split(":", 1)[1] if source.startswith("medmnist:") else Path(source).resolve().name
    rank = launch_rank()
    if rank == 0:
        run_dir = rundir.create_run_dir(out, name, data_name, overwrite=overwrite)
        write_yaml(run_dir / rundir.CONFIG, cfg.to_dict())
    else:  # a DDP process launched by rank 0 (or by torchrun/SLURM): write nothing of its own
        run_dir = Path(os.environ.get(RUN_DIR_ENV) or tempfile.mkdtemp(prefix="medclf-rank"))
    splits, manifest, bad = _prepare(manifest, cfg)
    lr_record = None
    if cfg.train.lr == "auto":  # LR range test at the initial weights; config.yaml gets the number
        lr_record = auto_lr.resolve(cfg, network, splits["train"], manifest.num_classes, run_dir,
                                    auto_lr.planned_lr(plan), rank0=rank == 0)
    if rank == 0:
        _write_manifest(run_dir, manifest, bad, cfg)
        write_json(run_dir / rundir.DATASET, {**fp, "counts": manifest.counts(), "n_skipped": len(bad)})
        if lr_record is not None:
            auto_lr.record_choice(run_dir, cfg, lr_record)
    return _fit_and_evaluate(run_dir, cfg, manifest, splits, network, progress, started, ckpt=None,
                             callbacks=callbacks, evaluate_test=evaluate_test)


def _prepare(manifest, cfg):
    try:
        return prepare_splits(manifest, cfg)
    except (MemoryError, RuntimeError) as err:
        if is_out_of_memory(err):
            raise out_of_memory_advice(cfg, "preprocessing", err) from None
        raise


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
        from ..data.preprocess import cache_root
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


def _resume(run_dir: Path, progress: bool, started: float) -> TrainResult:
    """Continue a killed run from ``checkpoints/last.ckpt`` (or from scratch without one)."""
    if not (run_dir / rundir.CONFIG).is_file():
        raise RunDirError(f"{run_dir} is not a medclf run directory (no {rundir.CONFIG})")
    cfg = validate(load_yaml(run_dir / rundir.CONFIG))
    if (run_dir / rundir.TEST_METRICS).exists():
        raise RunDirError(f"{run_dir} has finished (test_metrics.json exists); use 'medclf evaluate' "
                          "or start a new run")
    removed = remove_stale_temporaries(run_dir)
    if removed:
        log.warning("removed %d partly written file(s) of the killed run", len(removed))
    if (run_dir / rundir.SPLIT).exists() and (run_dir / rundir.DATASET).exists():
        run = rundir.load_run(run_dir)
        stored = pd.read_csv(run_dir / rundir.SPLIT, dtype={"label": str, "path": str})
        manifest = Manifest(stored[["path", "label", "split"]].copy(), run.class_names)
    else:  # killed while preprocessing: the seeded split is found again
        manifest = discover_source(cfg.data.source, cfg.data, cfg.seed)
        stored = None
    fp = fingerprint(manifest) if stored is None else None
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
        write_json(run_dir / rundir.DATASET, {**fp, "counts": manifest.counts(), "n_skipped": len(bad)})
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    network = create_model(cfg.model, cfg.data.in_channels, manifest.num_classes)
    check_free_space(run_dir, required_bytes(network, 0, [1], disk_cache=False))
    if cfg.train.lr == "auto":  # killed before the range test had chosen: nothing was trained yet
        record = auto_lr.resolve(cfg, network, splits["train"], manifest.num_classes, run_dir,
                                 auto_lr.planned_lr(plan_config(fingerprint(manifest))))
        auto_lr.record_choice(run_dir, cfg, record)
    ckpt = run_dir / rundir.LAST
    if not ckpt.exists():
        log.warning("%s has no checkpoint yet: training starts from the first epoch", run_dir)
        ckpt = None
    return _fit_and_evaluate(run_dir, cfg, manifest, splits, network, progress, started, ckpt=ckpt)


def _fit_and_evaluate(run_dir: Path, cfg: Config, manifest, splits, network, progress: bool,
                      started: float, ckpt: Path | None, callbacks: list | None = None,
                      evaluate_test: bool = True) -> TrainResult:
    rank0 = launch_rank() == 0  # the other DDP processes write nothing of their own
    leaks = inspect_run(run_dir, manifest, splits) if rank0 else {"val": set(), "test": set()}
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    train_labels = splits["train"][1]
    weights = class_weights(train_labels, manifest.num_classes, cfg.train.class_weights, cfg.train.sampler)
    module = Classifier(network, manifest.num_classes, cfg.train, weights)
    with torch.random.fork_rng():  # drawing the graph must not change the training's randomness
        if rank0:
            write_architecture(network, (cfg.data.in_channels, *cfg.data.image_size), run_dir)
    trainer = build_trainer(cfg, run_dir, progress, n_train=len(train_labels))
    resumed_from = None
    if ckpt is not None:
        saved = torch.load(ckpt, map_location="cpu", weights_only=False)
        resumed_from = int(saved.get("epoch", -1))
        log.warning("resuming %s after epoch %d", run_dir, resumed_from)
        if _stopped_early(saved):
            ckpt_arg = None  # early stopping had ended the run: only the evaluation is left
            trainer = None
        else:
            ckpt_arg = str(ckpt)
        del saved
    else:
        ckpt_arg = None
    if trainer is not None:
        trainer.callbacks.extend(callbacks or [])
        previous = os.environ.get(RUN_DIR_ENV)
        os.environ[RUN_DIR_ENV] = str(run_dir)  # inherited by the processes DDP launches
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", ".*does not have many workers.*")
            warnings.filterwarnings("ignore", ".*number of training batches.*")
            warnings.filterwarnings("ignore", ".*Checkpoint directory.*exists and is not empty.*")
            try:
                trainer.fit(module, datamodule=ImageDataModule(splits, cfg), ckpt_path=ckpt_arg)
            except (MemoryError, RuntimeError) as err:
                if is_out_of_memory(err):
                    raise out_of_memory_advice(cfg, "training", err) from None
                raise
            finally:
                if previous is None:
                    os.environ.pop(RUN_DIR_ENV, None)
                else:
                    os.environ[RUN_DIR_ENV] = previous
        if not trainer.is_global_zero:
            return TrainResult(run_dir, {}, is_global_zero=False)
    if not evaluate_test:
        return TrainResult(run_dir, {})

    best = run_dir / rundir.BEST
    checkpoint = best if best.exists() else run_dir / rundir.LAST
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    module.load_state_dict(saved["state_dict"])
    # the outputs assume train.output_prior from here on, as they do in evaluate/predict/serve
    apply_output_prior(module.model, training_counts(manifest.frame, manifest.class_names), cfg.train)
    device = pick_device(cfg.trainer.accelerator)
    test_images, test_labels = splits["test"]
    try:
        probabilities = predict_probabilities(module.model, test_images, cfg.eval.batch_size, device)
        val_images, val_labels = splits["val"]
        val_probabilities = predict_probabilities(module.model, val_images, cfg.eval.batch_size, device)
        tta, views = predict_tta(module.model, test_images, cfg, device, probabilities) if cfg.eval.tta else (None, 0)
        val_tta = predict_tta(module.model, val_images, cfg, device, val_probabilities)[0] if cfg.eval.tta else None
    except (MemoryError, RuntimeError) as err:
        if is_out_of_memory(err):
            raise out_of_memory_advice(cfg, "evaluation (lower eval.batch_size)", err) from None
        raise
    val_frame = manifest.frame[manifest.frame.split == "val"]
    if cfg.eval.drop_duplicates:
        keep = ~val_frame.path.isin(leaks["val"]).to_numpy()
        val_probabilities, val_labels = val_probabilities[keep], val_labels[torch.from_numpy(keep)]
        val_tta = val_tta[keep] if val_tta is not None else None
    test_frame = manifest.frame[manifest.frame.split == "test"]
    epochs_run = trainer.current_epoch if trainer is not None else resumed_from + 1
    extra = {"checkpoint_epoch": saved.get("epoch"), "epochs_run": epochs_run,
             "world_size": trainer.world_size if trainer is not None else 1,
             "train_time_s": round(time.perf_counter() - started, 1)}
    if resumed_from is not None:
        extra["resumed_after_epoch"] = resumed_from
    metrics = write_evaluation(run_dir, test_frame, probabilities, test_labels.numpy(),
                               manifest.class_names, str(checkpoint.relative_to(run_dir)), extra,
                               config=cfg, val_labels=val_labels.numpy(), val_probabilities=val_probabilities,
                               tta_probabilities=tta, tta_views_count=views, val_tta_probabilities=val_tta,
                               drop=test_frame.path.isin(leaks["test"]).to_numpy())
    after_evaluation(run_dir, cfg)  # gallery and report.html (plug-ins; failures only warn)
    return TrainResult(run_dir, metrics)


INSPECTION = "inspection.json"


def inspect_run(run_dir: Path, manifest, splits: dict) -> dict[str, set[str]]:
    """Inspect the dataset of a run from its already preprocessed arrays (no decoding),
    write ``inspection.json`` and warn loudly about validation/test images that duplicate
    training images.

    Returns:
        ``{"val": paths, "test": paths}`` of images duplicating a training image.
    """
    decoded = {}
    for split, (images, _) in splits.items():
        paths = manifest.frame.path[manifest.frame.split == split]
        decoded.update(zip(paths, images.numpy()))
    inspection = inspect_manifest(manifest, decoded=decoded)
    write_json(run_dir / INSPECTION, inspection)
    leaks = {s: leaked_paths(inspection, s) for s in ("val", "test")}
    for split, paths in leaks.items():
        if paths:
            bar = "!" * 78
            log.warning("\n%s\n%d %s image(s) duplicate training images (exact or near copies): "
                        "their metrics are inflated. Listed in %s; set eval.drop_duplicates=true to drop them "
                        "from the evaluation.\n  %s\n%s", bar, len(paths), split, run_dir / INSPECTION,
                        "\n  ".join(sorted(paths)[:10]) + ("\n  ..." if len(paths) > 10 else ""), bar)
    return leaks


def _stopped_early(checkpoint: dict) -> bool:
    """True when the checkpoint's EarlyStopping state had already stopped the run."""
    for key, state in (checkpoint.get("callbacks") or {}).items():
        if str(key).startswith("EarlyStopping") and isinstance(state, dict):
            if state.get("stopped_epoch", 0) > 0 or state.get("wait_count", 0) >= state.get("patience", 1 << 30):
                return True
    return False


def build_trainer(cfg: Config, run_dir: Path, progress: bool = True, n_train: int = 0) -> L.Trainer:
    """A Lightning Trainer with the run's checkpoints, early stopping, weight averaging and
    metrics record. ``n_train`` (training images) sets the EMA decay per step."""
    mode = MONITOR_MODES[cfg.train.monitor]
    callbacks = [
        ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best", monitor="val_selection",
                        mode=mode, save_top_k=1, save_last=False, enable_version_counter=False),
        # last.ckpt after every epoch, for --resume (Lightning 2.6's save_last=True writes it
        # only in epochs where the best checkpoint was also written)
        ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="last", monitor=None, save_top_k=1,
                        enable_version_counter=False),
        MetricsCSV(run_dir / rundir.METRICS),
        EpochSeeder(cfg.seed),
        *fault_callbacks(),
    ]
    if cfg.train.early_stopping.enabled:
        callbacks.append(EarlyStopping(monitor="val_selection", mode=mode,
                                       patience=cfg.train.early_stopping.patience,
                                       min_delta=cfg.train.early_stopping.min_delta, check_finite=True))
    if cfg.train.ema_epochs > 0 and n_train > 0:
        steps_per_epoch = max(1, n_train // cfg.train.batch_size)
        decay = 1.0 - 1.0 / max(1.0, cfg.train.ema_epochs * steps_per_epoch)
        callbacks.append(EMAWeightAveraging(decay=decay))  # Lightning's EMA of the weights
    callbacks += build_diagnostics(cfg.diagnostics, run_dir)  # empty unless diagnostics.enabled
    if progress:
        callbacks.append(TQDMProgressBar(refresh_rate=5))
    return L.Trainer(
        max_epochs=cfg.train.max_epochs, accelerator=cfg.trainer.accelerator,
        devices=cfg.trainer.devices, strategy=cfg.trainer.strategy, num_nodes=cfg.trainer.num_nodes,
        precision=cfg.trainer.precision, deterministic=cfg.trainer.deterministic,
        gradient_clip_val=cfg.train.gradient_clip, callbacks=callbacks,
        logger=TensorBoardLogger(str(run_dir), name="tensorboard", version="", default_hp_metric=False),
        enable_progress_bar=progress, enable_model_summary=False, num_sanity_val_steps=0,
        log_every_n_steps=10, plugins=[AtomicCheckpointIO()],
        reload_dataloaders_every_n_epochs=1,  # per-epoch seeded loaders (see EpochSeeder)
    )
