"""In-memory datasets of preprocessed arrays and the Lightning DataModule around them."""
from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .augment import build_augmentation


class ArrayDataset(Dataset):
    """Preprocessed images with class indices; augmentation is applied per item.

    Args:
        images: float32 tensor ``(N, C, H, W)`` or ``(N, C, D, H, W)``.
        labels: int64 tensor ``(N,)`` of class indices.
        transform: a callable on one ``(C, ...)`` tensor (training augmentation) or None.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform=None):
        self.images = images
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        image = self.images[index]
        if self.transform is not None:
            image = torch.as_tensor(self.transform(image)).float()
        return image, self.labels[index]


def stack(arrays: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(arrays).astype(np.float32, copy=False))


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

    def _loader(self, split: str, train: bool) -> DataLoader:
        images, labels = self.splits[split]
        cfg = self.config
        transform = None
        if train:
            transform = build_augmentation(cfg.augment, cfg.model.spatial_dims,
                                           list(images.shape[2:]), cfg.seed)
        generator = torch.Generator().manual_seed(cfg.seed)
        loader = DataLoader(ArrayDataset(images, labels, transform),
                            batch_size=cfg.train.batch_size if train else cfg.eval.batch_size,
                            shuffle=train, drop_last=train and len(labels) > cfg.train.batch_size,
                            num_workers=cfg.data.num_workers, generator=generator,
                            persistent_workers=cfg.data.num_workers > 0)
        if train and self.trainer is not None:
            # Lightning fetches the first batch before on_train_epoch_start: seed it for the
            # epoch it belongs to (a resumed run starts at a later epoch)
            from ..training.reliability import seed_loader
            seed_loader(loader, cfg.seed, self.trainer.current_epoch)
        return loader

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)
