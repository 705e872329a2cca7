"""``medclf sanity``: ablation checks to run before a full training.

The checks of Karpathy's "A recipe for training neural networks" (2019) and of the seed
exercise, on a small class-balanced subset of the training split with augmentation and
dropout off:

1. **forward**: one batch gives finite logits of shape ``(N, num_classes)``;
2. **initial loss**: the unweighted cross-entropy at initialisation is close to
   ``log(num_classes)`` (the loss of a uniform guess);
3. **gradient flow**: one backward pass gives a finite, non-zero gradient to every layer;
4. **activations alive**: no activation layer has most of its channels dead (never
   positive for any image of the batch);
5. **overfit**: the model drives the subset to 100 % training accuracy and near-zero loss
   within a step budget; when it does not, the report says so and lists likely causes
   (learning rate, activation, initialisation, normalisation);
6. **learning-rate range test** (Smith, "Cyclical learning rates", WACV 2017, through
   Lightning's ``Tuner.lr_find``): loss against an exponentially growing learning rate,
   plotted, with the suggested learning rate (steepest descent of the loss).
"""
from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import torch

from .. import rundir
from ..data.prepare import prepare_images
from ..data.sources import Manifest
from ..diagnostics.checks import LOSS_TARGET, activation_stats, gradient_norms, overfit, subset
from ..errors import DataError
from ..io import atomic_write, write_json
from ..models import create_model
from ..plan import plan_run
from ..training.auto_lr import planned_lr
from ..training.lr_range import lr_range_test
from ..training.optim import build_optimizer
from ..training.tasks import initial_loss, task_facts, task_subset

log = logging.getLogger("medclf")


@dataclass
class Check:
    """One check: its name, whether it passed, what was measured, and what to do if it failed."""

    name: str
    passed: bool
    detail: str
    causes: list[str] = field(default_factory=list)


@dataclass
class SanityReport:
    """All checks; ``passed`` only when every check passed.

    Attributes:
        checks: the :class:`Check` list in the order run.
        out_dir: folder with ``sanity.json`` and the plots (overfit loss curve, LR range test).
        suggested_lr: learning rate suggested by the range test (None if it could not run).
        loss_curve: training loss per step of the overfit check.
    """

    checks: list[Check]
    out_dir: Path | None = None
    suggested_lr: float | None = None
    loss_curve: list[float] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def check(self, name: str) -> Check:
        return next(c for c in self.checks if c.name == name)

    def lines(self) -> list[str]:
        out = []
        for c in self.checks:
            out.append(f"[{'PASS' if c.passed else 'FAIL'}] {c.name}: {c.detail}")
            out += [f"         likely cause: {cause}" for cause in c.causes]
        if self.suggested_lr:
            out.append(f"suggested learning rate (LR range test): {self.suggested_lr:.2e}  "
                       f"(--set train.lr={self.suggested_lr:.2e}, or --set train.lr=auto to run "
                       "this test at the start of every training)")
        out.append("sanity: all checks passed" if self.passed else
                   "sanity: FAILED: fix the causes above before a full training")
        return out


def _lr_causes(cfg, high: bool) -> list[str]:
    lr = cfg.train.lr
    typical = "1e-4 to 3e-3" if cfg.train.optimizer in ("adam", "adamw", "rmsprop") else "1e-3 to 1e-1"
    if high:
        return [f"learning rate too high: train.lr={lr:g} with {cfg.train.optimizer} (typical: {typical}); "
                f"try the LR range test's suggestion"]
    return [f"learning rate too low: train.lr={lr:g} with {cfg.train.optimizer} (typical: {typical})"]


def _dead_causes(cfg) -> list[str]:
    return [f"dead activations ({cfg.model.activation}): most units never fire, so no gradient passes; "
            "check the initialisation (model.init, biases or user weights in model.weights pushing "
            "pre-activations negative) or use model.activation=leakyrelu/elu",
            f"normalisation: model.norm={cfg.model.norm} (batch normalisation keeps pre-activations centred); "
            f"inputs normalised with preprocess.normalization={cfg.preprocess.normalization}"]


