"""The configuration tree: typed sections, YAML loading and ``--set key=value`` overrides.

The resolved tree (the plan from :mod:`medclf.plan`, then the user's YAML, then the
``--set`` overrides) is what a run stores as ``config.yaml``; feeding that file back with
``--config`` repeats the run.
"""
from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Annotated, Literal, Optional, Union, get_args

import yaml
from annotated_types import Gt, Le
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .data.formats.windowing import WINDOW_PRESETS  # noqa: F401  (re-exported for users of the config)
from .data.morphology import PreprocessStep
from .errors import ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    """Where the images come from, how they are split into train/val/test, and how they are loaded."""

    source: Optional[str] = Field(None, description="Dataset: a class-per-folder tree (with or without train/val/test folders) of images, NIfTI volumes or DICOM files/series; a CSV manifest (path,label[,split,patient_id]); a MedMNIST .npz file; or 'medmnist:NAME'.")
    val_fraction: float = Field(0.15, gt=0, lt=1, description="Share of the training images carved out (stratified, seeded) as validation when the data has no val/ folder.")
    test_fraction: float = Field(0.15, gt=0, lt=1, description="Share of the images held out as test when the data has no test/ folder.")
    on_bad_file: Literal["error", "skip"] = Field("error", description="'error': stop before training and list every unreadable file; 'skip': train without them and record them in bad_files.csv.")
    image_size: list[int] = Field([224, 224], min_length=2, max_length=3, description="Size every image is resized to, in pixels (H, W) or voxels (D, H, W). Larger sizes keep fine detail (small nodules, thin lines) but cost memory and time roughly in proportion to the number of pixels; planned from the data (never larger than the images, at most 224).")
    in_channels: int = Field(1, ge=1, le=4, description="Channels fed to the model: 1 = grayscale (X-rays are grayscale even when stored as RGB), 3 = RGB.")
    cache: Literal["memory", "disk", "none"] = Field("memory", description="Where preprocessed images are kept so that later epochs never decode the files again.")
    cache_dir: Optional[str] = Field(None, description="Folder of the disk cache (default: ~/.cache/medclf).")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes; 0 loads in the main process (best on a 2-core CPU with cached data).")
    storage: Literal["auto", "memory", "disk"] = Field("auto", description="Where the preprocessed images of a run live: 'memory' (float32 tensors; fastest for small datasets), 'disk' (one memory-mapped shard in the cache folder, written once in parallel, resumable, read by the DataLoader: memory does not grow with the number of images), or 'auto': disk when the float32 arrays would take more than 1 GiB or 15 % of the available memory.")
    storage_dtype: Literal["float16", "float32"] = Field("float16", description="Number type of the disk shard (data.storage=disk): float16 halves the bytes (values within 1e-3 relative of float32); float32 gives exactly the in-memory arrays.")
    medmnist_root: Optional[str] = Field(None, description="Folder holding MedMNIST .npz files (NAME.npz) for 'medmnist:NAME' sources; downloads go there too (default: $MEDMNIST_ROOT, else ~/.medmnist).")
    max_pixels: int = Field(100_000_000, gt=0, description="Images with more pixels than this are rejected as decompression bombs.")
    path_column: Optional[str] = Field(None, description="CSV sources: the column holding each image's path (default 'path'; relative paths are resolved against the CSV's folder).")
    label_columns: Optional[list[str]] = Field(None, min_length=1, description="CSV sources: the label column(s). One column of names: classification; several 0/1 columns: multi-label (one finding per column); one numeric column: regression (with data.task=regression, or inferred when every value is a number and there are many distinct values). Default: the 'label' column. On the command line: --set data.label_columns=[N,D,G].")
    group_column: Optional[str] = Field(None, description="CSV sources: the column naming the patient (or other group) of each image; all images of a group go to the same split (default 'patient_id' when present).")
    patient_id_pattern: Optional[str] = Field(None, description="Class-per-folder sources: a regular expression (Python re) searched in each file's name (for a DICOM series folder, the folder's name); its first group, or the whole match if it has none, is the image's patient id, and the splits and folds medclf carves keep every patient's images together. E.g. '^(person\\d+)_' for person12_bacteria_3.jpeg. A file it does not match is an error that names the file. Default: no grouping (every image its own patient).")
    split_column: Optional[str] = Field(None, description="CSV sources: the column holding each row's split (train/val/test; empty cells are split by the fractions; default 'split' when present).")
    task: Optional[Literal["classification", "multilabel", "regression"]] = Field(None, description="What the labels are: classification (one class per image), multilabel (several 0/1 findings per image, one sigmoid each) or regression (a number per image). Null: inferred from data.label_columns and said in the log.")

    @field_validator("patient_id_pattern")
    @classmethod
    def _pattern(cls, value):
        if value is not None:
            try:
                re.compile(value)
            except re.error as err:
                raise ValueError(f"not a regular expression ({err}): {value!r}") from None
        return value

    @field_validator("label_columns", mode="before")
    @classmethod
    def _columns(cls, value):
        if isinstance(value, str):  # --set data.label_columns=N,D,G or a single name
            value = [part.strip() for part in value.strip("[]").split(",") if part.strip()]
        if isinstance(value, list):
            value = [str(v) for v in value]
        return value


