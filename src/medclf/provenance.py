"""What a run records about where it came from: package versions and the data's content hash.

``provenance.json`` in the run directory holds the versions of Python and of every package
the result depends on (read with :mod:`importlib.metadata`), the platform, the command
line, and ``manifest_sha256``: a hash of the exact images used (their split, label and
content hash, not their paths, so moving the data folder keeps the hash).
"""
from __future__ import annotations

import hashlib
import platform
import sys
from importlib import metadata

import pandas as pd

PACKAGES = ("medclf", "torch", "lightning", "monai", "torchmetrics", "numpy", "pillow",
            "scikit-learn", "scikit-image", "scipy", "pandas", "pydantic", "pyyaml",
            "matplotlib", "pydicom", "nibabel")


def package_versions(names=PACKAGES) -> dict[str, str | None]:
    """``{package: version}`` of the installed distributions (None when not installed)."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def manifest_hash(frame: pd.DataFrame) -> str:
    """SHA-256 of the manifest's ``(split, label, sha)`` rows, sorted.

    Args:
        frame: the run's split manifest with columns ``split``, ``label`` and ``sha`` (the
            blake2b content hash of each file, see :func:`medclf.data.preprocess.content_hash`).

    Returns:
        64 hex digits; equal for the same images in the same splits with the same labels.
    """
    rows = sorted(zip(frame["split"].astype(str), frame["label"].astype(str), frame["sha"].astype(str)))
    digest = hashlib.sha256()
    for row in rows:
        digest.update("\t".join(row).encode("utf-8") + b"\n")
    return digest.hexdigest()


def provenance(frame: pd.DataFrame, config_dict: dict) -> dict:
    """The content of ``provenance.json`` for a run over manifest ``frame``."""
    import torch
    return {
        "manifest_sha256": manifest_hash(frame),
        "n_images": int(len(frame)),
        "seed": config_dict.get("seed"),
        "deterministic": config_dict.get("trainer", {}).get("deterministic"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
        "command": sys.argv,
        "packages": package_versions(),
    }
