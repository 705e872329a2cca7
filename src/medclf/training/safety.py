"""Checks before training (output folder writable, enough free disk) and advice on out-of-memory."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import torch

from ..errors import MedclfError, RunDirError

MARGIN_BYTES = 64 * 2 ** 20  # plots, CSV files, TensorBoard events


class OutOfMemory(MedclfError):
    """Training or evaluation ran out of (GPU or CPU) memory."""


def check_writable(folder: str | Path) -> None:
    """Create and delete a file in ``folder``.

    Raises:
        RunDirError: the folder cannot be written (permissions, read-only file system).
    """
    folder = Path(folder)
    try:
        fd, tmp = tempfile.mkstemp(prefix=".medclf-write-test.", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as err:
        raise RunDirError(f"cannot write to the output folder {folder}: {err.strerror or err}") from None


def checkpoint_bytes(model: torch.nn.Module) -> int:
    """Upper estimate of one checkpoint's size: weights plus two optimiser moments (Adam), bytes."""
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    return 3 * params + buffers + 2 ** 20


def required_bytes(model: torch.nn.Module, n_images: int, image_shape, disk_cache: bool) -> int:
    """Disk space a run needs: best and last checkpoint (and a temporary copy while one is
    rewritten), the disk cache of preprocessed float32 images if used, and a margin."""
    need = 3 * checkpoint_bytes(model) + MARGIN_BYTES
    if disk_cache:
        need += n_images * int(torch.tensor(list(image_shape)).prod()) * 4
    return need


def check_free_space(folder: str | Path, need: int) -> None:
    """Raise before training when ``folder``'s file system has less than ``need`` bytes free.

    Raises:
        RunDirError: naming the folder, what is free and what is needed (in MB).
    """
    free = shutil.disk_usage(folder).free
    if free < need:
        raise RunDirError(f"not enough free disk space in {folder}: {free / 2**20:.0f} MB free, "
                          f"the run needs about {need / 2**20:.0f} MB (checkpoints, cache, plots). "
                          "Free some space or choose another folder with --out.")


def is_out_of_memory(err: BaseException) -> bool:
    """True for torch's OutOfMemoryError, Python's MemoryError and the RuntimeErrors
    that CPU and CUDA allocators raise when an allocation fails."""
    if isinstance(err, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and ("out of memory" in text or "failed to allocate" in text
                                              or "can't allocate memory" in text)


def out_of_memory_advice(cfg, stage: str, err: BaseException) -> OutOfMemory:
    """An :class:`OutOfMemory` error saying which settings to lower."""
    detail = (str(err).splitlines() or [""])[0][:200]
    size = "x".join(str(s) for s in cfg.data.image_size)
    smaller = "x".join(str(max(16, s // 2)) for s in cfg.data.image_size)
    return OutOfMemory(
        f"ran out of memory during {stage} ({type(err).__name__}{': ' + detail if detail else ''}). "
        f"Try a smaller batch (--set train.batch_size={max(1, cfg.train.batch_size // 2)}, now "
        f"{cfg.train.batch_size}), smaller images (--set data.image_size=[{smaller.replace('x', ',')}], "
        f"now {size}), a smaller model (model.name / model.filters), or on a GPU "
        f"--set trainer.precision=16-mixed.")


@contextlib.contextmanager
def advise_on_out_of_memory(cfg, stage: str):
    """Turn running out of memory inside the block into :class:`OutOfMemory` with advice
    (:func:`out_of_memory_advice`); every other error passes unchanged.

    Args:
        cfg: the run's configuration (``data.image_size`` and ``train.batch_size`` are named).
        stage: what was running, for the message (e.g. ``"training"``).
    """
    try:
        yield
    except (MemoryError, RuntimeError) as err:
        if is_out_of_memory(err):
            raise out_of_memory_advice(cfg, stage, err) from None
        raise