class PreprocessConfig(_Section):
    """Deterministic preparation of every image (all splits alike), done once and cached."""

    normalization: Literal["scale255", "minmax", "percentile", "zscore", "none"] = Field(
        "percentile", description="How pixel values are brought to a common range, per image, so that exposure differences between machines matter less. scale255: divide by 255 (keeps absolute brightness; only for 8-bit images from one source); minmax: darkest pixel to 0, brightest to 1 (one bright marker changes the whole image); percentile (default): the 5th-95th percentile range to [0, 1], robust to burnt-in text, markers and black borders; zscore: zero mean and unit variance per image. none: keep the values as they are (e.g. after DICOM windowing, which already maps to [0, 1]).")
    percentiles: tuple[float, float] = Field((5.0, 95.0), description="Lower and upper percentile of the 'percentile' normalisation.")
    steps: list[PreprocessStep] = Field([], description="Ordered scikit-image steps run on the resized image before normalisation: "
                                        "threshold (value/otsu/percentile, optionally as a mask), erosion, dilation, opening, closing "
                                        "(disk/ball radius), clahe, equalize; see medclf.data.morphology.")
    window: Union[Literal["lung", "mediastinum", "brain", "bone", "soft_tissue", "file"], list[float], None] = Field(
        None, description="Intensity window applied to DICOM/NIfTI values (Hounsfield units for CT) before normalisation, mapping center-width/2..center+width/2 to [0,1] with clipping: a preset (lung, mediastinum, brain, bone, soft_tissue), 'file' (the DICOM file's own VOI LUT, or WindowCenter/WindowWidth with its VOILUTFunction, applied by pydicom; output range mapped to [0, 1]), [center, width], or null (no windowing).")
    spacing: Optional[list[float]] = Field(None, min_length=3, max_length=3, description="Volumes (NIfTI, DICOM series): resample to this voxel spacing in mm (per volume axis) before resizing; null keeps the file's voxel grid.")
    resize: Literal["resize", "none"] = Field("resize", description="'resize': every image/volume is resized (interpolated) to data.image_size; 'none': arrays are used at their own size, which must then be the same for all files.")
    shrink: Literal["area", "max"] = Field("area", description="How an image/volume larger than data.image_size is shrunk: 'area' averages each block of pixels (like anti-aliasing; right for intensities); 'max' keeps each block's maximum (max-pooling), which keeps thin bright structures such as the limbs of a binary segmentation mask that averaging fades. Planned 'max' for binary (two-valued) volumes. Enlarging always interpolates (bilinear/trilinear).")

    @field_validator("window")
    @classmethod
    def _window(cls, value):
        if isinstance(value, list) and (len(value) != 2 or value[1] <= 0):
            raise ValueError("need a preset name, 'file', or [center, width] with width > 0")
        return value

    @field_validator("percentiles")
    @classmethod
    def _ordered(cls, value):
        low, high = value
        if not 0 <= low < high <= 100:
            raise ValueError("need 0 <= low < high <= 100")
        return value


