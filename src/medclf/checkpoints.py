"""Read a checkpoint or weights file without ever running code stored in it (a leaf: imports
only torch and medclf.errors).

A ``.ckpt``/``.pt`` file is a pickle, and unpickling can call any function the file names
(``__reduce__``). :func:`load_checkpoint` reads it with PyTorch's restricted unpickler
(``torch.load(weights_only=True)``, https://pytorch.org/docs/stable/notes/serialization.html),
which accepts tensors, numbers, strings and containers of them, and nothing that is code.
Lightning 2.6 checkpoints of medclf runs (``state_dict``, ``epoch``, ``global_step``,
``optimizer_states``, ``lr_schedulers``, ``loops``, ``callbacks``) need nothing more.
"""
from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch

from .errors import MedclfError, RunDirError

_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)")


def load_checkpoint(path: str | Path, error: type[MedclfError] = RunDirError, what: str = "checkpoint") -> Any:
    """The content of the checkpoint or weights file ``path``, tensors on the CPU.

    Args:
        path: a file written by ``torch.save`` (a Lightning checkpoint or a ``state_dict``).
        error: the :class:`~medclf.errors.MedclfError` subclass to raise (``ConfigError`` for
            a file named in the configuration, ``RunDirError`` for a run's own checkpoint).
        what: how the message names the file (e.g. ``model.weights`` or ``checkpoint``).

    Raises:
        error: the file is missing; it holds code or objects that are not weights (refused
            before anything in it runs); or it is torn/not a PyTorch file. The message names
            the file.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise error(f"{what}: file not found: {path}") from None
    except pickle.UnpicklingError as err:  # the restricted unpickler refused the file
        found = _GLOBAL.search(str(err))
        named = f" (it names {found.group(1)})" if found else ""
        raise error(f"{what}: refused to load {path}: it contains code or objects that are not weights"
                    f"{named}, or it is not a PyTorch weights file. Nothing in it was run; use only "
                    "checkpoints written by medclf or plain state_dicts of tensors") from None
    except Exception as err:  # noqa: BLE001  (torn zip, truncated file, I/O errors vary)
        raise error(f"{what}: cannot load {path}: {str(err).splitlines()[0] if str(err) else type(err).__name__}") \
            from None


def read_run_checkpoint(path: str | Path) -> dict:
    """A run's Lightning checkpoint (``state_dict``, ``epoch``, ...) read with
    :func:`load_checkpoint` (nothing in the file can run).

    Raises:
        RunDirError: the file is missing, torn, holds code or objects that are not weights,
            or is not a checkpoint (a dict with ``state_dict``).
    """
    saved = load_checkpoint(path, RunDirError, "checkpoint")
    if not isinstance(saved, dict) or "state_dict" not in saved:
        raise RunDirError(f"checkpoint: {path} is not a medclf checkpoint (no state_dict)")
    return saved
