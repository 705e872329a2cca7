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
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from . import rundir
from .config import deep_merge, validate
from .data.sources import Manifest
from .data.sources.folder import discover
from .data.prepare import prepare_images
from .errors import DataError
from .io import atomic_write, write_json
from .models import create_model
from .plan import fingerprint, plan_config

log = logging.getLogger("medclf")

ACTIVATIONS = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.PReLU, nn.SELU, nn.SiLU, nn.ReLU6, nn.Tanh,
               nn.Sigmoid, nn.Mish, nn.Hardswish)
LOSS_TARGET = 0.05  # "near-zero" cross-entropy for the overfit check


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


def subset(manifest: Manifest, per_class: int, seed: int) -> Manifest:
    """``per_class`` training images of every class (fewer where a class has fewer), seeded."""
    train = manifest.frame[manifest.frame.split == "train"]
    parts = [group.sample(n=min(per_class, len(group)), random_state=seed)
             for _, group in train.groupby("label", sort=True)]
    import pandas as pd
    frame = pd.concat(parts).sort_index().reset_index(drop=True)
    return Manifest(frame, manifest.class_names)


def activation_stats(model: nn.Module, images: torch.Tensor) -> dict[str, float]:
    """Fraction of dead channels per activation layer for one batch.

    A channel is dead when its output is never positive for any image and any position of
    the batch (for ReLU: always exactly zero), so no gradient reaches the weights before it.

    Args:
        images: ``(N, C, *spatial)``.

    Returns:
        ``{layer name: dead fraction in [0, 1]}``, in forward order.
    """
    stats: dict[str, float] = {}
    hooks = []

    def hook(name):
        def record(module, inputs, output):
            if not torch.is_tensor(output) or output.dim() < 2:
                return
            per_channel = output.detach().transpose(0, 1).reshape(output.shape[1], -1)
            stats[name] = float((per_channel.max(dim=1).values <= 0).float().mean())
        return record

    for name, module in model.named_modules():
        if isinstance(module, ACTIVATIONS):
            hooks.append(module.register_forward_hook(hook(name)))
    try:
        with torch.no_grad():
            model(images)
    finally:
        for h in hooks:
            h.remove()
    return stats


def gradient_norms(model: nn.Module) -> dict[str, float]:
    """Gradient norm of every trainable parameter after a backward pass (NaN if it got none)."""
    return {name: (float(p.grad.norm()) if p.grad is not None else math.nan)
            for name, p in model.named_parameters() if p.requires_grad}


def build_optimizer(params, train_cfg) -> torch.optim.Optimizer:
    """The configured optimiser at a constant learning rate (no schedule)."""
    cfg = train_cfg
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                               nesterov=cfg.nesterov and cfg.momentum > 0, weight_decay=cfg.weight_decay)
    return torch.optim.RMSprop(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


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


def overfit(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, cfg, max_steps: int,
            batch_size: int) -> dict:
    """Train on a fixed small set with plain cross-entropy until 100 % accuracy and loss < 0.05.

    ``batch_size`` images per step (the sanity command uses the whole subset as one batch,
    so that the training-mode accuracy it measures sees the same batch statistics).

    Args:
        images: ``(N, C, *spatial)``; labels: ``(N,)`` class indices.
        max_steps: step budget.

    Returns:
        dict with ``losses`` (per step), ``accuracy`` and ``loss`` of the last full pass,
        ``steps`` run, ``reached`` (bool), ``nonfinite_step`` (step where the loss became
        NaN/inf, or None), ``stalled`` (stopped after 30+ steps without any progress) and
        ``update_ratio`` (mean over the first 5 steps of the median ||update|| / ||weight||
        of the weight tensors).
    """
    optimizer = build_optimizer(model.parameters(), cfg.train)
    generator = torch.Generator().manual_seed(cfg.seed)
    losses, result = [], {"reached": False, "nonfinite_step": None, "accuracy": 0.0, "loss": math.nan,
                          "stalled": False}
    weights = [p for p in model.parameters() if p.requires_grad and p.dim() > 1]
    ratios = []  # ||update|| / ||weight|| of the first steps (Karpathy: healthy around 1e-3 .. 1e-2)
    n = len(labels)
    step = 0
    while step < max_steps:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            model.train()
            index = order[start:start + batch_size]
            loss = F.cross_entropy(model(images[index]), labels[index])
            losses.append(loss.item())
            if not torch.isfinite(loss):
                result["nonfinite_step"] = step
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.train.gradient_clip:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.train.gradient_clip)
            before = [w.detach().clone() for w in weights] if step < 5 else None
            optimizer.step()
            if before is not None:
                ratios.append(float(np.median([float((w.detach() - b).norm() / b.norm().clamp(min=1e-12))
                                               for w, b in zip(weights, before)])))
            step += 1
        if result["nonfinite_step"] is not None:
            break
        if step >= 30 and min(losses[-10:]) > 0.9 * losses[0]:  # no progress at all: stop early
            result["stalled"] = True
            break
        with torch.no_grad():  # the whole subset in one batch, in training mode (batch statistics)
            logits = model(images)
            full = F.cross_entropy(logits, labels)
            result["loss"] = float(full)
            result["accuracy"] = float((logits.argmax(1) == labels).float().mean())
        if result["accuracy"] == 1.0 and result["loss"] < LOSS_TARGET:
            result["reached"] = True
            break
    result.update(losses=losses, steps=step, update_ratio=float(np.mean(ratios)) if ratios else math.nan)
    return result