class AugmentConfig(_Section):
    """Random changes to training images (never to validation or test images), so that the model learns what does not depend on position, size or exposure. Augmentation is the cheapest defence against overfitting a small dataset."""

    enabled: bool = Field(True, description="Random augmentation of training images (never of validation or test images).")
    prob: float = Field(0.8, ge=0, le=1, description="Probability that the random affine (rotation, zoom, translation, shear) is applied to an image.")
    rotate_deg: float = Field(10.0, ge=0, le=180, description="Maximum random rotation, degrees (a random angle in [-rotate_deg, +rotate_deg]). Patients are never perfectly straight; keep it small (5-15) for X-rays, whose orientation is standardised.")
    zoom: float = Field(0.1, ge=0, lt=1, description="Maximum relative zoom in or out (0.1 = 90-110 %), for differences in patient size and distance to the detector.")
    translate: float = Field(0.06, ge=0, lt=1, description="Maximum shift as a fraction of the image size, so that the model does not rely on where the anatomy sits in the frame.")
    shear: float = Field(0.05, ge=0, lt=1, description="Maximum shear factor (a slanting distortion); small values mimic a slightly oblique projection.")
    flip_prob: float = Field(0.5, ge=0, le=1, description="Probability of a left-right flip. Turn it off (0) when left and right matter for the diagnosis (the heart sits on the left; a finding may be one-sided).")
    vertical_flip_prob: float = Field(0.0, ge=0, le=1, description="Probability of an up-down flip (off: anatomy has an up and a down).")
    brightness: float = Field(0.1, ge=0, le=1, description="Maximum intensity shift, in units of the normalised intensity.")
    contrast: float = Field(0.1, ge=0, le=1, description="Maximum relative intensity scaling (contrast).")
    noise_std: float = Field(0.02, ge=0, le=1, description="Standard deviation of added Gaussian noise (applied with probability 0.3).")
    depth_flip_prob: float = Field(0.0, ge=0, le=1, description="Volumes: probability of a flip along the first (depth) axis.")
    batched: bool = Field(False, description="Augment whole batches with tensor operations (medclf.data.augment.BatchAugmentation, same settings, random per sample) instead of per-image MONAI transforms: much faster for small images and volumes on a CPU.")
    rot90_prob: float = Field(0.0, ge=0, le=1, description="Probability of a random rotation by 90, 180 or 270 degrees in the plane of the last two axes (MONAI RandRotate90).")


class ModelConfig(_Section):
    """The network: which architecture, how wide and deep, and how its weights start."""

    name: str = Field("small_cnn", description="Network from the model registry: small_cnn (default; fast on a CPU, good for up to a few thousand images), resnet18/34/50/101/152, densenet121 (MONAI; bigger, slower, worth it with more data or a GPU).")
    spatial_dims: Literal[2, 3] = Field(2, description="2 for images (N, C, H, W), 3 for volumes (N, C, D, H, W).")
    filters: list[int] = Field([16, 32, 64, 128], min_length=1, description="small_cnn: number of filters (output channels, i.e. feature detectors) of each stage; each stage after the first halves the resolution. More filters per stage = a wider, more capable but slower model that overfits small data more easily; more stages = a deeper model that sees larger structures.")
    blocks_per_stage: int = Field(2, ge=1, le=8, description="small_cnn: convolution blocks (convolution, normalisation, activation) in each stage; more blocks make the model deeper at the same resolution.")
    kernel_size: int = Field(3, ge=1, le=11, description="small_cnn: kernel size of the stage convolutions, pixels: each filter looks at a kernel_size x kernel_size window. 3 is the usual choice (two stacked 3x3 convolutions see as far as one 5x5 with fewer weights).")
    stem_kernel_size: int = Field(5, ge=1, le=11, description="small_cnn: kernel size of the first (stem) convolution, which sees the raw pixels; a larger window here captures texture at full resolution.")
    stem_stride: int = Field(2, ge=1, le=4, description="small_cnn: stride of the stem; 2 halves the resolution once before the stages (cheap on large inputs).")
    stem_pool: bool = Field(True, description="small_cnn: a 2x max-pool after a strided stem (stem_stride > 1).")
    downsample: Literal["stride", "maxpool"] = Field("stride", description="small_cnn: how the network reduces the resolution between stages. stride: the first convolution of each stage after the first has stride `stride` (cheaper); maxpool: every convolution has stride 1 and each stage ends with a 2x max-pool, the stem being the first convolution of the first stage (the classic VGG-style CNN). Max-pooling keeps thin bright structures, such as the limbs of a segmentation mask, that a strided convolution thins out; planned for binary (mask) volumes.")
    stride: int = Field(2, ge=1, le=4, description="small_cnn: stride (step in pixels between two positions of the filter) of the first convolution of each stage after the first; 2 halves the resolution, so later stages see larger structures at lower cost, 1 keeps it.")
    padding: Optional[int] = Field(None, ge=0, description="small_cnn: zeros added around the image before each convolution, pixels. Without padding every convolution shrinks the image by kernel_size - 1 and ignores the borders; the default (null) pads kernel_size // 2, which keeps the size ('same' padding for odd kernels).")
    dropout: float = Field(0.2, ge=0, lt=1, description="Fraction of features randomly set to zero before the final classifier during training (never at evaluation). It keeps the model from relying on a few features, a defence against overfitting; raise it (0.3-0.5) when training accuracy is far above validation accuracy, lower it (0-0.1) when the model underfits.")
    activation: Literal["relu", "leakyrelu", "elu", "gelu", "prelu"] = Field("relu", description="small_cnn: activation function.")
    norm: Literal["batch", "instance", "group", "none"] = Field("batch", description="small_cnn: normalisation layer after each convolution, which keeps activations in a stable range so that training tolerates larger learning rates. batch: per batch (the usual choice; needs batches of 8 or more); instance: per image; group: per group of channels (good for small batches, e.g. 3D); none.")
    projection_branch: bool = Field(False, description="3D only: add a 2D network that looks at the three axis projections of the volume (mean and maximum along depth, height and width), and average its logits with those of the 3D network (late fusion; the multi-view CNN of Su et al. 2015 with orthogonal projections as views). The projections keep the full in-plane resolution for a fraction of the cost of 3D convolutions, and the two networks err on different volumes, so their average ranks cases better than either. Planned for binary (mask) volumes.")
    projection_filters: list[int] = Field([16, 32, 64, 128], min_length=1, description="projection_branch: number of filters of each stage of the 2D network on the projections (VGG-style: each stage is a 3x3 convolution block and a 2x max-pool).")
    volume_pool: int = Field(0, ge=0, le=3, description="projection_branch: 2x max-pools applied to the volume before the 3D network only, so that the projections see the full resolution and the 3D network a coarser, 8x cheaper grid per pool.")
    init: Literal["he", "xavier", "default"] = Field("he", description="Weight initialisation: He (Kaiming) for ReLU-type networks, Xavier (Glorot), or PyTorch's default.")
    weights: Optional[str] = Field(None, description="Optional path of user-supplied weights (a state_dict .pt or a medclf/Lightning checkpoint) to start from, or a medclf run directory (as `medclf train --init-from`): every layer whose name and shape match is loaded from that run's kept checkpoint (best.ckpt, else last.ckpt) and the network gets a new head for this task's classes.")


