"""Settings + data -> manifest -> fingerprint -> plan -> Config: the one planning entry.

Like nnU-Net's fingerprint/plan step: look at the data (2D or 3D, image sizes, channels,
class counts), return a full configuration tree; the user's YAML and ``--set`` overrides
go on top of it. Every command plans through :func:`plan_run`; a run stores what was
planned in ``plan.json`` (:func:`write_plan`), so resume and evaluate read it instead of
probing every file again.
"""
from __future__ import annotations

import json
import logging
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import rundir
from .config import Config, deep_merge, user_settings, validate
from .data.formats import channel_difference, probe, source_format
from .data.sources import Manifest, discover_source
from .errors import ConfigError, UnreadableImage
from .io import write_json
from .training.budget import epochs_for_budget, planned_seconds
from .training.tasks import check_loss, plan_task, task_facts, task_of

log = logging.getLogger("medclf")


@dataclass
class Planned:
    """What :func:`plan_run` returns.

    Attributes:
        source: the dataset source (folder, CSV, ``.npz`` or ``medmnist:NAME``) as given.
        manifest: the split manifest of every image (path, label, split).
        fingerprint: the dataset facts the plan was made from (:func:`fingerprint`).
        plan: the planned defaults, a complete configuration tree before the user's settings.
        config: the resolved configuration: plan, then the user's YAML, then ``--set``.
    """

    source: str
    manifest: Manifest
    fingerprint: dict
    plan: dict
    config: Config


def plan_run(data, config=None, overrides=None) -> Planned:
    """Find the data, fingerprint it, plan the defaults and apply the user's settings.

    Args:
        data: class-per-folder tree, CSV manifest, MedMNIST ``.npz`` or ``medmnist:NAME``;
            None takes ``data.source`` of the configuration (e.g. a run's ``config.yaml``).
        config: YAML path, dict or :class:`~medclf.config.Config` of user settings.
        overrides: ``["train.lr=3e-4", ...]`` or a nested dict, applied last.

    Raises:
        ConfigError: no data given, or invalid settings (naming the key).
        DataError: the source cannot be used as a dataset (naming what is wrong).
    """
    tree = user_settings(config, overrides)
    early = validate(tree)  # the user's settings alone, to find and split the data
    if data is None and not early.data.source:
        raise ConfigError("no dataset: give DATA or set data.source (a run's config.yaml has it)")
    source = str(data if data is not None else early.data.source)
    manifest = discover_source(source, early.data, early.seed)
    facts = fingerprint(manifest)
    planned = plan_config(facts)
    resolved = validate(deep_merge(planned, deep_merge(tree, {"data": {"source": source}})))
    check_loss(task_of(resolved), resolved.train.loss, resolved.train.monitor)  # before any work
    if resolved.train.folds >= 2 and task_of(resolved) != "classification":
        raise ConfigError(f"train.folds={resolved.train.folds}: the k-fold ensemble is built for classification; "
                          f"a {task_of(resolved)} run trains one model (train.folds=0)")
    if resolved.train.time_budget_s and "max_epochs" not in tree.get("train", {}):
        fit_side_to_budget(resolved, planned, tree, facts)
        # the budget sizes the epochs of the network and images actually chosen (user settings included)
        resolved.train.max_epochs = epochs_for_budget(resolved, n_pool(facts), n_train(facts),
                                                      Planner.MIN_BUDGET_EPOCHS, planned["train"]["max_epochs"])
    return Planned(source, manifest, facts, planned, resolved)


def fit_side_to_budget(resolved: Config, planned: dict, tree: dict, facts: dict) -> None:
    """One 2D model within a time budget: step the planned side down by
    :attr:`Planner.SIDE_STEP` pixels while the budget affords fewer than
    :attr:`Planner.MIN_EPOCHS_AT_SIDE` epochs, not below :attr:`Planner.MIN_BUDGET_SIDE`.
    Leaves a side or epoch count the user set, volumes and the k-fold protocol alone.

    Args:
        resolved: the resolved configuration (``data.image_size`` changed in place).
        planned: the planned tree (its ``data.image_size`` follows, for ``plan.json``).
        tree: the user's settings.
        facts: the fingerprint.
    """
    if resolved.model.spatial_dims != 2 or resolved.train.folds >= 2 or "image_size" in tree.get("data", {}):
        return
    first = side = min(resolved.data.image_size)
    while side - Planner.SIDE_STEP >= Planner.MIN_BUDGET_SIDE and epochs_for_budget(
            resolved, n_pool(facts), n_train(facts), 1, 10 ** 6) < Planner.MIN_EPOCHS_AT_SIDE:
        side -= Planner.SIDE_STEP
        resolved.data.image_size = [side, side]
        planned["data"]["image_size"] = [side, side]
    if side != first:
        log.info("plan: %d px a side instead of %d, so that the time budget buys more epochs (aim: %d)",
                 side, first, Planner.MIN_EPOCHS_AT_SIDE)


def n_train(facts: dict) -> int:
    """Training images of a fingerprint (``counts["train"]``)."""
    return sum(facts["counts"].get("train", {}).values())


def n_pool(facts: dict) -> int:
    """Training plus validation images of a fingerprint: the pool the k folds split."""
    return n_train(facts) + sum(facts["counts"].get("val", {}).values())


def write_plan(run_dir: str | Path, planned: Planned) -> Path:
    """Write ``plan.json`` (fingerprint and planned defaults) into a run directory."""
    return write_json(Path(run_dir) / rundir.PLAN, {"fingerprint": planned.fingerprint, "plan": planned.plan})


