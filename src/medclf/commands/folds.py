"""The small-data protocol of ``medclf train``: k models on stratified, grouped folds of
the pooled training and validation images, their out-of-fold predictions, and the
evaluation of their ensemble (nnU-Net's 5-fold cross-validation, Isensee et al. 2021).

A fold whose ``fold_predictions.csv`` exists has finished and is skipped on resume; a fold
killed mid-training continues from its own ``checkpoints/last.ckpt``. On a CPU the folds train
in parallel processes (``train.fold_workers``, :func:`fold_threads`), started from a fork server
(:mod:`medclf.commands.fold_processes`).
"""
from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch

from .. import rundir
from ..checkpoints import read_run_checkpoint
from ..config import Config
from ..data.folds import assign_folds, duplicate_pairs
from ..data.store import DiskImages
from ..errors import MedclfError
from ..evaluation.checkpoint import EvaluationSplit, evaluate_model, write_validation_metrics
from ..evaluation.predict import load_model, pick_device, predict_probabilities, predict_tta
from ..inspect import leaked_paths
from ..io import write_csv, write_json
from ..models import create_model
from ..models.prior import apply_output_prior
from ..training.fit import build_trainer, class_weights, fit, launch_rank, stopped_early
from ..training.module import Classifier
from .fold_processes import cpu_cores, fold_context

log = logging.getLogger("medclf")


