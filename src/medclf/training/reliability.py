"""What makes a run survive being killed: atomic checkpoints and per-epoch random state.

* :class:`AtomicCheckpointIO` writes every checkpoint to a temporary file in the same
  folder, fsyncs it and renames it over the old one (``os.replace``, atomic on POSIX).
  Lightning 2.6's own ``TorchCheckpointIO`` stages the file in the system temp folder
  (fsspec transaction) and then *moves* it, which is a copy, not a rename, whenever /tmp
  is another file system: a kill during that copy leaves a torn ``last.ckpt``.
* :class:`EpochSeeder` makes the random state at the start of epoch ``e`` a function of
  ``(seed, e)`` only: Python's, NumPy's and torch's global generators, the training
  DataLoader's shuffling generator and the MONAI augmentation transforms' own random
  states are all re-seeded from ``numpy.random.SeedSequence([seed, e])``. A run resumed
  from the checkpoint of epoch ``e - 1`` therefore draws exactly the random numbers an
  uninterrupted run draws (with ``data.num_workers=0``: worker processes keep their own
  augmentation state).
"""
from __future__ import annotations

import glob
import io
import os
import random
from pathlib import Path
from typing import Any, Optional

import lightning as L
import numpy as np
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ..io import atomic_write
from ..testing.faults import die, fault


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint writer: temporary file in the target folder, fsync, rename.

    A process killed at any moment leaves either the previous complete checkpoint or the
    new complete one, plus at most a stray ``.<name>.*.tmp`` file that
    :func:`remove_stale_temporaries` deletes on resume.
    """

    def __init__(self):
        super().__init__()
        self.saves = 0

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO does not take storage_options")
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        data = buffer.getbuffer()
        self.saves += 1
        torn = fault("checkpoint_write")
        kill_now = torn is not None and int(torn) == self.saves

        def write(tmp: str) -> None:
            with open(tmp, "wb") as handle:
                if kill_now:  # test hook: a torn write, then SIGKILL
                    handle.write(data[: len(data) // 2])
                    handle.flush()
                    os.fsync(handle.fileno())
                    die()
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())

        atomic_write(path, write)


def remove_stale_temporaries(folder: str | Path) -> list[str]:
    """Delete ``.<name>.*.tmp`` files left by a process killed during an atomic write.

    Returns the removed paths.
    """
    removed = []
    for path in glob.glob(os.path.join(glob.escape(str(folder)), "**", ".*.tmp"), recursive=True):
        try:
            os.unlink(path)
            removed.append(path)
        except OSError:
            pass
    return removed


def epoch_seeds(seed: int, epoch: int) -> list[int]:
    """Four 32-bit seeds for epoch ``epoch`` of a run seeded with ``seed`` (NumPy SeedSequence)."""
    return [int(s) for s in np.random.SeedSequence([seed, epoch]).generate_state(4)]


class EpochSeeder(L.Callback):
    """Re-seed every random generator of training at the start of each epoch from ``(seed, epoch)``.

    Covers Python ``random``, NumPy's global generator, torch's global generator (dropout,
    weight noise), the training DataLoader's ``generator`` (shuffling) and, when the
    training dataset has a MONAI ``Randomizable`` ``transform`` (a ``Compose``), that
    transform's random state (augmentation). The DataModule calls :meth:`seed_loader` when
    it builds the training loader, because Lightning fetches the first batch of a freshly
    started process before ``on_train_epoch_start``.
    """

    def __init__(self, seed: int):
        self.seed = seed

    def on_train_epoch_start(self, trainer, pl_module):
        a, b, c, d = epoch_seeds(self.seed, trainer.current_epoch)
        random.seed(a)
        np.random.seed(b)
        torch.manual_seed(c)
        loader = trainer.train_dataloader
        if loader is not None:
            seed_loader(loader, self.seed, trainer.current_epoch)


def seed_loader(loader, seed: int, epoch: int) -> None:
    """Seed a DataLoader's shuffling generator and its dataset's augmentation for ``epoch``."""
    _, _, _, d = epoch_seeds(seed, epoch)
    generator = getattr(loader, "generator", None)
    if generator is not None:
        generator.manual_seed(d)
    transform = getattr(getattr(loader, "dataset", None), "transform", None)
    if transform is not None and hasattr(transform, "set_random_state"):
        transform.set_random_state(seed=d % (2 ** 32))
