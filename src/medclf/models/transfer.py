"""Start a network from another run's weights (transfer learning between datasets).

Every tensor of the source run's checkpoint whose name and shape match the new network is
loaded; the classifier head (the last linear layer with ``num_classes`` outputs,
:func:`medclf.models.prior.last_linear`) always keeps its fresh initialisation, so the
network gets a new head for this task's classes (the usual fine-tuning recipe: Yosinski et
al. 2014, "How transferable are features in deep neural networks?"; fastai's ``fine_tune``).
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from .. import rundir
from ..checkpoints import load_checkpoint
from ..errors import ConfigError
from .prior import last_linear

log = logging.getLogger("medclf")


@dataclass
class TransferReport:
    """What was taken from the source run: tensor names loaded, and those left at their
    initialisation with the reason (``head``, ``shape``, ``missing`` in the source)."""

    source_run: str
    checkpoint: str
    checkpoint_sha256: str
    loaded: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    unused: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-ready summary (counts, and the names of skipped and unused tensors)."""
        out = asdict(self)
        out["n_loaded"], out["n_skipped"] = len(self.loaded), len(self.skipped)
        del out["loaded"]
        return out


def is_run_dir(path: str | Path) -> bool:
    """``path`` is a medclf run directory (holds config.yaml and dataset.json)."""
    path = Path(path)
    return path.is_dir() and (path / rundir.CONFIG).is_file() and (path / rundir.DATASET).is_file()


def head_prefix(model: nn.Module, num_classes: int) -> str:
    """Qualified name of the classifier head (e.g. ``classifier.3``), '' when there is none."""
    try:
        head = last_linear(model, num_classes)
    except ConfigError:
        return ""
    return next(name for name, module in model.named_modules() if module is head)


def load_from_run(model: nn.Module, run_path: str | Path, num_classes: int) -> TransferReport:
    """Load the matching layers of a run's best (else last) checkpoint into ``model``.

    Args:
        model: the new network (any number of classes).
        run_path: the source run directory.
        num_classes: the new network's outputs (finds its head, which is never loaded).

    Returns:
        :class:`TransferReport`; a summary is logged (warning level: it changes the result).

    Raises:
        ConfigError: not a run directory, no checkpoint, a checkpoint that cannot be read
            safely, or no tensor that matches (another architecture: copy the source run's
            ``model`` settings).
    """
    path = Path(run_path)
    if not is_run_dir(path):
        raise ConfigError(f"--init-from / model.weights: {path} is not a medclf run directory "
                          f"(needs {rundir.CONFIG} and {rundir.DATASET})")
    checkpoint = next((path / name for name in (rundir.BEST, rundir.LAST) if (path / name).is_file()), None)
    if checkpoint is None:
        raise ConfigError(f"--init-from / model.weights: {path} has no checkpoint ({rundir.BEST} or {rundir.LAST})")
    saved = load_checkpoint(checkpoint, ConfigError, "--init-from")
    state = saved.get("state_dict", saved) if isinstance(saved, dict) else None
    if not isinstance(state, dict):
        raise ConfigError(f"--init-from: {checkpoint} holds no state_dict")
    state = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")} or state
    head = head_prefix(model, num_classes)
    own = model.state_dict()
    report = TransferReport(str(path.resolve()), str(checkpoint.resolve()),
                            hashlib.sha256(checkpoint.read_bytes()).hexdigest())
    take = {}
    for name, tensor in own.items():
        if head and (name == head or name.startswith(head + ".")):
            report.skipped[name] = "head"
        elif name not in state:
            report.skipped[name] = "missing"
        elif not isinstance(state[name], torch.Tensor) or state[name].shape != tensor.shape:
            got = tuple(state[name].shape) if isinstance(state[name], torch.Tensor) else type(state[name]).__name__
            report.skipped[name] = f"shape {got} != {tuple(tensor.shape)}"
        else:
            take[name] = state[name]
    report.loaded = sorted(take)
    report.unused = sorted(set(state) - set(own))
    if not [n for n in take if not n.endswith("num_batches_tracked")]:
        raise ConfigError(f"--init-from: no tensor of {checkpoint} matches the network by name and shape "
                          f"(e.g. {next(iter(report.skipped.items()), '-')}); use the source run's model settings")
    model.load_state_dict({**own, **take})
    log.warning("init from run %s: loaded %d tensors, %d left at their initialisation (head: %s%s)", path,
                len(report.loaded), len(report.skipped), head or "none",
                "; shape mismatches: " + ", ".join(n for n, r in report.skipped.items() if r.startswith("shape"))
                if any(r.startswith("shape") for r in report.skipped.values()) else "")
    return report