class EarlyStoppingConfig(_Section):
    """Stop training when the validation metric stops improving (planned off for classification, which keeps the last weights: train.keep_weights)."""

    enabled: bool = Field(True, description="Stop when the monitored validation metric has not improved for `patience` epochs.")
    patience: int = Field(25, ge=1, description="Epochs without improvement before stopping.")
    min_delta: float = Field(0.0, ge=0, description="Smallest change that counts as an improvement.")


class TrainConfig(_Section):
    """How the weights are learned: optimiser, learning rate and its schedule, batch size, epochs, loss."""

    optimizer: Literal["adam", "adamw", "sgd", "rmsprop"] = Field("adamw", description="Optimiser, the rule that updates the weights from the gradients. adamw (default): Adam with decoupled weight decay, works with little tuning; adam; sgd: with momentum, often generalises slightly better but needs a tuned learning rate (about 0.01-0.1); rmsprop.")
    lr: Union[Annotated[float, Gt(0), Le(10)], Literal["auto"]] = Field(3e-3, description="Peak learning rate: how big a step the optimiser takes on each update. Too high and the loss jumps around or becomes NaN; too low and training crawls and may stop early without learning. Typical values: 1e-3 to 3e-3 for Adam/AdamW, 0.01 to 0.1 for SGD; lower it (e.g. 3e-4) when starting from pretrained weights. 'auto': before training, run the LR range test of `medclf sanity` (Smith 2017, Lightning's lr_find) on a seeded subset of the training split and use its suggestion, clamped to a sane range (the planned default when the test fails); the run's config.yaml then stores the chosen number, so the run repeats, and lr_range_test.png shows the curve.")
    weight_decay: float = Field(1e-4, ge=0, description="Weight decay: pulls every weight a little towards zero at each step (an L2 penalty, decoupled from the gradient for AdamW), which discourages the large weights of an overfitted model. 1e-4 to 1e-2 is typical; raise it when the model overfits.")
    momentum: float = Field(0.9, ge=0, lt=1, description="Momentum for SGD and RMSprop: each step keeps this fraction of the previous step, which smooths noisy gradients and speeds progress along consistent directions. 0.9 is the standard value; ignored by Adam/AdamW (they have their own).")
    nesterov: bool = Field(True, description="Nesterov momentum for SGD.")
    batch_size: int = Field(32, ge=1, description="Images per training step: the gradient is averaged over a batch. Larger batches give smoother gradients and faster epochs on a GPU but need more memory and often a larger learning rate; smaller batches add noise that can help generalisation. Lower it if you run out of memory. Planned from the training set size (8 to 64).")
    max_epochs: int = Field(60, ge=1, description="Upper bound on epochs, i.e. passes over the whole training split. Training may stop earlier (early stopping); with train.keep_weights=best the best checkpoint by the validation metric is kept. The learning-rate schedule is laid out over this many epochs.")
    schedule: Literal["none", "step", "cosine", "plateau", "onecycle"] = Field("onecycle", description="How the learning rate changes during training. onecycle (default): warm up to train.lr, then anneal to almost zero; cosine: warm-up then cosine decay; step: multiply by gamma every step_size epochs; plateau: multiply by gamma when the validation loss stalls; none: constant.")
    warmup_epochs: float = Field(3.0, ge=0, description="Linear warm-up, epochs (cosine and onecycle).")
    step_size: int = Field(20, ge=1, description="'step' schedule: epochs between decays.")
    gamma: float = Field(0.1, gt=0, le=1, description="'step' and 'plateau' schedules: decay factor.")
    loss: Literal["cross_entropy", "bce", "mse", "l1", "huber"] = Field("cross_entropy", description="Loss function. cross_entropy: between the predicted class probabilities and the true class (weighted by class_weights; classification). bce: binary cross-entropy with logits, one sigmoid per finding, with per-finding positive weights (train.class_weights; multilabel). Regression, on the standardised target: l1 (absolute error; planned: it optimises the mean absolute error that regression runs are judged and checkpointed by, and gave a lower validation MAE than huber on generated data), mse (squared error) or huber (squared below one training standard deviation, absolute above). Planned from data.task.")
    class_weights: Union[Literal["auto", "none"], list[float]] = Field("auto", description="Weights of the classes in the loss. 'auto': inversely proportional to the training class counts (scikit-learn's balanced rule), so that a rare class counts as much as a common one and the model cannot score well by always predicting the majority; no weights when train.sampler is 'balanced' (the batches are balanced already); 'none': every image counts the same; or a list of one weight per class (in class-name order). Multilabel: the positive weight of each finding in the binary cross-entropy ('auto': negatives / positives in training, clamped to 0.1-100; 'none', planned: ones; or a list, one per finding).")
    sampler: Literal["shuffle", "balanced"] = Field("shuffle", description="Order of the training images in an epoch. shuffle: each image once, in random order; balanced: as many draws as images, with replacement, every class equally likely (PyTorch's WeightedRandomSampler rule), so that the rare class is seen often, in varied batches, instead of being up-weighted in the loss. Planned 'balanced' when the largest training class is at least twice the smallest.")
    label_smoothing: float = Field(0.05, ge=0, lt=1, description="Label smoothing of the cross-entropy: the target is 1 - label_smoothing for the true class instead of 1, which discourages over-confident predictions and helps with a few mislabelled images.")
    mixup_alpha: float = Field(0.0, ge=0, le=10, description="Classification: mixup (Zhang et al. 2018, mixup: Beyond Empirical Risk Minimization): each training batch is replaced by convex combinations of its images with those of a shuffled copy, weights drawn per image from Beta(alpha, alpha), and the loss is the same combination of the two images' cross-entropies. It smooths the decision boundary between classes and can help small training sets; 0.2-0.4 is usual. 0: off (the default: on covid19-xray, alpha 0.2 did not raise the out-of-fold ROC AUC; see the Benchmarks page). Its random numbers are drawn from (seed, epoch), so a resumed run repeats them.")
    output_prior: Literal["balanced", "training"] = Field("balanced", description="Class prior that the predicted probabilities assume. balanced: as if every class were equally common, which is what balanced batches or 'auto' class weights train for; the predicted class (arg-max) then maximises balanced accuracy, whatever the prevalence. training: the class frequencies of the training split: after training, the logits are shifted by log(training prior) - log(trained-for prior) (post-hoc logit adjustment, Saerens et al. 2002, Menon et al. 2021), so the probabilities are calibrated for that prevalence and the arg-max maximises accuracy at it. Planned 'training' when the imbalance is mild (largest class under 4x the smallest: the training split then likely reflects the prevalence), 'balanced' for stronger imbalance (curated or reduced sets, whose prevalence the model will not meet). Sensitivity and specificity at the validation-chosen threshold are reported either way.")
    output_bias: Literal["none", "validation"] = Field("none", description="validation: after training, fit a per-class logit bias on the validation split by likelihood (the bias of bias-corrected calibration, Alexandari et al. 2020), converted to train.output_prior, and keep it only when a likelihood-ratio test (p < 0.05) shows that the network did not learn the prior it was trained for (e.g. a seed whose arg-max calls most validation images positive); it is folded into the last layer like the output prior, and test_metrics.json reports the test. none: no bias. One-model classification runs only (the k-fold ensemble chooses its threshold on out-of-fold predictions). Planned 'validation' for one-model classification.")
    clean_bn_statistics: bool = Field(True, description="Before every validation, re-estimate the batch-norm running statistics on 512 un-augmented training images drawn as the training batches are (class-balanced with the balanced sampler; torch.optim.swa_utils.update_bn), so evaluation normalises with current statistics of clean images rather than lagging averages over augmented batches (which can put most images on one side of the decision at a good ROC AUC). Only with augmentation on and a network with batch norm; training itself is unchanged. Planned on, except with a weight average (ema_epochs > 0: small images, volumes), whose averaged statistics do not lag.")
    ema_epochs: float = Field(0.0, ge=0, description="Keep an exponential moving average (EMA) of the weights over about this many epochs and validate, checkpoint and evaluate the averaged weights: smoother validation curves and a more reliable best checkpoint on small validation splits (0: off).")
    folds: int = Field(0, ge=0, le=20, description="Small-data protocol (nnU-Net's 5-fold cross-validation with the fold models ensembled): with k >= 2, the training and validation images are pooled and split into k stratified folds (patients, and exact or near copies that the inspection finds, never in two folds); k models are trained, each validated on the fold it did not see, so every image validates once (out-of-fold predictions). The operating threshold and temperature are chosen on the out-of-fold predictions, and the run predicts with the average of the k models' probabilities. 0 or 1: one model on one train/validation split. Planned 5 for small training sets.")
    fold_workers: int = Field(0, ge=0, le=64, description="k-fold protocol on a CPU: fold models trained at the same time, each in its own process with an equal share of the cores. A small network keeps two threads only partly busy (the Python work of every step runs on one), so two one-thread processes train more images per second than one two-thread process. 0 (auto): as many as there are cores, at most the folds left to train; 1: one fold after the other. Training on a GPU, in a DDP run, or with callbacks (tune's pruning) trains one fold after the other.")
    time_budget_s: Optional[float] = Field(None, gt=0, description="Planned training time of the run, seconds (all folds together) on a 2-core CPU: the plan sizes train.max_epochs to it from a cost estimate per image and pixel, and train prints the planned time before it starts. null: train.max_epochs as given.")
    freeze_epochs: int = Field(0, ge=0, description="Fine-tuning (model.weights or --init-from): train only the head (and batch-norm layers) for this many epochs with the backbone frozen, then everything (Lightning's BaseFinetuning). 0: no frozen phase.")
    backbone_lr_scale: float = Field(1.0, gt=0, le=1, description="Fine-tuning: the backbone's learning rate is train.lr times this (discriminative learning rates, as in ULMFiT/fastai); the head gets train.lr. 1: one learning rate for all.")
    gradient_clip: Optional[float] = Field(5.0, gt=0, description="Clip the global gradient norm to this value (None: off).")
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    check_val_every_n_epoch: int = Field(1, ge=1, description="Validate every n-th epoch (Lightning's check_val_every_n_epoch), and always after the last epoch: fewer points on the validation curves of metrics.csv, in exchange for less time spent validating. Planned 4 for the k-fold protocol, whose fold models keep their last weights whatever the validation says (their curves are for reading only); 1 otherwise. Early stopping's patience counts validations, not epochs.")
    keep_weights: Literal["best", "last"] = Field("best", description="The weights a one-model run is evaluated, exported and served with. best: the epoch with the best `monitor` figure on the validation split (checkpoints/best.ckpt); last: the weights after the last epoch (checkpoints/last.ckpt, no best.ckpt is written), as the k-fold protocol keeps for its fold models. Planned 'last' for classification, with early stopping off: an epoch picked on a validation split is partly picked for its luck on those images, and the validation split then stays an unbiased check of the model it fits the output bias and threshold for.")
    monitor: Literal["val_roc_auc", "val_loss", "val_accuracy", "val_balanced_accuracy", "val_map", "val_mae", "val_r2"] = Field("val_roc_auc", description="Validation metric that picks the best checkpoint (train.keep_weights=best) and drives early stopping (ties broken by val_loss). Multilabel: val_roc_auc is the macro ROC AUC over findings and val_map the mean average precision (planned); regression: val_mae (planned; mean absolute error in target units) or val_r2.")

    @field_validator("lr", mode="before")
    @classmethod
    def _number_or_auto(cls, value):
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError("must be a number > 0 and <= 10, or 'auto'")
        try:
            number = float(value)
        except ValueError:
            raise ValueError("must be a number > 0 and <= 10, or 'auto'") from None
        if not 0 < number <= 10:
            raise ValueError("must be > 0 and <= 10 (or 'auto')")
        return number


