"""Fault injection for the crash-and-resume tests (inactive unless ``MEDCLF_FAULT`` is set).

``MEDCLF_FAULT`` holds one instruction; the process kills itself with SIGKILL (no cleanup,
no ``finally`` blocks, exactly like the kernel's OOM killer or ``kill -9``):

* ``batch=E:B``: at the start of training batch ``B`` of epoch ``E`` (mid-epoch).
* ``checkpoint_write=N``: during the ``N``-th checkpoint write of the process (1-based),
  after half of the bytes reached the temporary file (a torn write).

Only tests set this variable; it costs one dictionary lookup per batch otherwise.
"""
from __future__ import annotations

import os
import signal

import lightning as L

ENV = "MEDCLF_FAULT"


def fault(kind: str) -> str | None:
    """The argument of the fault of ``kind`` requested in ``MEDCLF_FAULT``, or None."""
    value = os.environ.get(ENV, "")
    name, _, arg = value.partition("=")
    return arg if name == kind else None


def die() -> None:
    """Kill this process with SIGKILL (never returns)."""
    os.kill(os.getpid(), signal.SIGKILL)


class KillAtBatch(L.Callback):
    """SIGKILL this process at the start of batch ``B`` of epoch ``E`` (``MEDCLF_FAULT=batch=E:B``)."""

    def __init__(self, spec: str):
        epoch, _, batch = spec.partition(":")
        self.epoch, self.batch = int(epoch), int(batch or 0)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            die()


def fault_callbacks() -> list[L.Callback]:
    """The fault-injection callbacks requested by ``MEDCLF_FAULT`` (usually none)."""
    spec = fault("batch")
    return [KillAtBatch(spec)] if spec else []
