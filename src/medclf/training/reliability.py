"""What makes a run survive being killed: atomic checkpoints and per-epoch random state.

* :class:`AtomicCheckpointIO` writes every checkpoint to a temporary file in the same
  folder, fsyncs it and renames it over the old one (``os.replace``, atomic on POSIX).
  Lightning 2.6's own ``TorchCheckpointIO`` stages the file in the system temp folder
  (fsspec transaction) and then *moves* it, which is a copy, not a rename, whenever /tmp
  is another file system: a kill during that copy leaves a torn ``last.ckpt``.
* :class:`EpochSeeder` makes the random state at the start of epoch ``e`` a function of
  ``(seed, e)`` only: Python's, NumPy's and torch's global generators are re-seeded from
  ``numpy.random.SeedSequence([seed, e])``, and the DataModule derives the shuffling of
  epoch ``e`` and the augmentation of each item from ``(seed, e, index)``. A run resumed
  from the checkpoint of epoch ``e - 1`` therefore draws exactly the random numbers an
  uninterrupted run draws, whatever the number of DataLoader workers. This replaces
  saving and restoring generator states: there is no state to save.
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

    def load_checkpoint(self, path, map_location=None, weights_only: Optional[bool] = None) -> dict[str, Any]:
        """Lightning's reader (``trainer.fit(ckpt_path=...)``) with ``weights_only=True`` always:
        Lightning 2.6 passes None, which torch takes as True unless the environment sets
        ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``; a checkpoint holding code is refused either way.

        Raises:
            pickle.UnpicklingError: the file holds code or objects that are not weights.
        """
        where = {} if map_location is None else {"map_location": map_location}  # else Lightning's: the CPU
        return super().load_checkpoint(path, weights_only=True, **where)


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
    return [int(s) for s in np.random.SeedSequence([seed % 2 ** 64, epoch]).generate_state(4)]


class EpochSeeder(L.Callback):
    """Re-seed the global random generators at the start of each epoch from ``(seed, epoch)``.

    Covers Python ``random``, NumPy's global generator and torch's global generator
    (dropout). Shuffling and augmentation do not use these: the DataModule derives them from
    ``(seed, epoch, index)`` (:class:`medclf.data.datamodule.EpochSampler` and
    :class:`~medclf.data.datamodule.ArrayDataset`), because Lightning fetches an epoch's
    first batch before ``on_train_epoch_start`` and iterates a loader twice in some epochs.
    """

    def __init__(self, seed: int):
        self.seed = seed

    def on_train_epoch_start(self, trainer, pl_module):
        a, b, c, _ = epoch_seeds(self.seed, trainer.current_epoch)
        random.seed(a)
        np.random.seed(b)
        torch.manual_seed(c)