def lr_range_test(model: nn.Module, images, labels, cfg, out: Path | None, num_training: int = 40,
                  num_classes: int | None = None, progress: bool = True):
    """Leslie Smith's LR range test with Lightning's ``Tuner.lr_find`` on the subset.

    Used by ``medclf sanity`` and by ``train.lr=auto`` (:mod:`medclf.training.auto_lr`).
    ``lr_find`` saves the model to a temporary checkpoint first and restores it when the test
    ends, also when its training loop raises (a ``finally`` block in Lightning 2.6).

    Args:
        images: ``(N, C, *spatial)``; labels: ``(N,)`` class indices.
        num_training: learning rates tried (one step each), from 1e-6 to 1.
        num_classes: classes of the model (default: ``labels.max() + 1``).
        progress: show lr_find's progress bar (on stderr).

    Returns:
        the suggested learning rate (steepest descent of the smoothed loss) or None; writes
        ``lr_range_test.png`` into ``out``.
    """
    import contextlib
    import io
    import tempfile

    import lightning as L
    from lightning.pytorch.tuner import Tuner

    from .data.datamodule import ImageDataModule
    from .training.module import Classifier

    run_cfg = cfg.model_copy(deep=True)
    run_cfg.augment.enabled = False
    run_cfg.train.schedule = "none"
    run_cfg.train.batch_size = min(run_cfg.train.batch_size, len(labels))
    run_cfg.train.label_smoothing = 0.0
    if run_cfg.train.lr == "auto":
        run_cfg.train.lr = 1e-3  # any number: lr_find sets the learning rate of every step
    module = Classifier(model, num_classes or int(labels.max()) + 1, run_cfg.train)
    data = ImageDataModule({"train": (images, labels), "val": (images, labels)}, run_cfg)
    with tempfile.TemporaryDirectory(prefix="medclf-lr-find-") as root, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # default_root_dir: where lr_find keeps its temporary checkpoint of the initial weights
        trainer = L.Trainer(accelerator=cfg.trainer.accelerator, devices=1, logger=False,
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                            num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=root)
        quiet = contextlib.nullcontext() if progress else contextlib.redirect_stderr(io.StringIO())
        with quiet:  # lr_find always draws a tqdm bar
            finder = Tuner(trainer).lr_find(module, datamodule=data, min_lr=1e-6, max_lr=1.0,
                                            num_training=num_training, early_stop_threshold=4.0,
                                            update_attr=False)
    if finder is None:
        return None
    suggestion = finder.suggestion()
    if out is not None:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        figure = finder.plot(suggest=suggestion is not None)
        figure.axes[0].set_title("LR range test (Smith 2017)")
        atomic_write(out / "lr_range_test.png", lambda tmp: figure.savefig(tmp, format="png", dpi=100))
        plt.close(figure)
    return float(suggestion) if suggestion else None


def sanity(data, config=None, overrides=None, out: str | Path | None = "runs", name: str | None = None,
           per_class: int = 8, max_steps: int = 200, lr_test: bool = True) -> SanityReport:
    """Run the checks of the module docstring on a subset of ``data``'s training split.

    Args:
        data: dataset folder, as for ``medclf train``.
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
    import lightning as L

    from .training.run import user_tree

    started = time.perf_counter()
    for noisy in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    tree = user_tree(config, overrides)
    early = validate(tree)
    data = Path(data if data is not None else early.data.source or "")
    manifest = discover(data, early.data.val_fraction, early.data.test_fraction, early.seed)
    plan = plan_config(fingerprint(manifest))
    cfg = validate(deep_merge(plan, deep_merge(tree, {"data": {"source": str(data)}})))
    if cfg.train.lr == "auto":  # the checks train at the planned rate; the range test suggests one
        from .training.auto_lr import planned_lr
        cfg.train.lr = planned_lr(plan)
    small = subset(manifest, per_class, cfg.seed)
    images, kept, _ = prepare_images(Manifest(small.frame.assign(split="test"), small.class_names), cfg)
    labels = torch.tensor(kept.labels("test"), dtype=torch.long)
    num_classes = manifest.num_classes
    if len(set(labels.tolist())) < num_classes:
        raise DataError("the sanity subset lacks readable images of some class")
    out_dir = None
    if out is not None:
        out_dir = rundir.create_run_dir(out, name or f"{data.resolve().name}-sanity-{time.strftime('%Y%m%d-%H%M%S')}",
                                        data.resolve().name)
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
    loss0 = F.cross_entropy(logits, labels[:batch_size])
    expected = math.log(num_classes)
    loss_ok = bool(torch.isfinite(loss0)) and abs(loss0.item() - expected) <= max(0.5 * expected, 0.35)
    checks.append(Check("initial loss", loss_ok,
                        f"{loss0.item():.3f} at initialisation; log(num_classes) = {expected:.3f}",
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

    # 5. overfit a small subset
    model.load_state_dict(initial_state)
    fit = overfit(model, images, labels, cfg, max_steps, len(labels))  # one fixed batch: the subset
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
            atomic_write(report.out_dir / "plots" / "overfit_loss.png",
                         lambda tmp: figure.savefig(tmp, format="png", dpi=100))
            plt.close(figure)
        write_json(report.out_dir / "sanity.json",
                   {"passed": report.passed, "checks": [asdict(c) for c in report.checks],
                    "suggested_lr": report.suggested_lr, "loss_curve": report.loss_curve,
                    "seconds": round(time.perf_counter() - started, 1)})
    return report