class TrainerConfig(_Section):
    """Where training runs (CPU, GPU, several devices or machines) and at what numeric precision (passed to Lightning's Trainer)."""

    accelerator: str = Field("auto", description="Lightning accelerator: auto, cpu, gpu.")
    devices: Union[int, str] = Field("auto", description="Number of devices (GPUs, or CPU processes with strategy ddp), or 'auto'.")
    strategy: str = Field("auto", description="Lightning strategy: auto, ddp (one process per device, gradients averaged), ... See Lightning's documentation for multi-GPU and multi-node training.")
    num_nodes: int = Field(1, ge=1, description="Machines taking part in training.")
    precision: str = Field("32-true", description="Lightning precision: 32-true, 16-mixed, bf16-mixed.")
    deterministic: bool = Field(False, description="Deterministic algorithms (bitwise repeatable on CPU, slower on GPU).")


class EvalConfig(_Section):
    """How the model is evaluated on the test split."""

    batch_size: int = Field(64, ge=1, description="Images per evaluation step (only memory and speed depend on it, never the results).")
    bootstrap: int = Field(1000, ge=0, description="Bootstrap resamples of the test split for the 95 % confidence intervals of ROC AUC and balanced accuracy (0: off); seeded by `seed`.")
    bootstrap_method: Literal["percentile", "bca"] = Field("percentile", description="Confidence intervals of the bootstrap (scipy.stats.bootstrap): percentile, or bias-corrected and accelerated (bca; Efron 1987), which is more accurate for skewed statistics such as an AUC near 1.")
    threshold: Union[Literal["youden", "target_sensitivity"], float] = Field("youden", description="Binary tasks: operating threshold on the positive-class probability, chosen on the validation split ('youden': max sensitivity + specificity - 1, the midpoint of tied maxima; 'target_sensitivity': the highest threshold reaching eval.target_sensitivity) or a fixed number; reported beside 0.5.")
    target_sensitivity: float = Field(0.9, gt=0, le=1, description="Sensitivity the 'target_sensitivity' threshold must reach on the validation split.")
    positive_class: Optional[str] = Field(None, description="Binary tasks: name of the positive class (default: the second class in sorted order).")
    calibration_bins: int = Field(15, ge=2, le=100, description="Equal-width confidence bins of the expected/maximum calibration error and the reliability diagram.")
    temperature_scaling: bool = Field(False, description="Fit a softmax temperature on the validation split (Guo et al. 2017) and report calibration before and after.")
    tta: bool = Field(False, description="Test-time augmentation: also predict flipped copies (every combination of the axes that the training augmentation flips: 2 views of a 2D image with left-right flips, 8 of a volume flipped along all three axes) and slightly shifted copies, and average the probabilities. These averages are then the predictions: the test metrics, the operating threshold (chosen on validation views alike) and `medclf predict` use them; the one-pass metrics are reported beside (tta.without_tta). Planned on for volumes.")
    tta_shift: float = Field(0.03, ge=0, lt=0.5, description="Shift of the TTA copies as a fraction of the image size.")
    drop_duplicates: bool = Field(False, description="Drop validation/test images that duplicate (exactly or nearly) training images from the evaluation (metrics with them are reported too).")