def read_plan(run_dir: str | Path) -> dict | None:
    """The ``{"fingerprint", "plan"}`` a run stored, or None for a run written before plan.json."""
    path = Path(run_dir) / rundir.PLAN
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def fingerprint(manifest: Manifest) -> dict:
    """Cheap facts about the dataset, read from file headers where the format allows.

    Returns:
        dict with ``spatial_dims`` (2 or 3), ``num_classes``, ``class_names``, ``counts``
        (``{split: {class: n}}``), ``median_size`` (``[H, W]`` pixels or ``[D, H, W]``
        voxels), ``shapes_differ`` (bool), ``median_spacing`` (mm, volumes with a known
        spacing, else None), ``modes`` (Pillow mode counts), ``formats`` (file extension
        counts), ``readers`` (reader counts: image, dicom, dicom-series, nifti, npz), ``dtypes`` (npz array types)
        and ``binary`` (True when every item is known to hold two values, 0 and a maximum:
        segmentation masks; known for npz arrays only, whose values are loaded anyway).

    Headers are read of at most :data:`PROBE_LIMIT` items (:func:`probe_sample`), so the
    cost does not grow with the dataset beyond listing it; the counts cover every item.

    A dataset that mixes 2D images and 3D volumes is planned for the majority kind; the
    preprocessing then reports each file of the other kind as unreadable ("is 3D where a
    2D image is expected"), so ``data.on_bad_file`` applies to them like to any bad file.
    """
    sizes, modes, readers, dtypes, spacings, binary = [], Counter(), Counter(), Counter(), [], []
    dims_of: dict[int, list[str]] = {2: [], 3: []}
    for path in probe_sample(list(manifest.frame.path)):
        try:
            facts = probe(path)
        except (UnreadableImage, OSError):  # bad files are reported by the preprocessing
            modes["unreadable"] += 1
            continue
        sizes.append(tuple(facts["shape"]))
        dims_of[facts["spatial_dims"]].append(path)
        readers[facts["format"]] += 1
        if "mode" in facts:
            modes[facts["mode"]] += 1
        if "dtype" in facts:
            dtypes[facts["dtype"]] += 1
        binary.append(bool(facts.get("binary")))
        if facts.get("spacing") and facts["spatial_dims"] == 3:
            spacings.append(facts["spacing"])
    # the majority decides; files of the other kind are then reported (or skipped) as bad files
    spatial_dims = 3 if len(dims_of[3]) > len(dims_of[2]) else 2
    sizes = [s for s in sizes if len(s) == spatial_dims]
    median = [int(statistics.median(s[i] for s in sizes)) for i in range(spatial_dims)] if sizes \
        else [0] * spatial_dims
    formats = Counter(_extension(p) for p in manifest.frame.path)
    spacing = [round(float(statistics.median(s[i] for s in spacings)), 4) for i in range(3)] if spacings else None
    return {"spatial_dims": spatial_dims, "num_classes": manifest.num_classes,
            "class_names": manifest.class_names, "counts": manifest.counts(), "median_size": median,
            "shapes_differ": len(set(sizes)) > 1, "median_spacing": spacing, "modes": dict(modes),
            "formats": dict(formats), "readers": dict(readers), "dtypes": dict(dtypes),
            "binary": bool(binary) and all(binary), "colour_fraction": colour_fraction(dims_of[2]),
            **task_facts(manifest)}


PROBE_LIMIT = 2000  # items whose headers the fingerprint reads
COLOUR_PROBE_LIMIT = 48  # 2D images the fingerprint decodes (at 64 px) to tell colour from gray
COLOUR_LEVELS = 2.0  # gray levels (0-255) between channels above which an image counts as colour


def colour_fraction(paths: list[str]) -> float | None:
    """The share of 2D images in colour among up to :data:`COLOUR_PROBE_LIMIT` of ``paths``
    (evenly spaced): those whose :func:`~medclf.data.formats.channel_difference` exceeds
    :data:`COLOUR_LEVELS`, over those stored in a colour mode. None when none is (all
    grayscale modes, or no 2D image files)."""
    differences = [channel_difference(p) for p in probe_sample(paths, COLOUR_PROBE_LIMIT)
                   if source_format(p) == "image"]
    stored_in_colour = [d for d in differences if d is not None]
    if not stored_in_colour:
        return None
    return round(sum(d > COLOUR_LEVELS for d in stored_in_colour) / len(stored_in_colour), 4)


def probe_sample(paths: list[str], limit: int = PROBE_LIMIT) -> list[str]:
    """All paths when there are at most ``limit``, else ``limit`` of them evenly spaced over
    the manifest's order (which runs through every split and class), deterministic."""
    if len(paths) <= limit:
        return paths
    return [paths[i] for i in np.linspace(0, len(paths) - 1, limit).round().astype(int)]


def _extension(path: str) -> str:
    name = path.rsplit("#", 1)[0].rsplit("/", 1)[-1].lower()
    if name.endswith(".nii.gz"):
        return "nii.gz"
    return name.rsplit(".", 1)[-1] if "." in name else "(none)"


def plan_config(fp: dict) -> dict:
    """The default configuration tree for a dataset fingerprint: ``Planner(fp).plan().to_dict()``.

    Args:
        fp: a fingerprint as :func:`fingerprint` returns it (or as ``plan.json`` stores it).

    Returns:
        the complete configuration tree (plain Python types) that the user's YAML and
        ``--set`` overrides go on top of; see :class:`Planner` for each decision.

    Raises:
        KeyError: ``fp`` lacks ``median_size`` or ``counts``.
    """
    cfg = Planner(fp).plan()
    plan_task(cfg, fp)  # multilabel/regression: data.task, loss, monitor (medclf.training.tasks)
    return cfg.to_dict()


