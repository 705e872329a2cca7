"""``medclf train --init-from RUN``: the source run's model settings, provenance of the
source, and the leakage check of this run's validation/test images against the source
run's training images (helpers of :mod:`medclf.commands.train`)."""
from __future__ import annotations

import json
import logging
from pathlib import Path

from .. import rundir
from ..config import deep_merge, parse_overrides
from ..errors import ConfigError
from ..inspect.cross import merge_into_inspection, source_run_leaks, source_split_of
from ..inspect.inspect import leaked_paths
from ..io import write_json
from ..models.transfer import is_run_dir

log = logging.getLogger("medclf")


def with_init_from(init_from: str | Path, overrides) -> dict:
    """Overrides (nested dict) that start from run ``init_from``: its ``model`` settings
    (architecture, widths; the weights must fit) with ``model.weights`` pointing to it; the
    user's ``--set`` overrides still win.

    Raises:
        ConfigError: ``init_from`` is not a run directory.
    """
    path = Path(init_from)
    if not is_run_dir(path):
        raise ConfigError(f"--init-from: {path} is not a medclf run directory "
                          f"(needs {rundir.CONFIG} and {rundir.DATASET})")
    model = rundir.load_run(path).config.model.model_dump(mode="json")
    model["weights"] = str(path.resolve())
    user = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
    return deep_merge({"model": model}, user)


def record_source(run_dir: Path, network) -> None:
    """Add the source run (path, checkpoint and its SHA-256, tensors loaded/skipped) to
    ``provenance.json`` under ``init_from``, and write it to ``transfer.json``."""
    report = getattr(network, "transfer_report", None)
    if report is None:
        return
    summary = report.to_dict()
    path = run_dir / rundir.PROVENANCE
    data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    data["init_from"] = {k: summary[k] for k in ("source_run", "checkpoint", "checkpoint_sha256",
                                                  "n_loaded", "n_skipped")}
    write_json(path, data)
    write_json(run_dir / "transfer.json", summary)


def check_source_leaks(run_dir: Path, cfg, manifest, splits: dict, leaks: dict) -> dict:
    """When the run starts from another run: compare this run's val/test images with the
    source run's training images, add the matches to ``inspection.json`` (``leaks`` and
    ``source_run_leaks``), warn loudly, and return the updated ``{"val", "test"}`` paths
    (which ``eval.drop_duplicates`` leaves out of the evaluation)."""
    source = cfg.model.weights
    if not source or not is_run_dir(source):
        return leaks
    decoded = {}
    for split in ("val", "test"):
        if split in splits:
            paths = manifest.frame.path[manifest.frame.split == split]
            decoded.update(zip(paths, splits[split][0].numpy()))
    found = source_run_leaks(source_split_of(source), source, manifest.frame, decoded)
    inspection_path = run_dir / rundir.INSPECTION
    inspection = json.loads(inspection_path.read_text(encoding="utf-8"))
    inspection = merge_into_inspection(inspection, found)
    write_json(inspection_path, inspection)
    bar = "!" * 78
    for split in ("val", "test"):
        if found[split]:
            examples = "\n  ".join(f"{r['path']}  <-  {r['duplicates'][0]['path']} ({r['duplicates'][0]['kind']})"
                                   for r in found[split][:10])
            log.warning("\n%s\n%d %s image(s) of this run were TRAINING images of the source run %s "
                        "(exact or near copies): the fine-tuned model has seen them, their metrics are inflated. "
                        "Listed in %s (source_run_leaks); set eval.drop_duplicates=true to evaluate without "
                        "them.\n  %s\n%s", bar, len(found[split]), split, source, inspection_path, examples, bar)
    return {s: leaked_paths(inspection, s) for s in ("val", "test")}