class DiagnosticsConfig(_Section):
    """Optional records of what happens inside the network during training (off by default: they cost time)."""

    enabled: bool = Field(False, description="Record training diagnostics (per-layer weight/gradient/activation histograms, dead ReLU units, global gradient norm) into diagnostics/ and TensorBoard; off by default because it costs time.")
    every_n_steps: int = Field(25, ge=1, description="Record histograms and dead ReLU units every N training steps (the gradient norm is recorded every step).")
    max_layers: int = Field(12, ge=0, description="Layers (convolutions and linear layers, evenly spread from first to last) whose histograms are recorded; 0: all.")
    bins: int = Field(50, ge=4, le=1000, description="Histogram bins.")
    images: bool = Field(True, description="Draw a PNG per recorded step, a GIF per kind (weights, gradients, activations) and a summary figure at the end of training.")
    dead_relu_threshold: float = Field(0.5, gt=0, le=1, description="Warn when more than this fraction of a ReLU layer's units (channels) output zero for a whole batch.")
    grad_norm_explode: float = Field(1000.0, gt=0, description="Warn (exploding gradients) when the global gradient norm, before clipping, exceeds this.")
    grad_norm_vanish: float = Field(1e-7, ge=0, description="Warn (vanishing gradients) when the global gradient norm falls below this.")