class Planner:
    """Turns a dataset fingerprint into a typed default :class:`~medclf.config.Config`.

    Modelled on nnU-Net's ``ExperimentPlanner`` (Isensee et al. 2021, *nnU-Net: a
    self-configuring method for deep learning-based biomedical image segmentation*): the
    thresholds are class attributes and every decision is one ``determine_*`` method that
    sets its fields on the configuration being planned, so a subclass can change one
    constant or one decision and keep the rest. :meth:`plan` runs them in order; a later
    decision may read what an earlier one set (the small-image settings read the planned
    ``data.image_size``, the 3D network the planned grid).

    The choices were made for a 2-core CPU. Their reasons below are principles, not
    figures: what each choice scores, on validation or out-of-fold predictions beside the
    test split, over several seeds, is measured by ``bench/suite.py`` and shown on the
    documentation's Benchmarks page (``docs/benchmarks.md``), which that script writes.

    Args:
        fp: a fingerprint as :func:`fingerprint` returns it. Read keys: ``spatial_dims``
            (default 2), ``median_size`` (``[H, W]`` pixels or ``[D, H, W]`` voxels; zeros
            mean unknown), ``counts`` (``{split: {class: n}}``), ``binary``, ``readers`` and
            ``dtypes``.

    Example:
        >>> class Coarser(Planner):
        ...     MAX_SIDE_2D = 128
        >>> Coarser({"median_size": [512, 512], "counts": {"train": {"a": 50, "b": 50}}}).plan().data.image_size
        [128, 128]
    """

    MAX_SIDE_2D = 224
    """2D: images are resized to at most this many pixels a side (never upsampled)."""
    COLOUR_SHARE = 0.5
    """2D: share of colour images (among those stored in colour) from which images are planned as RGB."""
    COLOUR_STEPS = ({"name": "local_contrast"},)
    """2D colour photographs: ``preprocess.steps`` (see :meth:`Planner.determine_contrast`)."""
    SMALL_IMAGE_SIDE = 96
    """2D: images with a planned side below this get the small-image network, augmentation and training."""
    SMALL_FILTERS = (16, 32, 64)
    """2D small images: channels of the three stages of ``small_cnn``."""
    SMALL_STEM_KERNEL = 3
    """2D small images: kernel of the stem convolution (stride 1)."""
    SMALL_MAX_EPOCHS = 16
    """2D small images: ``train.max_epochs``."""
    SMALL_PATIENCE = 8
    """2D small images: ``train.early_stopping.patience``, epochs."""
    EMA_EPOCHS = 2.0
    """Small 2D images and volumes: ``train.ema_epochs``, the span of the weight average, epochs."""
    STEPS_PER_EPOCH = 8
    """The batch size is the training-split size over this (about this many steps an epoch), within bounds."""
    MIN_BATCH_2D = 8
    """2D: smallest planned ``train.batch_size``."""
    MAX_BATCH_2D = 64
    """2D: largest planned ``train.batch_size``."""
    MIN_BATCH_3D = 4
    """Volumes: smallest planned ``train.batch_size``."""
    MAX_BATCH_3D = 32
    """Volumes: largest planned ``train.batch_size`` (a batch of volumes costs far more memory and time)."""
    IMBALANCE_RATIO = 2.0
    """Largest over smallest training class at or above which batches are class-balanced."""
    STRONG_IMBALANCE_RATIO = 4.0
    """Largest over smallest training class below which the outputs are shifted to the training prior.

    Under 4 means a minority of 20 % or more: "moderate" imbalance in Google's ML Crash Course terms.
    """
    GRID_3D = 32
    """Intensity volumes: longest side of the planned grid, voxels."""
    GRID_3D_MASKS = 64
    """Binary volumes (masks): longest side of the planned grid, voxels (the 3D network sees it pooled once more)."""
    MIN_SIDE_3D = 4
    """Volumes: smallest planned side, voxels."""
    FILTERS_3D = (8, 16, 32, 64)
    """Volumes: channels of the four stages of the VGG-style ``small_cnn``."""
    DROPOUT_3D = 0.2
    """Volumes: ``model.dropout`` before the classifier."""
    FLIP_PROB_3D = 0.5
    """Volumes: probability of a flip along each axis."""
    ROT90_PROB_3D = 0.5
    """Volumes: probability of a 90-degree rotation in the last two axes."""
    MAX_EPOCHS_3D = 20
    """Volumes: ``train.max_epochs``."""
    PATIENCE_3D = 10
    """Volumes: ``train.early_stopping.patience``, epochs."""
    LR_3D = 1e-3
    """Volumes: peak learning rate ``train.lr``."""

    FOLDS = 5
    """Small 2D training sets: ``train.folds``, the models of the k-fold ensemble."""
    FOLDS_MAX_IMAGES = 2000
    """2D: pooled training and validation images at or under which the k-fold protocol is planned."""
    FOLDS_MIN_PER_CLASS = 20
    """Fewest pooled images of every class for the k-fold protocol: with fewer, a held-out fold
    holds under 4 images of a class, too few to stratify once patients and copies are grouped."""
    FOLDS_IMAGE_SIDE = 160
    """2D, k-fold protocol: largest planned side, pixels (k models share the time of one).

    Decided on out-of-fold figures (covid19-xray, 251 images, six seeds each, suite variants):
    192 px (22 epochs in the same budget) had a lower mean accuracy (0.931 vs 0.934) and ROC
    AUC (0.985 vs 0.986); 128 px with the same 32 epochs (36 % less arithmetic) came within
    0.003 (accuracy 0.934 vs 0.936, ROC AUC 0.986 vs 0.987 on the same machine), short of the
    tolerance of 0.002 set before its runs, so 160 px stays."""
    FOLDS_CHECK_VAL_EVERY_N_EPOCH = 4
    """k-fold protocol: ``train.check_val_every_n_epoch`` (and after the last epoch). A fold
    model keeps its last weights and its out-of-fold predictions are made after training,
    so its validation curve is for reading only, and validating every epoch cost about a
    tenth of its training time (covid19-xray, 50 held-out images a fold). The weights are the
    same either way: every epoch's random numbers are seeded from ``(seed, epoch)``."""
    BUDGET_FOLDS_S = 110.0
    """k-fold protocol: ``train.time_budget_s``, seconds of training for all folds together.

    Decided on out-of-fold figures (covid19-xray, 251 images, six seeds each, suite variants):
    150 s (44 epochs a fold) was level with 110 s (32 epochs), and 90 s (26 epochs) had a lower
    out-of-fold ROC AUC and a higher log-loss in 5 of 6 seeds: 110 s sits where more epochs stop
    paying."""
    BUDGET_2D_S = 720.0
    """2D, one model: ``train.time_budget_s``, seconds of training (12 minutes, so that a few
    thousand 224 px images train, are evaluated and explained within 20 minutes)."""
    MIN_BUDGET_EPOCHS = 8
    """Fewest epochs a time budget may plan."""
    BUDGET_MAX_EPOCHS = 100
    """2D, one model within a time budget: most epochs the budget may plan (below it, the
    budget decides; the configuration's default of 60 would stop a small set's training
    long before its budget). Decided on validation figures: bone age (840 training hands,
    regression, 224 px) reached a validation mean absolute error of 20.5 months in 60 epochs
    and was still improving at the end; the 97 epochs its budget affords reached 17.8."""
    MIN_EPOCHS_AT_SIDE = 40
    """2D, one model within a time budget: when the budget affords fewer epochs than this at
    the planned side, the side steps down by :attr:`SIDE_STEP` (not below
    :attr:`MIN_BUDGET_SIDE`) until it affords them: a network trained from scratch that is
    still learning when the budget ends gains more from epochs than from pixels. Decided on
    validation figures: ODIR fundus photographs (2876 training eyes, multi-label) planned at
    224 px got 23 epochs and a validation macro ROC AUC of 0.739, still rising at the last
    epoch; at 160 px, 46 epochs in the same budget reached 0.775 (mAP 0.36 -> 0.39)."""
    SIDE_STEP = 32
    """Pixels the side steps down by to fit :attr:`MIN_EPOCHS_AT_SIDE` into the budget."""
    MIN_BUDGET_SIDE = 160
    """Smallest side the budget may step a 2D plan down to, pixels."""

    def __init__(self, fp: dict) -> None:
        self.fp = fp

    @property
    def spatial_dims(self) -> int:
        """2 for images, 3 for volumes (``fp["spatial_dims"]``, default 2)."""
        return self.fp.get("spatial_dims", 2)

    def plan(self) -> Config:
        """Run every ``determine_*`` decision on a fresh default :class:`~medclf.config.Config`.

        Returns:
            the planned configuration (validated on every assignment).

        Raises:
            KeyError: the fingerprint lacks ``median_size`` or ``counts``.
            pydantic.ValidationError: a decision (e.g. of a subclass) set an invalid value.
        """
        cfg = Config()
        self.determine_sampler(cfg)
        self.determine_output_prior(cfg)
        if self.spatial_dims == 3:
            self.determine_3d_grid(cfg)
            self.determine_normalization(cfg)
            self.determine_3d_network(cfg)
            self.determine_3d_augmentation(cfg)
            self.determine_batch_size(cfg)
            self.determine_3d_training(cfg)
            self.determine_tta(cfg)
            self.determine_output_bias(cfg)
            self.determine_kept_weights(cfg)
            return cfg
        self.determine_image_size(cfg)
        self.determine_channels(cfg)
        self.determine_contrast(cfg)
        self.determine_protocol(cfg)
        self.determine_normalization(cfg)
        self.determine_small_image_network(cfg)
        self.determine_small_image_augmentation(cfg)
        self.determine_small_image_training(cfg)
        self.determine_batch_size(cfg)
        self.determine_folds_within_budget(cfg)
        self.determine_tta(cfg)
        self.determine_output_bias(cfg)
        self.determine_kept_weights(cfg)
        return cfg

    # --- both 2D and 3D ------------------------------------------------------------------
    def _train_class_sizes(self) -> list:
        """Image counts of the non-empty training classes."""
        return [n for n in self.fp.get("counts", {}).get("train", {}).values() if n > 0]

    def determine_sampler(self, cfg: Config) -> None:
        """``train.sampler``: 'balanced' when the largest training class has at least
        :attr:`IMBALANCE_RATIO` times the images of the smallest (non-empty) one; else the
        default plain shuffle, with 'auto' class weights in the loss.

        Why: up-weighting a few hundred minority images in the loss lets them dominate the
        gradient and the network fits them; drawing them more often, each time augmented
        differently, does not. Applies to 2D and 3D alike.

        Checked on out-of-fold figures: the reduced PneumoniaMNIST (9:1, 5-fold ensemble,
        6 seeds) with a plain shuffle and 'auto' class weights instead had a lower
        out-of-fold accuracy (0.957 against 0.976) and balanced accuracy (0.967 against 0.974)
        in every seed.

        Args:
            cfg: the configuration being planned, changed in place.
        """
        sizes = self._train_class_sizes()
        if len(sizes) >= 2 and max(sizes) >= self.IMBALANCE_RATIO * min(sizes):
            cfg.train.sampler = "balanced"

    def determine_output_prior(self, cfg: Config) -> None:
        """``train.output_prior``: 'training' under mild imbalance (largest training class
        under :attr:`STRONG_IMBALANCE_RATIO` times the smallest), else the default 'balanced'.

        Why: under mild imbalance the training split likely shows the prevalence the model
        will meet, so the logits are shifted back to its class frequencies after (balanced)
        training: calibrated probabilities whose arg-max maximises accuracy. Stronger
        imbalance usually comes from how a set was collected or reduced (a training split
        reduced to one class in ten says nothing about the clinic's prevalence), so the
        outputs stay prevalence-free.

        Checked on validation figures (the kept weights of the suite's runs, each scored on
        its validation split under both priors, no output bias): under mild imbalance the
        training prior was better in every run, chest-xray-pneumonia (2.9:1, 3 seeds)
        accuracy 0.977-0.985 against 0.972-0.976 and log-loss 0.057-0.074 against
        0.078-0.089, AdrenalMNIST3D (3.6:1, 6 seeds) accuracy 0.857-0.898 against
        0.674-0.724; on the 9:1 reduced PneumoniaMNIST, whose given validation split is
        2.9:1, the balanced prior was better in every run (6 seeds): accuracy 0.971-0.981
        against 0.954-0.964, balanced accuracy 0.966-0.978 against 0.911-0.930, log-loss
        0.072-0.090 against 0.110-0.123. Any ratio between 3.6 and 9 separates them.

        Args:
            cfg: the configuration being planned, changed in place.
        """
        sizes = self._train_class_sizes()
        if len(sizes) >= 2 and max(sizes) < self.STRONG_IMBALANCE_RATIO * min(sizes):
            cfg.train.output_prior = "training"

    def determine_batch_size(self, cfg: Config) -> None:
        """``train.batch_size``: the training-split size over :attr:`STEPS_PER_EPOCH`, within
        :attr:`MIN_BATCH_2D`-:attr:`MAX_BATCH_2D` (images) or
        :attr:`MIN_BATCH_3D`-:attr:`MAX_BATCH_3D` (volumes, whose batches cost far more
        memory and time), so that even a small split gives several steps an epoch.

        Args:
            cfg: the configuration being planned, changed in place.
        """
        low, high = (self.MIN_BATCH_3D, self.MAX_BATCH_3D) if self.spatial_dims == 3 \
            else (self.MIN_BATCH_2D, self.MAX_BATCH_2D)
        cfg.train.batch_size = int(max(low, min(high, n_train(self.fp) // self.STEPS_PER_EPOCH or low)))

    def _all_uint8_arrays(self) -> bool:
        """True for npz datasets stored as uint8 (MedMNIST): their full scale is meaningful."""
        return set(self.fp.get("readers", {})) == {"npz"} and set(self.fp.get("dtypes", {})) == {"uint8"}

    def determine_normalization(self, cfg: Config) -> None:
        """``preprocess.normalization``: 'scale255' for volumes stored as uint8 ``.npz``
        arrays (MedMNIST), whose full 0-255 scale is meaningful (a mask or a fixed
        intensity scale), instead of the per-volume percentile stretch. 2D images keep the
        default 'percentile', robust to exposure differences between machines.

        Args:
            cfg: the configuration being planned, changed in place.
        """
        if self.spatial_dims == 3 and self._all_uint8_arrays():
            cfg.preprocess.normalization = "scale255"

    def determine_tta(self, cfg: Config) -> None:
        """``eval.tta``, predictions averaged over the flips the network trained with (no
        shifts, ``eval.tta_shift=0``), paid at prediction time only: volumes average the 8
        flips of a volume; 2D classification plans that train with left-right flips
        (``augment.flip_prob > 0``) average the image and its mirror, for the k-fold ensemble
        (its out-of-fold predictions too) and for the one model alike. Small images (no
        flips) predict in one pass. Multi-label plans: :func:`medclf.training.tasks.plan_task`.

        Decided on held-out figures (``bench/oof_tta.py`` on the runs kept by
        ``bench/suite.py``): covid19-xray's out-of-fold predictions (six seeds), one pass
        accuracy 0.930 and log-loss 0.215 against the mirror's 0.936 and 0.211 (four 3 %
        shifts added to the mirror: ROC AUC 0.9866 both, log-loss 0.211, so no shifts);
        chest-xray-pneumonia's one model on its validation split (three seeds), log-loss lower
        in all three (0.0785 -> 0.0764, 0.0583 -> 0.0580, 0.0597 -> 0.0578), ROC AUC higher or
        level in all three (mean 0.9980 -> 0.9983), balanced accuracy 0.9772 -> 0.9786.

        Args:
            cfg: the configuration being planned (its augmentation already planned), changed
                in place.
        """
        mirrored = self.fp.get("task", "classification") == "classification" and cfg.augment.flip_prob > 0
        if self.spatial_dims == 3 or mirrored:
            cfg.eval.tta = True
            cfg.eval.tta_shift = 0.0

    def determine_output_bias(self, cfg: Config) -> None:
        """``train.output_bias`` = 'validation' for one-model classification (2D and 3D):
        after training, a logit bias fitted on the validation split is kept when a
        likelihood-ratio test shows the network did not learn the class prior it was
        trained for (:func:`medclf.models.prior.fit_output_bias`); otherwise the outputs
        are left exactly as they were. The k-fold ensemble keeps 'none' (its threshold comes
        from out-of-fold predictions; each fold's held-out part is small for a fit).

        Decided on validation figures, cross-fitted (the bias fitted on one half of the
        validation split, the accuracy counted on the other, 20 random halvings):
        AdrenalMNIST3D, 98 validation volumes, one seed in four whose arg-max called most
        volumes positive went from 0.755 to 0.876 accuracy; on the three others the test
        never kept a bias and their accuracy was unchanged (0.796, 0.898, 0.867).

        Args:
            cfg: the configuration being planned, changed in place.
        """
        if cfg.train.folds < 2:
            cfg.train.output_bias = "validation"

    def determine_kept_weights(self, cfg: Config) -> None:
        """``train.keep_weights`` = 'last' for classification, early stopping off: every
        planned epoch is trained and the weights after the last one are evaluated, exported
        and served, as the k-fold protocol does for its fold models. The learning rate has
        annealed by then (one-cycle schedule) and the weight average (small images, volumes)
        has settled. Multilabel and regression keep the epoch chosen on validation.

        Why: the best epoch on a validation split of a hundred images is partly chosen for
        its luck on those images, and can be a badly calibrated epoch of high learning rate
        whose ranking happened to be good; the last epoch uses no validation information, so
        the validation split stays an unbiased check of the model it fits the output bias and
        operating threshold for.

        Decided on validation figures (the runs of ``bench/suite.py``, each checkpoint with its
        own output-bias fit), although they favour the chosen epoch, which was picked on them:
        AdrenalMNIST3D (98 volumes): in 3 of 6 seeds the best epoch was the last one; in the
        other three, validation accuracy 0.867 -> 0.867, 0.867 -> 0.867 and 0.867 -> 0.888,
        balanced accuracy 0.769 -> 0.753, 0.705 -> 0.769, 0.737 -> 0.766, and a lower
        log-loss in all three (two of the chosen epochs needed an output bias, the last ones
        none). PneumoniaMNIST (524 images, 6 seeds): mean balanced accuracy 0.973 -> 0.973,
        log-loss lower in 5 of 6. chest-xray-pneumonia (782 images, 3 seeds): accuracy
        0.980 / 0.989 / 0.985 -> 0.977 / 0.985 / 0.985, log-loss lower in 2 of 3.

        Args:
            cfg: the configuration being planned, changed in place.
        """
        if self.fp.get("task", "classification") == "classification":
            cfg.train.keep_weights = "last"
            cfg.train.early_stopping.enabled = False

    # --- 2D --------------------------------------------------------------------------------
    def determine_image_size(self, cfg: Config) -> None:
        """``data.image_size`` of 2D images: square, the smallest median side, at most
        :attr:`MAX_SIDE_2D`. Images are never upsampled (upsampling adds pixels, not
        detail); large ones are shrunk. An unknown size (a zero in ``median_size``) plans
        :attr:`MAX_SIDE_2D`.

        Args:
            cfg: the configuration being planned, changed in place.

        Raises:
            ValueError: ``fp["median_size"]`` is empty.
        """
        median = self.fp["median_size"]
        smallest_side = min(median) if min(median) > 0 else self.MAX_SIDE_2D
        side = min(self.MAX_SIDE_2D, smallest_side)
        cfg.data.image_size = [side, side]

    def determine_channels(self, cfg: Config) -> None:
        """``data.in_channels`` of 2D images: 3 (RGB) when at least :attr:`COLOUR_SHARE` of
        the probed images stored in colour really are (``fp["colour_fraction"]``: colour
        photographs such as fundus images, where a lesion is told by its colour), else the
        default 1 (grayscale: X-rays, also those saved as RGB or under a tint).

        Args:
            cfg: the configuration being planned, changed in place.
        """
        if (self.fp.get("colour_fraction") or 0.0) >= self.COLOUR_SHARE:
            cfg.data.in_channels = 3

    def determine_contrast(self, cfg: Config) -> None:
        """``preprocess.steps`` of 2D colour photographs (planned RGB by
        :meth:`determine_channels`): :attr:`COLOUR_STEPS`, the subtraction of the local average
        colour (``local_contrast``, Graham's preprocessing of fundus photographs, Kaggle
        Diabetic Retinopathy Detection 2015), which evens out illumination and camera colour
        so that small lesions stand out to a network trained from scratch. Grayscale images
        keep no steps.

        Decided on validation figures: ODIR fundus photographs (2876 training eyes,
        multi-label, 160 px, seed 42's patient-grouped split) reached a validation macro
        ROC AUC of 0.782 (mAP 0.431) without a step, 0.806 (0.471) with CLAHE and 0.815 (0.493)
        with ``local_contrast``. It is the only colour set of the suite, so the rule is kept
        to colour photographs.

        Args:
            cfg: the configuration being planned, changed in place.
        """
        if cfg.data.in_channels == 3:
            cfg.preprocess.steps = [dict(step) for step in self.COLOUR_STEPS]

    def determine_protocol(self, cfg: Config) -> None:
        """The small-data protocol and the time budget of 2D training.

        Classification with at most :attr:`FOLDS_MAX_IMAGES` pooled training and validation
        images, and at least :attr:`FOLDS_MIN_PER_CLASS` of every class:
        ``train.folds`` = :attr:`FOLDS` (the k-fold ensemble, nnU-Net's practice), the side
        capped at :attr:`FOLDS_IMAGE_SIDE`, early stopping off (every fold trains the
        planned epochs and keeps its last weights: a checkpoint picked on a few dozen images
        is luck, and picking it on the fold would bias the out-of-fold figures), validation
        every :attr:`FOLDS_CHECK_VAL_EVERY_N_EPOCH` epochs, and
        ``train.time_budget_s`` = :attr:`BUDGET_FOLDS_S` (test-time augmentation:
        :meth:`determine_tta`).
        Larger sets train one model within :attr:`BUDGET_2D_S`, for as many epochs as it
        affords up to :attr:`BUDGET_MAX_EPOCHS`. Both protocols augment in
        batches (``augment.batched``: the same kinds of transforms, drawn per image, applied
        to whole batches as tensors): per-image MONAI transforms cost as much as the network
        at these sizes on a CPU (a chest-xray-pneumonia epoch at 224 px: about 70 s with
        per-image transforms, 35-47 s batched). :func:`plan_run` turns the budget into
        ``train.max_epochs`` (:func:`medclf.training.budget.epochs_for_budget`).

        Args:
            cfg: the configuration being planned (its ``data.image_size`` already planned),
                changed in place.
        """
        if self._folds_possible() and n_pool(self.fp) <= self.FOLDS_MAX_IMAGES:
            cfg.train.folds = self.FOLDS
            cfg.train.early_stopping.enabled = False
            cfg.train.check_val_every_n_epoch = self.FOLDS_CHECK_VAL_EVERY_N_EPOCH
            side = min(min(cfg.data.image_size), self.FOLDS_IMAGE_SIDE)
            cfg.data.image_size = [side, side]
            cfg.train.time_budget_s = self.BUDGET_FOLDS_S
        else:
            cfg.train.time_budget_s = self.BUDGET_2D_S
            cfg.train.max_epochs = self.BUDGET_MAX_EPOCHS
        cfg.augment.batched = True

    def _folds_possible(self) -> bool:
        """True for classification with at least :attr:`FOLDS_MIN_PER_CLASS` pooled training and
        validation images of every class (what the k-fold protocol needs)."""
        counts = self.fp["counts"]
        per_class = [counts.get("train", {}).get(c, 0) + counts.get("val", {}).get(c, 0)
                     for c in counts.get("train", {})]
        classification = self.fp.get("task", "classification") == "classification"
        return classification and bool(per_class) and min(per_class) >= self.FOLDS_MIN_PER_CLASS

    def determine_folds_within_budget(self, cfg: Config) -> None:
        """``train.folds`` = :attr:`FOLDS` also for a set over :attr:`FOLDS_MAX_IMAGES` when the
        k fold models, at the planned side, network and epochs, are estimated to train within
        the one-model budget :attr:`BUDGET_2D_S` (:func:`medclf.training.budget.planned_seconds`):
        thumbnails such as 28x28 MedMNIST images, whose one model uses a small part of it.
        The budget then buys an ensemble (nnU-Net's 5-fold practice; deep ensembles,
        Lakshminarayanan et al. 2017) and out-of-fold figures on every image, instead of idle
        time. The planned epochs, side and budget stay those of the one model.

        Decided on validation figures: PneumoniaMNIST (3882 training images, 28 px, the given
        524-image validation split), the average of the probabilities of the six seeds' models
        against their mean: log-loss 0.084 -> 0.081, ROC AUC 0.9971 -> 0.9977, accuracy
        0.974 -> 0.975, balanced accuracy 0.972 -> 0.971. The fold models train on four fifths
        of the pooled training and validation images, about as many as the one model did.

        Args:
            cfg: the configuration being planned (side, network, epochs and batch size already
                planned), changed in place.
        """
        if self.spatial_dims != 2 or cfg.train.folds >= 2 or not self._folds_possible():
            return
        folded = cfg.model_copy(deep=True)
        folded.train.folds = self.FOLDS
        if planned_seconds(folded, n_pool(self.fp), n_train(self.fp)) <= self.BUDGET_2D_S:
            cfg.train.folds = self.FOLDS

    def _small_image(self, cfg: Config) -> bool:
        """True for 2D images whose planned side is under :attr:`SMALL_IMAGE_SIDE`."""
        return self.spatial_dims == 2 and min(cfg.data.image_size) < self.SMALL_IMAGE_SIDE

    def determine_small_image_network(self, cfg: Config) -> None:
        """Small 2D images (e.g. 28x28 MedMNIST): a stem without downsampling (stride 1,
        kernel :attr:`SMALL_STEM_KERNEL`) and a narrow network of three stages
        (:attr:`SMALL_FILTERS`): at full resolution, half the channels cost a quarter of the
        convolutions, and a strided stem would throw away most of a thumbnail's pixels.

        Args:
            cfg: the configuration being planned, changed in place.
        """
        if self._small_image(cfg):
            cfg.model.stem_stride = 1
            cfg.model.stem_kernel_size = self.SMALL_STEM_KERNEL
            cfg.model.filters = list(self.SMALL_FILTERS)

    def determine_small_image_augmentation(self, cfg: Config) -> None:
        """Small 2D images: no left-right flip (a flipped thumbnail radiograph shows an
        anatomy that does not occur: the heart on the right). Batched augmentation comes with
        every 2D plan (:meth:`determine_protocol`).

        Args:
            cfg: the configuration being planned, changed in place.
        """
        if self._small_image(cfg):
            cfg.augment.flip_prob = 0.0

    def determine_small_image_training(self, cfg: Config) -> None:
        """Small 2D images: :attr:`SMALL_MAX_EPOCHS` epochs, patience :attr:`SMALL_PATIENCE`,
        and an exponential moving average of the weights over :attr:`EMA_EPOCHS` epochs.

        Why the average: the validation ROC AUC of such sets saturates near 1, so the
        checkpoint chosen on validation is close to a draw among near-equal epochs; averaged
        weights change slowly from epoch to epoch, so the draw matters less. The average
        keeps its own batch-norm statistics (averaged with the weights), so they are not
        re-estimated (``train.clean_bn_statistics`` off, see :meth:`_keep_averaged_statistics`).

        Args:
            cfg: the configuration being planned, changed in place.
        """
        if self._small_image(cfg):
            cfg.train.max_epochs = self.SMALL_MAX_EPOCHS
            cfg.train.early_stopping.patience = self.SMALL_PATIENCE
            cfg.train.ema_epochs = self.EMA_EPOCHS
            self._keep_averaged_statistics(cfg)

    @staticmethod
    def _keep_averaged_statistics(cfg: Config) -> None:
        """``train.clean_bn_statistics`` off for plans with a weight average (EMA).

        Why: Lightning's EMA averages the batch-norm buffers with the weights, so the averaged
        model's statistics do not lag behind its weights, and re-estimating them was worse
        on validation: PneumoniaMNIST's validation balanced accuracy fell in 5 of 6 seeds
        (mean 0.973 -> 0.967, ROC AUC unchanged), and AdrenalMNIST3D's one re-run seed
        ranked worse (validation ROC AUC 0.827 -> 0.807). Without a weight average
        (chest-xray-pneumonia) it lifted validation accuracy from 0.38 to 0.97 in mid-training
        epochs (:mod:`medclf.training.batchnorm`)."""
        cfg.train.clean_bn_statistics = False

    # --- 3D --------------------------------------------------------------------------------
    def determine_3d_grid(self, cfg: Config) -> None:
        """``data.image_size`` and ``preprocess.shrink`` of volumes ``(C, D, H, W)``.

        Intensity volumes are shrunk (averaged, 'area') so that the longest side is at most
        :attr:`GRID_3D` voxels, keeping the aspect ratio (each side at least
        :attr:`MIN_SIDE_3D`): 3D convolution cost grows with the voxel count, and a 64^3
        volume has 8x fewer voxels at 32^3. Binary volumes (segmentation masks,
        ``fp["binary"]``) keep up to :attr:`GRID_3D_MASKS` voxels a side for the projection
        branch (:meth:`determine_3d_network`) and are shrunk by max-pooling ('max'), which
        keeps thin structures one voxel wide that averaging fades to grey. An unknown size
        (a zero in ``median_size``) plans a cube of the grid side; volumes are never
        upsampled.

        Args:
            cfg: the configuration being planned, changed in place.
        """
        binary = bool(self.fp.get("binary"))
        grid = self.GRID_3D_MASKS if binary else self.GRID_3D
        size = self.fp["median_size"]
        median = [s for s in size if s > 0] or [grid] * 3
        scale = min(1.0, grid / max(median))
        cfg.data.image_size = [max(self.MIN_SIDE_3D, int(round(s * scale))) for s in size] \
            if len(size) == 3 and min(size) > 0 else [grid] * 3
        if binary:
            cfg.preprocess.shrink = "max"

    def determine_3d_network(self, cfg: Config) -> None:
        """The network for volumes: ``small_cnn`` as a plain VGG-style 3D CNN.

        Four conv-BN-ReLU blocks of stride 1 (:attr:`FILTERS_3D` channels, kernel 3), each
        followed by a 2x max-pool, global average pooling, dropout :attr:`DROPOUT_3D` and a
        linear classifier: the plain 3D CNN of the tutorials. Max-pooling keeps the thin
        bright structures of masks that strided (averaging) stages thin out.

        Masks (``fp["binary"]``) add a projection branch (``model.projection_branch``,
        :class:`~medclf.models.projection.VolumeAndProjections`): a 2D network of the same
        style on the mean and maximum projections along each axis, at the full planned
        grid, averaged (logits) with the 3D network, which sees the mask max-pooled once
        more (``model.volume_pool=1``) when the grid exceeds :attr:`GRID_3D`: two views that
        err on different volumes, averaged (the multi-view CNN of Su et al. 2015).

        Args:
            cfg: the configuration being planned (its ``data.image_size`` already planned),
                changed in place.
        """
        model = cfg.model
        model.spatial_dims = 3
        if self.fp.get("binary"):
            model.projection_branch = True
            model.volume_pool = int(max(cfg.data.image_size) > self.GRID_3D)
        model.filters = list(self.FILTERS_3D)
        model.blocks_per_stage = 1
        model.stem_kernel_size = 3
        model.stem_stride = 1
        model.stem_pool = False
        model.downsample = "maxpool"
        model.dropout = self.DROPOUT_3D

    def determine_3d_augmentation(self, cfg: Config) -> None:
        """Volumes: flips along every axis and 90-degree rotations in the last two axes
        (cheap, exact, no interpolation), batched; the random affine (``augment.prob=0``)
        and the noise are off (the affine is costly in 3D on a CPU).

        Args:
            cfg: the configuration being planned, changed in place.
        """
        augment = cfg.augment
        augment.batched = True
        augment.prob = 0.0
        augment.flip_prob = self.FLIP_PROB_3D
        augment.vertical_flip_prob = self.FLIP_PROB_3D
        augment.depth_flip_prob = self.FLIP_PROB_3D
        augment.rot90_prob = self.ROT90_PROB_3D
        augment.noise_std = 0.0

    def determine_3d_training(self, cfg: Config) -> None:
        """Volumes: :attr:`MAX_EPOCHS_3D` epochs, patience :attr:`PATIENCE_3D`, peak learning
        rate :attr:`LR_3D`, and an exponential moving average of the weights over
        :attr:`EMA_EPOCHS` epochs.

        Why the average: the validation split of a 3D set is small and its ROC AUC noisy;
        averaged weights change slowly, so the checkpoint picked on it matters less. Its
        batch-norm statistics are kept (see :meth:`_keep_averaged_statistics`).

        Args:
            cfg: the configuration being planned, changed in place.
        """
        cfg.train.max_epochs = self.MAX_EPOCHS_3D
        cfg.train.lr = self.LR_3D
        cfg.train.ema_epochs = self.EMA_EPOCHS
        cfg.train.early_stopping.patience = self.PATIENCE_3D
        self._keep_averaged_statistics(cfg)
