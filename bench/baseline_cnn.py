"""The plain baseline CNN of the benchmark suite: the 40-line tutorial classifier, not part of medclf.

It trains on exactly the split of a medclf run: it reads that run's ``split.csv`` (columns
``path``, ``label``, ``split`` with ``split`` in ``train``/``val``/``test``; an ensemble run's
``fold`` column is ignored), trains on ``train``, keeps the epoch with the best validation
accuracy (ties: the lower validation cross-entropy) and reports validation and test accuracy,
balanced accuracy and macro ROC AUC (scikit-learn) of that epoch, as one JSON line.

The model and schedule are the textbook ones, deliberately untuned: images converted to one
grey channel (Pillow ``convert("L")``) and resized to 224x224 pixels, or kept at their native
size when their side is under 64 pixels (MedMNIST's 28x28; a ``file.npz#split/index`` path is
read from the npz with numpy); scaled to zero mean and unit variance with the training
images' mean and standard deviation; no augmentation. The network is a 3x3 convolutional stem
(stride 2 for 224 px input, 1 for small images) and four stages of one 3x3 convolution with
stride 2, batch normalisation and ReLU (16 -> 32 -> 64 -> 128 -> 256 channels), global
average pooling and a linear layer; AdamW (Loshchilov & Hutter 2019; learning rate 3e-3 at the
peak, weight decay 1e-2) with the one-cycle schedule (Smith & Topin 2019,
``torch.optim.lr_scheduler.OneCycleLR``), plain cross-entropy, batch 32, 25 epochs. Seeded
(``torch.manual_seed``, a seeded shuffling generator, no worker processes), so a run is
deterministic on one machine. Small images train on one CPU thread (PyTorch's thread pool costs more
than it saves on 28x28 convolutions), large ones on PyTorch's default.

Usage: python bench/baseline_cnn.py RUN_DIR/split.csv --seed 0 [--epochs 25]
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from sklearn.metrics import accuracy_score, balanced_accuracy_score, roc_auc_score
from torch import nn

LARGE_SIDE = 224
SMALL_SIDE = 64
BATCH = 32
EPOCHS = 25


def _npz_item(path: str, cache: dict) -> np.ndarray:
    """The image of ``/abs/file.npz#<split>/<index>`` as a uint8 array ``(H, W)`` or ``(H, W, 3)``."""
    file, _, item = path.rpartition("#")
    split, _, index = item.partition("/")
    key = (file, f"{split}_images")
    if key not in cache:  # an NpzFile decompresses the whole array at every access: once per array
        with np.load(file) as arrays:
            cache[key] = arrays[key[1]]
    return cache[key][int(index)]


def load_images(paths: list[str]) -> np.ndarray:
    """Decode every image to one grey channel, all at one size.

    Returns:
        uint8 array ``(N, S, S)``: ``S`` = 224, or the native side when every image is under
        64 pixels a side and all are of one size.

    Raises:
        ValueError: a path names an npz item that is not a 2D image.
    """
    cache: dict = {}
    pictures = []
    for path in paths:
        if "#" in path and path.split("#")[0].lower().endswith(".npz"):
            array = _npz_item(path, cache)
            if array.ndim not in (2, 3):
                raise ValueError(f"{path}: the baseline CNN is 2D; this item has shape {array.shape}")
            pictures.append(Image.fromarray(array))
        else:
            picture = Image.open(path)
            picture.draft("L", (LARGE_SIDE, LARGE_SIDE))  # JPEG: decode at a reduced scale, >= 224 px
            pictures.append(picture)
    sizes = {p.size for p in pictures}
    small = len(sizes) == 1 and max(next(iter(sizes))) < SMALL_SIDE
    side = max(next(iter(sizes))) if small else LARGE_SIDE
    return np.stack([np.asarray(p.convert("L").resize((side, side), Image.BILINEAR)) for p in pictures])


def make_network(num_classes: int, side: int) -> nn.Sequential:
    """Stem + 4 stages of conv-BN-ReLU + global average pooling + linear; input ``(N, 1, S, S)``."""
    def stage(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]

    layers = stage(1, 16, 2 if side >= SMALL_SIDE else 1)
    for c_in, c_out in ((16, 32), (32, 64), (64, 128), (128, 256)):
        layers += stage(c_in, c_out, 2)
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(256, num_classes))


def figures(labels: np.ndarray, probabilities: np.ndarray) -> dict:
    """Accuracy, balanced accuracy and macro one-vs-rest ROC AUC (None when a class is missing)."""
    predicted = probabilities.argmax(1)
    try:
        if probabilities.shape[1] == 2:
            auc = roc_auc_score(labels, probabilities[:, 1])
        else:
            auc = roc_auc_score(labels, probabilities, multi_class="ovr", average="macro",
                                labels=list(range(probabilities.shape[1])))
    except ValueError:
        auc = None
    return {"n": int(len(labels)), "accuracy": float(accuracy_score(labels, predicted)),
            "balanced_accuracy": float(balanced_accuracy_score(labels, predicted)),
            "roc_auc": None if auc is None else float(auc)}