class ExplainConfig(_Section):
    """Saliency maps (Grad-CAM) of `medclf explain`, of the gallery after evaluation, and of the web service."""

    method: Literal["gradcam", "gradcampp", "occlusion"] = Field("gradcam", description="Saliency method of the gallery and of `medclf explain`: Grad-CAM, Grad-CAM++ (MONAI) or occlusion sensitivity (slower).")
    target_layer: Optional[str] = Field(None, description="Module name whose activations Grad-CAM uses (None: the last convolutional block).")
    gallery_size: int = Field(4, ge=0, le=50, description="Most confident correct and most confident wrong test predictions shown with their heatmaps after evaluation (0: no gallery).")


class Config(_Section):
    """The whole configuration of a run; every section has complete defaults."""

    seed: int = Field(42, description="Seed of every random number generator (splits, initialisation, augmentation).")
    data: DataConfig = DataConfig()
    preprocess: PreprocessConfig = PreprocessConfig()
    augment: AugmentConfig = AugmentConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    trainer: TrainerConfig = TrainerConfig()
    eval: EvalConfig = EvalConfig()
    diagnostics: DiagnosticsConfig = DiagnosticsConfig()
    explain: ExplainConfig = ExplainConfig()

    def to_dict(self) -> dict:
        """The resolved tree as plain Python types (what ``config.yaml`` stores)."""
        return self.model_dump(mode="json")


