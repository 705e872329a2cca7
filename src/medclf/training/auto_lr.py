"""``train.lr=auto``: the learning rate chosen by an LR range test run just before training.

The test is :func:`medclf.training.lr_range.lr_range_test` (Smith, "Cyclical learning rates for training
neural networks", WACV 2017, through Lightning's ``Tuner.lr_find``) on a seeded,
class-stratified subset of the training split, with the run's network at its initial weights
and augmentation off. Lightning's ``lr_find`` saves the model to a temporary checkpoint
before the test and restores it afterwards (in a ``finally`` block, so also when the test loop
raises); the initial weights (parameters and buffers such as batch-norm statistics) and the
training mode are restored here as well, from a copy taken before, which also covers a
failure outside that block (saving or restoring the checkpoint, the plot). The training then
starts from exactly the weights a run without the test would start from.

The chosen number replaces ``"auto"`` in the run's ``config.yaml`` (with a comment saying so)
and ``provenance.json`` records the test under ``lr_auto``, so feeding ``config.yaml`` back
repeats the run and ``--resume`` never runs the test again.
"""
from __future__ import annotations

import copy
import logging
import math
from pathlib import Path

import lightning as L
import torch

from .. import rundir
from ..config import Config, TrainConfig, load_yaml
from ..io import write_json, write_yaml
from .lr_range import lr_range_test

log = logging.getLogger("medclf")

PER_CLASS = 64
"""Training images per class in the range test's subset (fewer where a class has fewer)."""
LR_BOUNDS = {"sgd": (1e-4, 1.0)}
"""Sane range of the chosen learning rate per optimiser; others use :data:`ADAPTIVE_BOUNDS`."""
ADAPTIVE_BOUNDS = (1e-5, 1e-1)  # Adam, AdamW, RMSprop
PLOT = rundir.LR_RANGE_PLOT


def planned_lr(plan: dict | None) -> float:
    """The plan's learning rate (the fallback of ``train.lr=auto``), else the configuration default."""
    value = ((plan or {}).get("train") or {}).get("lr")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return float(TrainConfig.model_fields["lr"].default)


def stratified_subset(labels: torch.Tensor, num_classes: int, per_class: int, seed: int) -> torch.Tensor:
    """Indices of up to ``per_class`` items of every class, drawn with a seeded generator.

    Args:
        labels: ``(N,)`` class indices.

    Returns:
        ``(M,)`` sorted indices into ``labels``.
    """
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for c in range(num_classes):
        members = torch.nonzero(labels == c).flatten()
        order = torch.randperm(len(members), generator=generator)
        chosen.append(members[order[:per_class]])
    return torch.cat(chosen).sort().values


def choose_lr(cfg: Config, network: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
              num_classes: int, run_dir: Path | None, fallback: float) -> tuple[float, dict]:
    """Run the LR range test and pick the learning rate for ``train.lr=auto``.

    Args:
        cfg: the run's resolved configuration (``train.lr`` may be ``"auto"``).
        network: the run's model at its initial weights; its state (parameters, buffers and
            training mode) is the same on return, whatever happened.
        images: ``(N, C, H, W)`` or ``(N, C, D, H, W)`` training images; labels: ``(N,)``.
        num_classes: number of classes.
        run_dir: folder receiving ``lr_range_test.png`` (None: no plot).
        fallback: learning rate used when the test fails or suggests nothing (the plan's).

    Returns:
        ``(lr, record)``: the learning rate, and what ``provenance.json`` stores about it
        (suggestion, bounds, subset size, whether the fallback was used and why).
        Failures of the test never raise: they log a warning and return ``fallback``.
    """

    low, high = LR_BOUNDS.get(cfg.train.optimizer, ADAPTIVE_BOUNDS)
    index = stratified_subset(labels, num_classes, PER_CLASS, cfg.seed)
    record = {"requested": "auto", "method": "LR range test (Smith 2017, Lightning Tuner.lr_find)",
              "subset_images": int(len(index)), "bounds": [low, high], "suggestion": None,
              "fallback": False, "plot": PLOT if run_dir is not None else None}
    state = copy.deepcopy(network.state_dict())
    was_training = network.training
    suggestion, reason = None, "it suggested no learning rate"
    try:
        with torch.random.fork_rng():  # the test must not change the training's randomness
            L.seed_everything(cfg.seed, verbose=False)
            suggestion = lr_range_test(network, images[index], labels[index], cfg, run_dir,
                                       num_classes=num_classes, progress=False)
    except Exception as err:  # noqa: BLE001  (the run goes on with the planned learning rate)
        reason = f"it failed: {type(err).__name__}: {err}"
    finally:
        network.load_state_dict(state)
        network.train(was_training)
    if suggestion is None or not math.isfinite(suggestion) or suggestion <= 0:
        log.warning("train.lr=auto: the LR range test could not be used (%s); training with the planned "
                    "learning rate %.3g", reason, fallback)
        record.update(fallback=True, reason=reason, lr=fallback)
        return fallback, record
    lr = float(min(max(suggestion, low), high))
    lr = float(f"{lr:.3g}")  # a readable number in config.yaml
    record.update(suggestion=float(suggestion), lr=lr)
    clamped = "" if low <= suggestion <= high else f", clamped to [{low:g}, {high:g}]"
    log.warning("train.lr=auto: learning rate %.3g chosen by the LR range test (suggestion %.3g%s; "
                "curve in %s)", lr, suggestion, clamped, (run_dir / PLOT) if run_dir is not None else "-")
    return lr, record


def record_choice(run_dir: Path, cfg: Config, record: dict) -> None:
    """Store the chosen number in ``config.yaml`` (with a comment) and ``record`` as
    ``provenance.json``'s ``lr_auto`` entry."""
    how = (f"the LR range test's suggestion {record['suggestion']:.3g} (see {PLOT})" if not record["fallback"]
           else f"the planned default, because the LR range test could not be used: {record.get('reason')}")
    header = (f"# train.lr was 'auto': {cfg.train.lr:g} is {how}.\n"
              "# This file repeats the run with that number (provenance.json: lr_auto).\n")
    write_yaml(run_dir / rundir.CONFIG, cfg.to_dict(), header=header)
    path = run_dir / rundir.PROVENANCE
    if path.is_file():
        import json
        data = json.loads(path.read_text(encoding="utf-8"))
        data["lr_auto"] = record
        write_json(path, data)


def resolve(cfg: Config, network: torch.nn.Module, train_split: tuple[torch.Tensor, torch.Tensor],
            num_classes: int, run_dir: Path, fallback: float, rank0: bool = True) -> dict | None:
    """Replace ``cfg.train.lr == "auto"`` by a number, in place.

    Rank 0 (or a single process) runs :func:`choose_lr` and writes the plot into ``run_dir``;
    the other processes of a multi-process run read the number rank 0 stored in
    ``run_dir/config.yaml`` before it launched them (they run the test themselves only when
    it is not there).

    Returns:
        the record for :func:`record_choice` (None in a process other than rank 0).
    """
    if not rank0:
        stored = run_dir / rundir.CONFIG
        if stored.is_file():
            lr = load_yaml(stored).get("train", {}).get("lr")
            if isinstance(lr, (int, float)) and not isinstance(lr, bool):
                cfg.train.lr = float(lr)
                return None
    images, labels = train_split
    cfg.train.lr, record = choose_lr(cfg, network, images, labels, num_classes, run_dir if rank0 else None,
                                     fallback)
    return record if rank0 else None