def sanity(data, config=None, overrides=None, out: str | Path | None = "runs", name: str | None = None,
           per_class: int = 8, max_steps: int = 200, lr_test: bool = True) -> SanityReport:
    """Run the checks of the module docstring on a subset of ``data``'s training split.

    Args:
        data: any dataset source, as for ``medclf train`` (None: ``data.source`` of ``config``).
        config: settings as for ``medclf train`` (YAML path, dict or Config; the planned
            defaults fill the rest).
        overrides: ``--set`` style ``key=value`` overrides applied on top of ``config``.
        out: folder receiving ``<data>-sanity-<time>/`` with sanity.json and plots (None: no files).
        per_class: training images per class in the subset.
        max_steps: step budget of the overfit check.
        lr_test: run the LR range test.

    Returns:
        :class:`SanityReport` (``passed`` is False when any check failed).

    Raises:
        MedclfError: bad configuration or data (as ``medclf train``).
    """
    started = time.perf_counter()
    for noisy in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    planned = plan_run(data, config, overrides)
    cfg, manifest = planned.config, planned.manifest
    data_name = rundir.slug(planned.source.split(":", 1)[1] if planned.source.startswith("medmnist:")
                            else Path(planned.source).resolve().name)
    if cfg.train.lr == "auto":  # the checks train at the planned rate; the range test suggests one
        cfg.train.lr = planned_lr(planned.plan)
    task = manifest.task  # multilabel / regression: a seeded sample, and the task's loss (training.tasks)
    small = subset(manifest, per_class, cfg.seed) if task == "classification" \
        else task_subset(manifest, per_class * 4, cfg.seed)
    images, kept, _ = prepare_images(Manifest(small.frame.assign(split="test"), small.class_names, task=task), cfg)
    labels = torch.from_numpy(kept.targets("test"))
    num_classes = manifest.num_classes
    if task == "classification" and len(set(labels.tolist())) < num_classes:
        raise DataError("the sanity subset lacks readable images of some class")
    out_dir = None
    if out is not None:
        out_dir = rundir.create_run_dir(out, name or f"{data_name}-sanity-{time.strftime('%Y%m%d-%H%M%S')}",
                                        data_name)
        (out_dir / "checkpoints").rmdir()  # nothing is saved: the checks train throw-away copies
    L.seed_everything(cfg.seed, verbose=False)
    model_cfg = cfg.model.model_copy(update={"dropout": 0.0})  # dropout off, like augmentation
    model = create_model(model_cfg, cfg.data.in_channels, num_classes)
    initial_state = copy.deepcopy(model.state_dict())
    batch_size = min(cfg.train.batch_size, len(labels))
    checks: list[Check] = []
    report = SanityReport(checks, out_dir)

    # 1. forward
    model.train()
    batch = images[:batch_size]
    logits = model(batch)
    shape_ok = tuple(logits.shape) == (len(batch), num_classes)
    finite = bool(torch.isfinite(logits).all())
    checks.append(Check("forward", shape_ok and finite,
                        f"input {tuple(batch.shape)} -> logits {tuple(logits.shape)} (expected "
                        f"({len(batch)}, {num_classes})), {'finite' if finite else 'NOT finite'}",
                        [] if shape_ok and finite else ["the network does not fit the input size or channels "
                                                        f"(data.image_size={cfg.data.image_size}, "
                                                        f"data.in_channels={cfg.data.in_channels})"]))
    if not (shape_ok and finite):
        return _finish(report, started)

    # 2. initial loss, 3. gradient flow
    loss0, expected = initial_loss(task, logits, labels[:batch_size], cfg.train, task_facts(manifest) or None)
    loss_ok = bool(torch.isfinite(loss0)) and abs(loss0.item() - expected) <= max(0.5 * expected, 0.35)
    guess = {"classification": "log(num_classes)", "multilabel": "log(2), p = 0.5 per finding"}.get(
        task, f"{cfg.train.loss} loss of predicting the training mean")
    checks.append(Check("initial loss", loss_ok,
                        f"{loss0.item():.3f} at initialisation; {guess} = {expected:.3f}",
                        [] if loss_ok else [f"initialisation (model.init={cfg.model.init}) gives over-confident "
                                            "logits: the last layer's weights are too large",
                                            "inputs not normalised (preprocess.normalization)"]))
    model.zero_grad(set_to_none=True)
    loss0.backward()
    norms = gradient_norms(model)
    no_grad = [k for k, v in norms.items() if not math.isfinite(v) or v == 0.0]
    checks.append(Check("gradient flow", not no_grad,
                        f"{len(norms) - len(no_grad)}/{len(norms)} parameter tensors get a non-zero finite gradient"
                        + (f"; none reaches: {_names(no_grad)}" if no_grad else ""),
                        [] if not no_grad else _dead_causes(cfg) + ["a layer is frozen or unused in forward()"]))

    # 4. activations
    dead = activation_stats(model, batch)
    bad_layers = {k: v for k, v in dead.items() if v >= 0.5}
    worst = max(dead.values()) if dead else 0.0
    checks.append(Check("activations alive", not bad_layers,
                        f"{len(dead)} activation layers, largest share of dead channels {worst:.0%}"
                        + (f"; mostly dead: {_names([f'{k} ({v:.0%})' for k, v in bad_layers.items()])}"
                           if bad_layers else ""),
                        _dead_causes(cfg) if bad_layers else []))

    if task != "classification":  # the overfit check and the LR range test count classes
        checks.append(Check("overfit small subset", True, f"not run for data.task={task} (classification only)"))
        return _finish(report, started)

    # 5. overfit a small subset
    model.load_state_dict(initial_state)
    optimizer = build_optimizer(model.parameters(), cfg.train)
    fit = overfit(model, optimizer, images, labels, cfg, max_steps, len(labels))  # one fixed batch: the subset
    report.loss_curve = fit["losses"]
    detail = (f"{len(labels)} images ({per_class} per class), augmentation and dropout off: "
              f"training accuracy {fit['accuracy']:.0%}, loss {fit['loss']:.3f} after {fit['steps']} steps "
              f"(target 100 % and < {LOSS_TARGET} within {max_steps})")
    causes: list[str] = []
    if fit["nonfinite_step"] is not None:
        detail = f"the loss became {fit['losses'][-1]} at step {fit['nonfinite_step']}: training diverged"
        causes = _lr_causes(cfg, high=True) + ["inputs not normalised (preprocess.normalization)",
                                               "gradient clipping off (train.gradient_clip)"]
    elif not fit["reached"]:
        after = activation_stats(model, batch)
        died = {k: v for k, v in after.items() if v >= 0.5 and dead.get(k, 0.0) < 0.5}
        losses = fit["losses"]
        first, last = float(np.mean(losses[:5])), float(np.mean(losses[-5:]))
        rising = last > 0.9 * first
        if died:
            causes.append(f"activations died during training ({_names(list(died))}): the learning rate is too "
                          f"high (train.lr={cfg.train.lr:g})")
        if bad_layers:
            causes += _dead_causes(cfg)
        if rising and not bad_layers:
            lr_high = cfg.train.lr > (0.05 if cfg.train.optimizer != "sgd" else 1.0) or bool(died)
            causes += _lr_causes(cfg, high=lr_high or last > first)
        if fit["stalled"]:
            causes.insert(0, f"no progress at all in {fit['steps']} steps (stopped early)")
        if not rising:
            causes.append(f"too few steps or a learning rate too low: the loss fell from {first:.3f} to "
                          f"{last:.3f}; try more steps (--steps) or a larger train.lr")
        causes.append(f"initialisation (model.init={cfg.model.init}) or normalisation (model.norm="
                      f"{cfg.model.norm}, preprocess.normalization={cfg.preprocess.normalization})")
    checks.append(Check("overfit small subset", fit["reached"], detail, causes))

    # loss stability: the first steps must not blow the loss up
    early = [v for v in fit["losses"][1:20]]
    peak = max(early) if early else fit["losses"][0]
    stable = math.isfinite(peak) and peak <= 3.0 * fit["losses"][0] and fit["nonfinite_step"] is None
    ratio = fit["update_ratio"]
    checks.append(Check("stable loss", stable,
                        f"initial loss {fit['losses'][0]:.3f}, highest in the next 19 steps {peak:.4g}; "
                        f"update/weight ratio {ratio:.2g} per step (healthy: about 1e-3 to 1e-1)",
                        [] if stable else _lr_causes(cfg, high=True)
                        + [f"the first steps change the weights by {ratio:.0%} of their size"]))
    if not stable and fit["reached"]:
        checks[-2].causes.append("it fitted despite the unstable start (normalisation layers are scale invariant), "
                                 "but a full training at this learning rate is unlikely to generalise")

    # 6. LR range test
    if lr_test:
        model.load_state_dict(initial_state)
        try:
            report.suggested_lr = lr_range_test(model, images, labels, cfg, out_dir)
        except Exception as err:  # noqa: BLE001  (advice only: never fail the sanity run on it)
            log.warning("the LR range test could not run: %s", err)
    return _finish(report, started)