# ---------------------------------------------------------------------------------------
def deep_merge(base: dict, update: dict) -> dict:
    """Return ``base`` with ``update`` merged in recursively (``update`` wins)."""
    merged = copy.deepcopy(base)
    for key, value in (update or {}).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def parse_overrides(pairs: list[str] | None) -> dict:
    """Turn ``["train.lr=3e-4", "model.filters=[16,32]"]`` into a nested dict.

    Values are parsed as YAML (numbers, booleans, lists); a bad pair raises ConfigError.
    """
    tree: dict = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" as a string
            try:
                value = float(value)
            except ValueError:
                pass
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: {part} is given a value and sub-keys")
        node[parts[-1]] = value
    return tree


def load_yaml(path: str | os.PathLike) -> dict:
    """Read a YAML config file; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    return data


def validate(tree: dict) -> Config:
    """Validate a nested dict into a :class:`Config`.

    Raises:
        ConfigError: naming each bad key, its value and what is allowed.
    """
    try:
        return Config.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, tree)) from None


def format_validation_error(err: ValidationError, tree: dict) -> str:
    lines = ["invalid configuration:"]
    for item in err.errors():
        key = ".".join(str(p) for p in item["loc"])
        if item["type"] == "extra_forbidden":
            section = _section_for(item["loc"][:-1])
            allowed = ", ".join(section.model_fields) if section else ""
            lines.append(f"  {key}: unknown key; allowed here: {allowed}")
        else:
            value = item.get("input")
            lines.append(f"  {key}: {item['msg']} (got {value!r})")
    return "\n".join(lines)


def _section_for(loc) -> type[BaseModel] | None:
    """The model that holds the key at ``loc``; follows lists of tagged models
    (``preprocess.steps.0.opening``) through their ``name`` tag."""
    model: type[BaseModel] = Config
    candidates: list[type[BaseModel]] | None = None
    for part in loc:
        if candidates is not None:  # inside a list of tagged models: skip the index, pick by tag
            if isinstance(part, int):
                continue
            model = next((m for m in candidates if _tag(m) == part), None)
            candidates = None
            if model is None:
                return None
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        else:
            candidates = _models_in(annotation)
            if not candidates:
                return None
    return model if candidates is None else None


def _models_in(annotation) -> list[type[BaseModel]]:
    """Pydantic models inside a type annotation such as ``list[Annotated[Union[A, B], ...]]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models_in(arg)]


def _tag(model: type[BaseModel]):
    field = model.model_fields.get("name")
    args = get_args(field.annotation) if field is not None else ()
    return args[0] if len(args) == 1 else None


def user_settings(config: "str | os.PathLike | dict | Config | None", overrides) -> dict:
    """The user's settings (YAML file, dict or Config) with ``--set`` overrides (a list of
    ``key=value`` strings or a nested dict) merged on top, not yet validated.

    Raises:
        ConfigError: an unreadable YAML file or a malformed override.
    """
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
