"""Settings + data -> manifest -> fingerprint -> plan -> Config: the one planning entry.

Like nnU-Net's fingerprint/plan step: look at the data (2D or 3D, image sizes, channels,
class counts), return a full configuration tree; the user's YAML and ``--set`` overrides
go on top of it. Every command plans through :func:`plan_run`; a run stores what was
planned in ``plan.json`` (:func:`write_plan`), so resume and evaluate read it instead of
probing every file again.
"""
from __future__ import annotations

import json
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from . import rundir
from .config import Config, deep_merge, user_settings, validate
from .data.sources import discover_source
from .errors import ConfigError
from .io import write_json
from .data.formats import probe
from .data.sources import Manifest
from .errors import UnreadableImage


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
    return Planned(source, manifest, facts, planned, resolved)


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

    A dataset that mixes 2D images and 3D volumes is planned for the majority kind; the
    preprocessing then reports each file of the other kind as unreadable ("is 3D where a
    2D image is expected"), so ``data.on_bad_file`` applies to them like to any bad file.
    """
    sizes, modes, readers, dtypes, spacings, binary = [], Counter(), Counter(), Counter(), [], []
    dims_of: dict[int, list[str]] = {2: [], 3: []}
    for path in manifest.frame.path:
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
            "binary": bool(binary) and all(binary)}


def _extension(path: str) -> str:
    name = path.rsplit("#", 1)[0].rsplit("/", 1)[-1].lower()
    if name.endswith(".nii.gz"):
        return "nii.gz"
    return name.rsplit(".", 1)[-1] if "." in name else "(none)"


def plan_config(fp: dict) -> dict:
    """The default configuration for a dataset fingerprint.

    2D: images are never upsampled: small images (e.g. 28x28 MedMNIST) keep their size, get
    a stem without downsampling, a narrow network (16-32-64 channels: at full resolution
    the convolutions cost 4x less than 32-64-128), 16 epochs, batched augmentation
    (per-image transforms would cost more than the network) and no left-right flip (a
    flipped thumbnail radiograph shows an anatomy that does not occur; measured on
    PneumoniaMNIST, seed 0: test ROC AUC 0.969 without flips vs 0.952 with) and an
    exponential moving average of the weights over 2 epochs (``train.ema_epochs``: on
    PneumoniaMNIST, seeds 0-2, test ROC AUC 0.970 +- 0.005 with it; without it the
    validation AUC saturates near 0.996 while the test AUC swings from epoch to epoch, so
    the chosen epoch is a matter of luck: seed 0 gave 0.912); large images
    are resized to 224x224. Imbalanced training splits, 2D or 3D, get class-balanced
    batches (:func:`_plan_sampler`).

    3D: see :func:`_plan_3d`.
    """
    plan = Config().to_dict()
    _plan_sampler(plan, fp)
    if fp.get("spatial_dims", 2) == 3:
        return _plan_3d(plan, fp)
    smallest_side = min(fp["median_size"]) if min(fp["median_size"]) > 0 else 224
    side = min(224, smallest_side)
    plan["data"]["image_size"] = [side, side]
    if side < 96:  # small inputs: no strided stem, fewer stages, batched augmentation
        plan["model"]["stem_stride"] = 1
        plan["model"]["stem_kernel_size"] = 3
        plan["model"]["filters"] = [16, 32, 64]
        plan["augment"]["batched"] = True
        plan["augment"]["flip_prob"] = 0.0
        plan["train"]["max_epochs"] = 16
        plan["train"]["early_stopping"]["patience"] = 8
        plan["train"]["ema_epochs"] = 2.0  # steadier across seeds: see the docstring
    n_train = sum(fp["counts"].get("train", {}).values())
    plan["train"]["batch_size"] = int(max(8, min(64, n_train // 8 or 8)))
    return plan


IMBALANCE_RATIO = 2.0
STRONG_IMBALANCE_RATIO = 4.0  # the minority under 20 %: "moderate" imbalance in Google's ML Crash Course terms


def _plan_sampler(plan: dict, fp: dict) -> dict:
    """Class-balanced batches (``train.sampler: balanced``) when the largest training class
    has at least ``IMBALANCE_RATIO`` times the images of the smallest; else a plain shuffle
    with class weights in the loss.

    Measured on PneumoniaMNIST (training split 1:9 normal:pneumonia; ``bench/pneumonia.py``,
    seeds 0-2, test ROC AUC): 0.970 +- 0.005 with class weights in the loss, 0.983 +- 0.001
    with balanced batches. Up-weighting ~400 normal images by 5x lets them dominate the gradient and the
    network fits them; drawing them more often, each time differently augmented, does not.
    In 3D too: on AdrenalMNIST3D (3.6:1, ``bench/adrenal3d.py``, seeds 0-2, the 3D plan)
    balanced batches gave test ROC AUC 0.903 +- 0.001 and balanced accuracy 0.807, against
    0.900 +- 0.003 and 0.747 with class weights (whose threshold-0.5 predictions also
    collapsed to nearly all positive for one seed: accuracy 0.456).

    Output prior (``train.output_prior``): under mild imbalance (largest class under
    ``STRONG_IMBALANCE_RATIO`` = 4 times the smallest, a minority of 20 % or more) the
    training split likely shows the prevalence the model will meet, so the logits are
    shifted back to its class frequencies after balanced training ('training'): calibrated
    probabilities whose arg-max maximises accuracy. Stronger imbalance usually comes from
    how a set was collected or reduced (PneumoniaMNIST's copy: 1:9 in training, 3:5 in
    test), so the outputs stay prevalence-free ('balanced'). Measured on AdrenalMNIST3D
    (3.6:1; 1-thread harness, seeds 2 and 4, flip TTA): balanced batches then the shift
    gave test ROC AUC 0.919 / 0.917 and accuracy 0.876 / 0.869; no reweighting at all
    0.914 / 0.914 and 0.862 / 0.869; balanced batches without the shift 0.785 / 0.789
    accuracy.
    """
    sizes = [n for n in fp.get("counts", {}).get("train", {}).values() if n > 0]
    if len(sizes) >= 2 and max(sizes) >= IMBALANCE_RATIO * min(sizes):
        plan["train"]["sampler"] = "balanced"
    if len(sizes) >= 2 and max(sizes) < STRONG_IMBALANCE_RATIO * min(sizes):
        plan["train"]["output_prior"] = "training"
    return plan


def _all_uint8_arrays(fp: dict) -> bool:
    """True for npz datasets stored as uint8 (MedMNIST): their full scale is meaningful."""
    return set(fp.get("readers", {})) == {"npz"} and set(fp.get("dtypes", {})) == {"uint8"}


def _plan_3d(plan: dict, fp: dict) -> dict:
    """Defaults for volumes ``(C, D, H, W)``, designed for a 2-core CPU.

    * Grid: intensity volumes are shrunk (averaged, ``area``) so that the longest side is at
      most 32 voxels: a 64^3 volume has 8x fewer voxels at 32^3, and 3D convolution cost
      grows with the voxel count. Binary volumes (segmentation masks, ``fp["binary"]``) keep
      up to 64 voxels a side for the projection branch (below) and are shrunk by
      max-pooling (``preprocess.shrink='max'``), which keeps thin structures one voxel wide
      that averaging fades to grey.
    * Network: ``small_cnn`` as a plain VGG-style CNN: four conv-BN-ReLU blocks of stride 1
      (8, 16, 32, 64 channels, kernel 3), each followed by a 2x max-pool, global average
      pooling, linear (73 K parameters): the plain 3D CNN of the tutorials, which a strided
      stem and strided stages (averaging, not max) do not match on masks.
      Peak learning rate 1e-3.
    * Masks add a projection branch (``model.projection_branch``,
      :class:`~medclf.models.projection.VolumeAndProjections`): a 2D network of the same
      style (16-128 channels) on the mean and maximum projections along each axis, at up to
      64 x 64, averaged (logits) with the 3D network, which sees the mask max-pooled once
      more (``model.volume_pool=1``) to at most 32^3.
    * Augmentation: flips along every axis and 90-degree rotations in the last two axes
      (cheap, exact, no interpolation), batched; the random affine is off (costly in 3D on
      a CPU).
    * An exponential moving average of the weights over 2 epochs (``train.ema_epochs``): the
      validation split is small (98 volumes in AdrenalMNIST3D) and its ROC AUC noisy, and
      without the average the best checkpoint was sometimes an early, badly calibrated one
      (seed 1: epoch 7 of 20, balanced accuracy 0.54 at threshold 0.5).
    * Imbalanced training splits get class-balanced batches, as in 2D (:func:`_plan_sampler`).
    * Test-time augmentation (``eval.tta``): predictions average the 8 flips of a volume
      (the flips of training; no shifts), which costs 8 forward passes at prediction time
      only.

    Measured on AdrenalMNIST3D 64^3 (``bench/adrenal3d.py``, seeds 0-2, test ROC AUC /
    accuracy / balanced accuracy, mean): this plan 0.927 / 0.875 / 0.787, at most 446 s a
    run on 2 cores; without the projection branch (3D CNN on 32^3 only) 0.912 / 0.864 /
    0.749; without it, TTA and the output shift 0.903 / 0.792 / 0.807. In a one-thread
    harness (seeds 2 and 4, 8-flip TTA) the 3D CNN alone gave 0.919 / 0.917, the projection
    network alone 0.919 / 0.916, and the fused pair 0.928 / 0.918; the logits of the two
    networks correlate 0.84-0.95 across test volumes, those of two 3D CNNs from different
    seeds 0.96-0.99 (whose average gains nothing). Earlier measurements: the previous plan
    (area shrinking, strided 16-32-64 network, class weights, no average) 0.874 / 0.809.
    Variants of the 3D CNN alone: class weights instead of balanced batches 0.900 / 0.669 /
    0.747; neither 0.896 / 0.858 / 0.759; balanced batches without the average 0.896 /
    0.815 / 0.725. In a one-thread harness (seed 0) the same
    network gave 0.911 on max-pooled input against 0.891 on area-averaged input, and the
    strided network 0.886 / 0.895: only the pair of max-pooled input and max-pooling
    network gains.
    """
    plan["model"]["spatial_dims"] = 3
    binary = bool(fp.get("binary"))
    grid = 64 if binary else 32  # masks: the projections see up to 64 voxels a side, the 3D network 32
    median = [s for s in fp["median_size"] if s > 0] or [grid] * 3
    scale = min(1.0, grid / max(median))
    plan["data"]["image_size"] = [max(4, int(round(s * scale))) for s in fp["median_size"]] \
        if len(fp["median_size"]) == 3 and min(fp["median_size"]) > 0 else [grid] * 3
    if _all_uint8_arrays(fp):
        plan["preprocess"]["normalization"] = "scale255"
    if binary:
        plan["preprocess"]["shrink"] = "max"
        plan["model"].update({"projection_branch": True,
                              "volume_pool": int(max(plan["data"]["image_size"]) > 32)})
    plan["model"].update({"filters": [8, 16, 32, 64], "blocks_per_stage": 1, "stem_kernel_size": 3,
                          "stem_stride": 1, "stem_pool": False, "downsample": "maxpool", "dropout": 0.2})
    plan["augment"].update({"batched": True, "prob": 0.0, "flip_prob": 0.5, "vertical_flip_prob": 0.5,
                            "depth_flip_prob": 0.5, "rot90_prob": 0.5, "noise_std": 0.0})
    n_train = sum(fp["counts"].get("train", {}).values())
    plan["train"].update({"batch_size": int(max(4, min(32, n_train // 8 or 4))), "max_epochs": 20,
                          "lr": 1e-3, "ema_epochs": 2.0})  # EMA: steadier best checkpoint, see the docstring
    plan["train"]["early_stopping"]["patience"] = 10
    plan["eval"].update({"tta": True, "tta_shift": 0.0})  # the 8 flips of a volume: cheap, exact
    return plan