def normalise(images: torch.Tensor, scale: tuple[float, float]) -> torch.Tensor:
    """uint8 images ``(N, 1, S, S)`` to float32 with the training mean and standard deviation ``scale``."""
    return (images.float() - scale[0]) / scale[1]


@torch.no_grad()
def predict(network: nn.Module, images: torch.Tensor, scale: tuple[float, float]) -> np.ndarray:
    """Softmax probabilities ``(N, K)`` of uint8 images ``(N, 1, S, S)``."""
    network.eval()
    return torch.cat([network(normalise(images[i:i + 128], scale)).softmax(1)
                      for i in range(0, len(images), 128)]).numpy()


def run_baseline(split_csv: str | Path, seed: int, epochs: int = EPOCHS) -> dict:
    """Train the baseline on the split of ``split_csv`` and return its figures.

    Returns:
        ``{"validation": {n, accuracy, balanced_accuracy, roc_auc} or None (no ``val`` rows),
        "test": {...}, "best_epoch": int (1-based), "epochs": int, "image_size": int,
        "n_train": int, "classes": [str]}``.

    Raises:
        ValueError: ``split_csv`` lacks a column, or has no ``train`` or no ``test`` row.
    """
    frame = pd.read_csv(split_csv, dtype={"path": str, "label": str, "split": str})
    missing = {"path", "label", "split"} - set(frame.columns)
    if missing:
        raise ValueError(f"{split_csv}: missing column(s) {sorted(missing)}")
    for needed in ("train", "test"):
        if not (frame.split == needed).any():
            raise ValueError(f"{split_csv}: no row with split={needed!r}")
    classes = sorted(frame.label.unique())
    torch.manual_seed(seed)
    images = load_images(frame.path.tolist())
    labels = frame.label.map({c: i for i, c in enumerate(classes)}).to_numpy()
    train = (frame.split == "train").to_numpy()
    scale = (float(images[train].mean()), float(images[train].std()) + 1e-6)
    tensors = {part: (torch.from_numpy(images[mask]).unsqueeze(1), torch.from_numpy(labels[mask]).long())
               for part in ("train", "val", "test") if (mask := (frame.split == part).to_numpy()).any()}
    threads = torch.get_num_threads()
    if images.shape[-1] < SMALL_SIDE:  # on 28x28 inputs a second thread costs more than it saves (measured 6x)
        torch.set_num_threads(1)
    try:
        found = _train(tensors, scale, len(classes), images.shape[-1], seed, epochs)
    finally:
        torch.set_num_threads(threads)
    return {**found, "epochs": epochs, "image_size": int(images.shape[-1]), "n_train": int(len(tensors["train"][1])),
            "classes": classes}


def _train(tensors: dict, scale: tuple[float, float], num_classes: int, side: int, seed: int, epochs: int) -> dict:
    """Train, keep the best validation epoch, and measure it on validation and test.

    ``tensors``: ``{part: (uint8 images (N, 1, S, S), labels (N,))}``; ``scale``: the training
    images' mean and standard deviation, grey levels."""
    x, y = tensors["train"]
    network = make_network(num_classes, side)
    optimiser = torch.optim.AdamW(network.parameters(), lr=3e-3, weight_decay=1e-2)
    steps = math.ceil(len(y) / BATCH)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=3e-3, total_steps=epochs * steps)
    shuffle = torch.Generator().manual_seed(seed)
    best, best_key = (copy.deepcopy(network.state_dict()), 0), None
    for epoch in range(1, epochs + 1):
        network.train()
        for batch in torch.randperm(len(y), generator=shuffle).split(BATCH):
            optimiser.zero_grad()
            nn.functional.cross_entropy(network(normalise(x[batch], scale)), y[batch]).backward()
            optimiser.step()
            schedule.step()
        if "val" in tensors:
            probabilities = predict(network, tensors["val"][0], scale)
            val_y = tensors["val"][1].numpy()
            loss = float(nn.functional.nll_loss(torch.from_numpy(np.log(probabilities + 1e-12)), tensors["val"][1]))
            key = (accuracy_score(val_y, probabilities.argmax(1)), -loss)
            if best_key is None or key > best_key:
                best, best_key = (copy.deepcopy(network.state_dict()), epoch), key
        else:  # no validation split: the last epoch
            best = (copy.deepcopy(network.state_dict()), epoch)
    network.load_state_dict(best[0])
    result = {part: figures(tensors[part][1].numpy(), predict(network, tensors[part][0], scale)) if part in tensors
              else None
              for part in ("val", "test")}
    return {"validation": result["val"], "test": result["test"], "best_epoch": best[1]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("split_csv", help="split.csv of a medclf run directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    args = parser.parse_args(argv)
    print(json.dumps(run_baseline(args.split_csv, args.seed, args.epochs)))


if __name__ == "__main__":
    main(sys.argv[1:])