def _names(items: list[str], limit: int = 6) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _finish(report: SanityReport, started: float) -> SanityReport:
    if report.out_dir is not None:
        if report.loss_curve:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
            figure, ax = plt.subplots(figsize=(6, 4))
            curve = np.array(report.loss_curve, dtype=float)
            ax.plot(np.arange(len(curve)), np.where(np.isfinite(curve), curve, np.nan))
            ax.set_yscale("log")
            ax.set_xlabel("step")
            ax.set_ylabel("training loss (cross-entropy)")
            ax.set_title("overfit check on a small subset")
            figure.tight_layout()
            atomic_write(report.out_dir / rundir.OVERFIT_PLOT,
                         lambda tmp: figure.savefig(tmp, format="png", dpi=100))
            plt.close(figure)
        write_json(report.out_dir / rundir.SANITY,
                   {"passed": report.passed, "checks": [asdict(c) for c in report.checks],
                    "suggested_lr": report.suggested_lr, "loss_curve": report.loss_curve,
                    "seconds": round(time.perf_counter() - started, 1)})
    return report


def main(args) -> int:
    """Print every check's verdict; exit 1 when any failed."""
    report = sanity(args.data, config=args.config, overrides=args.overrides, out=args.out,
                    per_class=args.per_class, max_steps=args.steps, lr_test=not args.no_lr_test)
    print("\n".join(report.lines()))
    print(report.out_dir)
    return 0 if report.passed else 1
