"""The processes that train the k-fold ensemble's members on a CPU: Python's ``forkserver``
start method with the training stack preloaded.

A spawned process imports PyTorch, Lightning and MONAI again before it trains (about 10 s
on a slow 2-core machine, paid by every fold process). The fork server imports them once,
and each fold process is a copy of it, ready at once. The server never runs PyTorch code,
so its copies do not inherit OpenMP thread pools (forking a process that has used them can
hang its child). ``medclf train`` starts the server as soon as its plan has fold models to
train in processes (:func:`start_fold_server`), so that the server's imports overlap the
dataset's loading and inspection; a run that trains one model starts none.

Where ``forkserver`` does not exist (Windows), the fold processes are spawned.
"""
from __future__ import annotations

import multiprocessing
import os

from ..training.fit import launcher_variables_set

PRELOAD = ["medclf.commands.folds"]
"""Modules the fork server imports once: the fold training code and what it imports."""


def cpu_cores() -> int:
    """CPU cores this process may use (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def fold_context() -> multiprocessing.context.BaseContext:
    """The multiprocessing context of the fold processes: ``forkserver`` preloading
    :data:`PRELOAD` where the platform has it, else ``spawn``."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


def start_fold_server() -> bool:
    """Start the fork server now, in the background, for a run whose plan trains fold models
    in parallel processes (:func:`medclf.commands.folds.fold_threads` is not None): unless
    ``forkserver`` is missing (Windows: the folds are spawned) or this is one of the
    processes of a distributed launch (they train folds in turn). Returns True when started.

    Started once the plan is known, not when the command starts: importing the training
    stack costs the server about 10 s of one core, which a run that trains one model, on a
    2-core machine, would lose to it.
    """
    if launcher_variables_set() or fold_context().get_start_method() != "forkserver":
        return False
    from multiprocessing import forkserver
    forkserver.ensure_running()  # returns at once: the server imports PRELOAD on its own
    return True