def pool_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The pooled training rows in the order of the pooled tensors: ``train`` then ``val``."""
    return pd.concat([frame[frame.split == "train"], frame[frame.split == "val"]])


def plan_folds(run_dir: Path, cfg: Config, manifest, splits: dict) -> np.ndarray:
    """Fold of every pooled row (``train`` then ``val`` order); rank 0 stores it as the
    ``fold`` column of ``split.csv`` (-1 for test rows), which resume and the other DDP
    processes read back so that every process trains the same folds."""
    pooled = pool_frame(manifest.frame)
    stored = run_dir / rundir.SPLIT
    if stored.is_file():
        table = pd.read_csv(stored, dtype={"path": str, "label": str})
        if "fold" in table.columns and set(pooled.path) <= set(table.path):
            return table.set_index("path").loc[pooled.path, "fold"].to_numpy(dtype=int)
    inspection_path = run_dir / rundir.INSPECTION
    inspection = json.loads(inspection_path.read_text(encoding="utf-8")) if inspection_path.is_file() else {}
    labels = torch.cat([splits["train"][1], splits["val"][1]]).numpy()
    folds = assign_folds(pooled, labels, cfg.train.folds, cfg.seed, duplicate_pairs(inspection))
    if launch_rank() == 0:
        table = manifest.frame.copy()
        table["fold"] = -1
        table.loc[pooled.index, "fold"] = folds
        write_csv(stored, table)
    return folds


def fit_folds(run_dir: Path, cfg: Config, manifest, splits: dict, progress: bool, started: float,
              callbacks: list | None = None, evaluate_test: bool = True) -> tuple[dict, bool]:
    """Train (or finish) every fold, then evaluate the ensemble on the test split with the
    out-of-fold predictions as its validation.

    Args:
        splits: ``{split: (images, labels)}`` preprocessed, images ``(N, C, H, W)`` or
            ``(N, C, D, H, W)``; ``train`` and ``val`` are pooled.

    Returns:
        ``(test metrics, is_global_zero)``; the metrics are empty without ``evaluate_test``
        and in the other processes of a DDP run.

    Raises:
        DataError: fewer patients/images than folds. MedclfError as :func:`medclf.commands.train.train`.
    """
    folds = plan_folds(run_dir, cfg, manifest, splits)
    images = _pool_images(splits["train"][0], splits["val"][0])
    labels = torch.cat([splits["train"][1], splits["val"][1]])
    pooled = pool_frame(manifest.frame)
    k = cfg.train.folds
    log.warning("%d-fold ensemble: %s images per fold", k, np.bincount(folds, minlength=k).tolist())
    rank0 = launch_rank() == 0
    pending = [f for f in range(k) if not (rundir.fold_dir(run_dir, f) / rundir.FOLD_DONE).is_file()]

    def arguments(fold):
        held = folds == fold
        return (run_dir, cfg, manifest, fold, (_take(images, ~held), labels[~held]),
                EvaluationSplit(_take(images, held), labels[held], pooled[held]), splits["test"])

    threads = fold_threads(cfg, callbacks)
    if threads is None or len(pending) == 1:
        for fold in pending:
            with _torch_threads(threads[fold] if threads else None):
                if not _fit_fold(*arguments(fold), progress, callbacks):
                    rank0 = False  # a DDP process other than rank 0: rank 0 writes and evaluates
    else:
        workers = min(cfg.train.fold_workers or cpu_cores(), len(pending))
        log.warning("training %d folds in %d processes at a time", len(pending), workers)
        try:
            with ProcessPoolExecutor(workers, mp_context=fold_context(), initializer=_start_worker,
                                     initargs=(logging.getLogger().level, dict(os.environ))) as pool:
                for finished in [pool.submit(_fit_fold_with_threads, threads[fold], *arguments(fold))
                                 for fold in pending]:
                    finished.result()  # re-raises a fold's error here
        except BrokenProcessPool as error:
            raise MedclfError(f"a fold process died ({error}): killed, or out of memory. Every finished fold "
                              f"is kept; continue with: medclf train --resume {run_dir}") from None
    if not rank0:
        return {}, False
    out_of_fold = _gather_out_of_fold(run_dir, pooled, manifest.class_names, k)
    write_validation_metrics(run_dir, labels.numpy(), out_of_fold, manifest.class_names, "out_of_fold")
    if not evaluate_test:
        return {}, True
    run = rundir.load_run(run_dir)
    ensemble = load_model(run)
    frame = manifest.frame
    test = EvaluationSplit(*splits["test"], frame[frame.split == "test"])
    pooled_split = EvaluationSplit(images, labels, pooled)
    inspection_path = run_dir / rundir.INSPECTION
    inspection = json.loads(inspection_path.read_text(encoding="utf-8")) if inspection_path.is_file() else None
    # every pooled image trained some member: a test copy of a validation image leaks too
    leaks = {"val": set(), "test": leaked_paths(inspection, "test", ("train", "val")) if inspection else set()}
    # the fold models' last epochs (early stopping, when a user turns it on, ends folds early)
    last_epoch = max(int(read_run_checkpoint(rundir.fold_dir(run_dir, f) / rundir.LAST).get("epoch", -1))
                     for f in range(k))
    extra = {"checkpoint_epoch": last_epoch, "epochs_run": last_epoch + 1, "folds": k,
             "world_size": torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1,
             "train_time_s": round(time.perf_counter() - started, 1)}
    metrics = evaluate_model(ensemble, run_dir, manifest.class_names, test, pooled_split, cfg,
                             f"{rundir.FOLDS_DIR}/fold_*/{rundir.LAST}", extra, leaks,
                             pick_device(cfg.trainer.accelerator), out_of_fold=out_of_fold)
    return metrics, True


def fold_threads(cfg: Config, callbacks: list | None = None) -> list[int] | None:
    """Threads of each fold's process when the folds train in parallel processes, else None.

    ``min(train.fold_workers or cores, k)`` processes train at a time, each fold on
    ``cores // processes`` threads; when ``k`` leaves one fold to train alone at the end,
    that fold gets every core. The count depends on the configuration and the machine only,
    not on which folds a resumed run has left, so a resumed fold computes as it would have.
    None (folds one after the other in this process, on PyTorch's threads): one process, a
    GPU, a DDP run (``trainer.devices``/``num_nodes`` above 1, or a launcher's rank
    variables), or ``callbacks`` (tune's pruning callback reports from this process).
    """
    k = cfg.train.folds
    distributed = (launch_rank() != 0 or "WORLD_SIZE" in os.environ or cfg.trainer.num_nodes > 1
                   or str(cfg.trainer.devices) not in ("1", "auto") or "ddp" in str(cfg.trainer.strategy))
    if callbacks or distributed or pick_device(cfg.trainer.accelerator).type != "cpu":
        return None
    cores = cpu_cores()
    workers = min(cfg.train.fold_workers or cores, k)
    if workers < 2:
        return None
    threads = [max(1, cores // workers)] * k
    if k % workers == 1:
        threads[-1] = cores
    return threads


@contextlib.contextmanager
def _torch_threads(threads: int | None):
    """PyTorch's intra-op threads set to ``threads`` for the block (None: unchanged)."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _start_worker(level: int, environment: dict) -> None:
    """Initialise a fold process: the parent's environment variables as they are now (a fork
    server's copies inherit the server's, from when it started), the parent's log format and
    quiet Lightning, and death with the run's process, so that a killed run leaves no fold
    still writing its checkpoints."""
    os.environ.clear()
    os.environ.update(environment)
    logging.basicConfig(level=level, format="medclf: %(levelname)s: %(message)s")
    for noisy in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    parent = multiprocessing.parent_process()
    if parent is not None:  # its sentinel becomes ready when the run's process has ended, however
        threading.Thread(target=_die_with, args=(parent.sentinel,), daemon=True, name="medclf-parent-watch").start()


def _die_with(sentinel: int) -> None:
    """Kill this process once ``sentinel`` (the run process's, see :func:`_start_worker`) is ready.
    A fold process's parent is the fork server, which lives on while its copies do, so the
    operating system's death-with-parent signal would not reach it."""
    multiprocessing.connection.wait([sentinel])
    os.kill(os.getpid(), signal.SIGKILL)


def _fit_fold_with_threads(threads: int, *arguments) -> bool:
    """:func:`_fit_fold` in a fold process, on ``threads`` threads, without a progress bar."""
    torch.set_num_threads(threads)
    return _fit_fold(*arguments, False, None)


def _pool_images(train, val):
    """The training then validation images: one tensor, or one view of the disk shard
    (:class:`~medclf.data.store.DiskImages`, nothing read)."""
    if isinstance(train, DiskImages) and isinstance(val, DiskImages) and train.path == val.path:
        return DiskImages(train.path, np.concatenate([train.rows, val.rows]))
    return torch.cat([torch.as_tensor(train[:]) if isinstance(train, DiskImages) else train,
                      torch.as_tensor(val[:]) if isinstance(val, DiskImages) else val])


def _take(images, mask: np.ndarray):
    """The rows of ``mask`` (bool ``(N,)``): a tensor, or a view of the disk shard."""
    positions = np.flatnonzero(mask)
    return images.subset(positions) if isinstance(images, DiskImages) else images[torch.from_numpy(positions)]


def _fit_fold(run_dir: Path, cfg: Config, manifest, fold: int, train: tuple, held: EvaluationSplit,
              test: tuple, progress: bool, callbacks: list | None) -> bool:
    """Train fold ``fold`` (resuming from its ``last.ckpt``) and write its out-of-fold
    predictions. Returns False in the non-zero processes of a DDP run."""
    folder = rundir.fold_dir(run_dir, fold)
    (folder / rundir.CHECKPOINTS).mkdir(parents=True, exist_ok=True)
    num_classes = manifest.num_classes
    L.seed_everything(cfg.seed + fold, workers=True, verbose=False)  # members differ in initialisation too
    network = create_model(cfg.model, cfg.data.in_channels, num_classes)
    weights = class_weights(train[1], num_classes, cfg.train.class_weights, cfg.train.sampler)
    module = Classifier(network, num_classes, cfg.train, weights)
    trainer = build_trainer(cfg, folder, progress, n_train=len(train[1]), train=train)
    trainer.callbacks.extend(callbacks or [])
    last = folder / rundir.LAST
    ckpt = None
    if last.is_file():
        saved = read_run_checkpoint(last)  # refuses a file holding code before Lightning reads it
        finished = stopped_early(saved) or int(saved.get("epoch", -1)) + 1 >= cfg.train.max_epochs
        log.warning("fold %d: resuming after epoch %d", fold, int(saved.get("epoch", -1)))
        ckpt = None if finished else str(last)
        if finished:
            trainer = None
    log.warning("fold %d of %d: training on %d images, validating on %d", fold + 1, cfg.train.folds,
                len(train[1]), len(held.labels))
    if trainer is not None:
        # the DDP processes that Lightning launches learn the run directory (not the fold's) from fit
        fit(trainer, module, {"train": train, "val": (held.images, held.labels), "test": test}, cfg, run_dir, ckpt)
        if not trainer.is_global_zero:
            return False
    module.load_state_dict(read_run_checkpoint(last)["state_dict"])
    counts = np.bincount(train[1].numpy(), minlength=num_classes)
    apply_output_prior(module.model, counts, cfg.train)
    device = pick_device(cfg.trainer.accelerator)
    probabilities = predict_probabilities(module.model, held.images, cfg.eval.batch_size, device)
    if cfg.eval.tta:
        probabilities = predict_tta(module.model, held.images, cfg, device, probabilities)[0]
    table = pd.DataFrame({"path": held.frame.path.to_numpy(), "label": held.frame.label.to_numpy(), "fold": fold})
    for c, name in enumerate(manifest.class_names):
        table[f"prob_{name}"] = probabilities[:, c]
    write_csv(folder / rundir.FOLD_DONE, table)  # written last: the fold counts as finished from here
    return True


def _gather_out_of_fold(run_dir: Path, pooled: pd.DataFrame, class_names: list[str], k: int) -> np.ndarray:
    """Out-of-fold probabilities ``(N_pool, num_classes)`` in pooled order, from the folds'
    files; also written as ``oof_predictions.csv``."""
    table = pd.concat([pd.read_csv(rundir.fold_dir(run_dir, f) / rundir.FOLD_DONE, dtype={"path": str, "label": str})
                       for f in range(k)]).set_index("path").loc[pooled.path]
    columns = [f"prob_{name}" for name in class_names]
    write_csv(run_dir / rundir.OOF_PREDICTIONS, table.reset_index())
    write_json(run_dir / rundir.FOLDS_DIR / "folds.json",
               {"folds": k, "images_per_fold": table.fold.value_counts().sort_index().astype(int).tolist()})
    return table[columns].to_numpy(dtype=np.float64)
