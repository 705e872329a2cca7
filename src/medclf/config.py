"""The configuration tree: typed sections, YAML loading and ``--set key=value`` overrides.

The resolved tree (the plan from :mod:`medclf.plan`, then the user's YAML, then the
``--set`` overrides) is what a run stores as ``config.yaml``; feeding that file back with
``--config`` repeats the run.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Literal, Optional, Union, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .data.morphology import PreprocessStep
from .errors import ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    source: Optional[str] = Field(None, description="Dataset: a class-per-folder tree (with or without train/val/test folders) of images, NIfTI volumes or DICOM files/series; a CSV manifest (path,label[,split,patient_id]); a MedMNIST .npz file; or 'medmnist:NAME'.")
    val_fraction: float = Field(0.15, gt=0, lt=1, description="Share of the training images carved out (stratified, seeded) as validation when the data has no val/ folder.")
    test_fraction: float = Field(0.15, gt=0, lt=1, description="Share of the images held out as test when the data has no test/ folder.")
    on_bad_file: Literal["error", "skip"] = Field("error", description="'error': stop before training and list every unreadable file; 'skip': train without them and record them in bad_files.csv.")
    image_size: list[int] = Field([224, 224], min_length=2, max_length=3, description="Size every image is resized to, in pixels (H, W) or voxels (D, H, W).")
    in_channels: int = Field(1, ge=1, le=4, description="Channels fed to the model: 1 = grayscale (X-rays are grayscale even when stored as RGB), 3 = RGB.")
    cache: Literal["memory", "disk", "none"] = Field("memory", description="Where preprocessed images are kept so that later epochs never decode the files again.")
    cache_dir: Optional[str] = Field(None, description="Folder of the disk cache (default: ~/.cache/medclf).")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes; 0 loads in the main process (best on a 2-core CPU with cached data).")
    medmnist_root: Optional[str] = Field(None, description="Folder holding MedMNIST .npz files (NAME.npz) for 'medmnist:NAME' sources; downloads go there too (default: $MEDMNIST_ROOT, else ~/.medmnist).")
    max_pixels: int = Field(100_000_000, gt=0, description="Images with more pixels than this are rejected as decompression bombs.")


WINDOW_PRESETS = {"lung": (-600.0, 1500.0), "mediastinum": (50.0, 350.0), "brain": (40.0, 80.0),
                  "bone": (400.0, 1800.0), "soft_tissue": (50.0, 400.0)}
"""CT window presets (center, width) in Hounsfield units (Radiopaedia's usual values)."""


class PreprocessConfig(_Section):
    normalization: Literal["scale255", "minmax", "percentile", "zscore", "none"] = Field(
        "percentile", description="Intensity normalisation per image: scale255 (x / the file type's full scale, e.g. 255), minmax (to [0,1]), percentile (5th-95th percentile to [0,1], robust to burnt-in text and borders), zscore (zero mean, unit variance), none (keep the values, e.g. after windowing).")
    percentiles: tuple[float, float] = Field((5.0, 95.0), description="Lower and upper percentile of the 'percentile' normalisation.")
    steps: list[PreprocessStep] = Field([], description="Ordered scikit-image steps run on the resized image before normalisation: "
                                        "threshold (value/otsu/percentile, optionally as a mask), erosion, dilation, opening, closing "
                                        "(disk/ball radius), clahe, equalize; see medclf.data.morphology.")
    window: Union[Literal["lung", "mediastinum", "brain", "bone", "soft_tissue", "file"], list[float], None] = Field(
        None, description="Intensity window applied to DICOM/NIfTI values (Hounsfield units for CT) before normalisation, mapping center-width/2..center+width/2 to [0,1] with clipping: a preset (lung, mediastinum, brain, bone, soft_tissue), 'file' (the DICOM file's own WindowCenter/WindowWidth), [center, width], or null (no windowing).")
    spacing: Optional[list[float]] = Field(None, min_length=3, max_length=3, description="Volumes (NIfTI, DICOM series): resample to this voxel spacing in mm (per volume axis) before resizing; null keeps the file's voxel grid.")
    resize: Literal["resize", "none"] = Field("resize", description="'resize': every image/volume is resized (interpolated) to data.image_size; 'none': arrays are used at their own size, which must then be the same for all files.")

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
    enabled: bool = Field(True, description="Random augmentation of training images (never of validation or test images).")
    prob: float = Field(0.8, ge=0, le=1, description="Probability that the random affine (rotation, zoom, translation, shear) is applied to an image.")
    rotate_deg: float = Field(10.0, ge=0, le=180, description="Maximum rotation, degrees.")
    zoom: float = Field(0.1, ge=0, lt=1, description="Maximum relative zoom in or out (0.1 = 90-110 %).")
    translate: float = Field(0.06, ge=0, lt=1, description="Maximum shift as a fraction of the image size.")
    shear: float = Field(0.05, ge=0, lt=1, description="Maximum shear factor.")
    flip_prob: float = Field(0.5, ge=0, le=1, description="Probability of a left-right flip.")
    vertical_flip_prob: float = Field(0.0, ge=0, le=1, description="Probability of an up-down flip (off: anatomy has an up and a down).")
    brightness: float = Field(0.1, ge=0, le=1, description="Maximum intensity shift, in units of the normalised intensity.")
    contrast: float = Field(0.1, ge=0, le=1, description="Maximum relative intensity scaling (contrast).")
    noise_std: float = Field(0.02, ge=0, le=1, description="Standard deviation of added Gaussian noise (applied with probability 0.3).")
    depth_flip_prob: float = Field(0.0, ge=0, le=1, description="Volumes: probability of a flip along the first (depth) axis.")
    batched: bool = Field(False, description="Augment whole batches with tensor operations (medclf.data.augment.BatchAugmentation, same settings, random per sample) instead of per-image MONAI transforms: much faster for small images and volumes on a CPU.")
    rot90_prob: float = Field(0.0, ge=0, le=1, description="Probability of a random rotation by 90, 180 or 270 degrees in the plane of the last two axes (MONAI RandRotate90).")


class ModelConfig(_Section):
    name: str = Field("small_cnn", description="Network from the model registry: small_cnn, resnet18/34/50/101/152, densenet121.")
    spatial_dims: Literal[2, 3] = Field(2, description="2 for images (N, C, H, W), 3 for volumes (N, C, D, H, W).")
    filters: list[int] = Field([16, 32, 64, 128], min_length=1, description="small_cnn: output channels of each stage; each stage after the first halves the resolution.")
    blocks_per_stage: int = Field(2, ge=1, le=8, description="small_cnn: convolution blocks in each stage.")
    kernel_size: int = Field(3, ge=1, le=11, description="small_cnn: kernel size of the stage convolutions, pixels.")
    stem_kernel_size: int = Field(5, ge=1, le=11, description="small_cnn: kernel size of the first (stem) convolution.")
    stem_stride: int = Field(2, ge=1, le=4, description="small_cnn: stride of the stem; 2 halves the resolution once before the stages (cheap on large inputs).")
    stem_pool: bool = Field(True, description="small_cnn: a 2x max-pool after a strided stem (stem_stride > 1).")
    stride: int = Field(2, ge=1, le=4, description="small_cnn: stride that downsamples at the start of each stage after the first.")
    padding: Optional[int] = Field(None, ge=0, description="small_cnn: zero padding, pixels; default keeps the size ('same' for odd kernels).")
    dropout: float = Field(0.2, ge=0, lt=1, description="Dropout before the final classifier.")
    activation: Literal["relu", "leakyrelu", "elu", "gelu", "prelu"] = Field("relu", description="small_cnn: activation function.")
    norm: Literal["batch", "instance", "group", "none"] = Field("batch", description="small_cnn: normalisation layer after each convolution.")
    init: Literal["he", "xavier", "default"] = Field("he", description="Weight initialisation: He (Kaiming) for ReLU-type networks, Xavier (Glorot), or PyTorch's default.")
    weights: Optional[str] = Field(None, description="Optional path of user-supplied weights (a state_dict .pt or a medclf/Lightning checkpoint) to start from.")


class EarlyStoppingConfig(_Section):
    enabled: bool = Field(True, description="Stop when the monitored validation metric has not improved for `patience` epochs.")
    patience: int = Field(25, ge=1, description="Epochs without improvement before stopping.")
    min_delta: float = Field(0.0, ge=0, description="Smallest change that counts as an improvement.")


class TrainConfig(_Section):
    optimizer: Literal["adam", "adamw", "sgd", "rmsprop"] = Field("adamw", description="Optimiser.")
    lr: float = Field(3e-3, gt=0, le=10, description="Peak learning rate.")
    weight_decay: float = Field(1e-4, ge=0, description="L2 penalty (decoupled for AdamW).")
    momentum: float = Field(0.9, ge=0, lt=1, description="Momentum for SGD and RMSprop.")
    nesterov: bool = Field(True, description="Nesterov momentum for SGD.")
    batch_size: int = Field(32, ge=1, description="Images per training step.")
    max_epochs: int = Field(60, ge=1, description="Upper bound on passes over the training split.")
    schedule: Literal["none", "step", "cosine", "plateau", "onecycle"] = Field("onecycle", description="Learning-rate schedule.")
    warmup_epochs: float = Field(3.0, ge=0, description="Linear warm-up, epochs (cosine and onecycle).")
    step_size: int = Field(20, ge=1, description="'step' schedule: epochs between decays.")
    gamma: float = Field(0.1, gt=0, le=1, description="'step' and 'plateau' schedules: decay factor.")
    loss: Literal["cross_entropy"] = Field("cross_entropy", description="Loss function.")
    class_weights: Union[Literal["auto", "none"], list[float]] = Field("auto", description="'auto': weights inversely proportional to the training class counts; 'none'; or one weight per class.")
    label_smoothing: float = Field(0.05, ge=0, lt=1, description="Label smoothing of the cross-entropy.")
    ema_epochs: float = Field(0.0, ge=0, description="Keep an exponential moving average (EMA) of the weights over about this many epochs and validate, checkpoint and evaluate the averaged weights: smoother validation curves and a more reliable best checkpoint on small validation splits (0: off).")
    gradient_clip: Optional[float] = Field(5.0, gt=0, description="Clip the global gradient norm to this value (None: off).")
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    monitor: Literal["val_roc_auc", "val_loss", "val_accuracy", "val_balanced_accuracy"] = Field("val_roc_auc", description="Validation metric that picks the best checkpoint and drives early stopping (ties broken by val_loss).")


class TrainerConfig(_Section):
    accelerator: str = Field("auto", description="Lightning accelerator: auto, cpu, gpu.")
    devices: Union[int, str] = Field("auto", description="Number of devices, or 'auto'.")
    strategy: str = Field("auto", description="Lightning strategy: auto, ddp, ...")
    num_nodes: int = Field(1, ge=1, description="Machines taking part in training.")
    precision: str = Field("32-true", description="Lightning precision: 32-true, 16-mixed, bf16-mixed.")
    deterministic: bool = Field(False, description="Deterministic algorithms (bitwise repeatable on CPU, slower on GPU).")


class EvalConfig(_Section):
    batch_size: int = Field(64, ge=1, description="Images per evaluation step.")


class DiagnosticsConfig(_Section):
    every_n_steps: int = Field(0, ge=0, description="Record weight/gradient/activation histograms every N steps (0: off).")


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


def resolve(plan: dict | None = None, config_file: str | os.PathLike | None = None,
            overrides: list[str] | dict | None = None) -> Config:
    """Plan defaults, then the YAML file, then ``--set`` overrides, validated."""
    tree = copy.deepcopy(plan or {})
    if config_file:
        tree = deep_merge(tree, load_yaml(config_file))
    if isinstance(overrides, dict):
        tree = deep_merge(tree, overrides)
    elif overrides:
        tree = deep_merge(tree, parse_overrides(overrides))
    return validate(tree)
