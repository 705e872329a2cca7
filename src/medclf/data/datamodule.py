"""In-memory datasets of preprocessed arrays and the Lightning DataModule around them."""
from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .augment import BatchAugmentation, build_augmentation


class ArrayDataset(Dataset):
    """Preprocessed images with class indices; augmentation is applied per item.

    Args:
        images: float32 tensor ``(N, C, H, W)`` or ``(N, C, D, H, W)``.
        labels: int64 tensor ``(N,)`` of class indices.
        transform: a callable on one ``(C, ...)`` tensor (training augmentation) or None.
        seed: when given with a MONAI ``Randomizable`` transform, the transform's random
            state is set from ``(seed, epoch, index)`` before each item, so the augmentation
            of an item depends on nothing else (not on prefetching, re-iteration, worker
            processes, or whether the run was resumed).
        epoch: the epoch this dataset serves (see ``seed``).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform=None,
                 seed: int | None = None, epoch: int = 0):
        self.images = images
        self.labels = labels
        self.transform = transform
        self.seed = seed
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        image = self.images[index]
        if self.transform is not None:
            if self.seed is not None and hasattr(self.transform, "set_random_state"):
                self.transform.set_random_state(seed=item_seed(self.seed, self.epoch, index))
            image = torch.as_tensor(self.transform(image)).float()
        return image, self.labels[index]


def item_seed(seed: int, epoch: int, index: int, stream: int = 0) -> int:
    """A 32-bit seed for item ``index`` of ``epoch`` (NumPy SeedSequence); ``stream`` 0 is the
    augmentation, 1 the shuffling, 2 the loader's generator."""
    return int(np.random.SeedSequence([seed % 2 ** 64, epoch, stream, index]).generate_state(1)[0])


class EpochSampler(torch.utils.data.Sampler):
    """The training order of one epoch, the same every time it is iterated.

    Without ``weights``: a shuffle of ``0..n-1`` (torch.randperm). With ``weights``: ``n``
    indices drawn with replacement in proportion to them (torch.multinomial, as PyTorch's
    ``WeightedRandomSampler``), e.g. inverse class frequencies for class-balanced batches
    (``train.sampler: balanced``). Either way the order is a function of ``(seed, epoch)``
    only, so Lightning's prefetching and re-iteration of a loader, and resuming a run,
    always see the same order for the same epoch.

    Args:
        n: number of items per epoch.
        seed: the run's seed.
        epoch: the epoch this order is for.
        weights: float tensor ``(n,)`` of non-negative sampling weights, or None.
    """

    def __init__(self, n: int, seed: int, epoch: int, weights: torch.Tensor | None = None):
        self.n, self.seed, self.epoch, self.weights = n, seed, epoch, weights

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        generator = torch.Generator().manual_seed(item_seed(self.seed, self.epoch, 0, stream=1))
        if self.weights is None:
            return iter(torch.randperm(self.n, generator=generator).tolist())
        return iter(torch.multinomial(self.weights, self.n, replacement=True, generator=generator).tolist())


def balanced_weights(labels: torch.Tensor) -> torch.Tensor:
    """Per-item sampling weights ``(N,)`` from class indices ``(N,)``: 1 / (count of the
    item's class), so that every class is drawn equally often on average."""
    counts = torch.bincount(labels).float()
    return (1.0 / counts.clamp(min=1))[labels]


class ImageDataModule(L.LightningDataModule):
    """Train/val/test loaders over preprocessed arrays.

    Args:
        splits: ``{split: (images, labels)}`` with images float32 ``(N, C, *spatial)`` and
            labels int64 ``(N,)``.
        config: the resolved configuration (batch sizes, augmentation, seed, workers).
    """

    def __init__(self, splits: dict[str, tuple[torch.Tensor, torch.Tensor]], config):
        super().__init__()
        self.splits = splits
        self.config = config
        augment = config.augment
        self.batch_augmentation = BatchAugmentation(augment, config.model.spatial_dims, config.seed) \
            if augment.enabled and augment.batched else None
        self._augment_epoch = None

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Batched augmentation of training batches (``augment.batched``); its generator is
        re-seeded from ``(seed, epoch)`` at each epoch, so a resumed run repeats it exactly."""
        trainer = getattr(self, "trainer", None)
        if self.batch_augmentation is not None and trainer is not None and trainer.training:
            if self._augment_epoch != trainer.current_epoch:
                self._augment_epoch = trainer.current_epoch
                self.batch_augmentation.generator.manual_seed(
                    item_seed(self.config.seed, trainer.current_epoch, 0, stream=3))
            images, labels = batch
            with torch.no_grad():
                batch = (self.batch_augmentation(images), labels)
        return batch

    def _loader(self, split: str, train: bool) -> DataLoader:
        images, labels = self.splits[split]
        cfg = self.config
        transform = None
        if train and not cfg.augment.batched:
            transform = build_augmentation(cfg.augment, cfg.model.spatial_dims,
                                           list(images.shape[2:]), cfg.seed)
        # the Trainer rebuilds the training loader every epoch; shuffling and augmentation
        # are functions of (seed, epoch, index), so a resumed run repeats them exactly
        epoch = self.trainer.current_epoch if train and self.trainer is not None else 0
        weights = balanced_weights(labels) if train and cfg.train.sampler == "balanced" else None
        generator = torch.Generator().manual_seed(item_seed(cfg.seed, epoch, 0, stream=2))
        return DataLoader(ArrayDataset(images, labels, transform, seed=cfg.seed, epoch=epoch),
                          batch_size=cfg.train.batch_size if train else cfg.eval.batch_size,
                          sampler=EpochSampler(len(labels), cfg.seed, epoch, weights) if train else None,
                          drop_last=train and len(labels) > cfg.train.batch_size,
                          num_workers=cfg.data.num_workers, generator=generator,
                          persistent_workers=False)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)
