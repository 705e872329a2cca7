"""Dataset fingerprint -> complete default configuration (the one place defaults are chosen).

Like nnU-Net's fingerprint/plan step: look at the data (2D or 3D, image sizes, channels,
class counts), return a full configuration tree; the user's YAML and ``--set`` overrides
go on top of it.
"""
from __future__ import annotations

import statistics
from collections import Counter

from PIL import Image

from .config import Config
from .data.discover import Manifest


def fingerprint(manifest: Manifest) -> dict:
    """Cheap facts about the dataset, read from file headers only (no pixel decoding).

    Returns:
        dict with ``spatial_dims``, ``num_classes``, ``class_names``, ``counts``
        (``{split: {class: n}}``), ``median_size`` ``[H, W]`` in pixels, ``modes``
        (Pillow mode counts) and ``formats`` (file extension counts).
    """
    sizes, modes = [], Counter()
    for path in manifest.frame.path:
        try:
            with Image.open(path) as image:
                sizes.append(image.size[::-1])
                modes[image.mode] += 1
        except Exception:  # noqa: BLE001  (bad files are reported by the preprocessing)
            modes["unreadable"] += 1
    median = [int(statistics.median(s[i] for s in sizes)) for i in range(2)] if sizes else [0, 0]
    formats = Counter(p.rsplit(".", 1)[-1].lower() for p in manifest.frame.path)
    return {"spatial_dims": 2, "num_classes": manifest.num_classes, "class_names": manifest.class_names,
            "counts": manifest.counts(), "median_size": median, "modes": dict(modes),
            "formats": dict(formats)}


def plan_config(fp: dict) -> dict:
    """The default configuration for a dataset fingerprint.

    Images are never upsampled: small images (e.g. 28x28 MedMNIST) keep their size and get a
    stem without downsampling; large images are resized to 224x224.
    """
    plan = Config().to_dict()
    smallest_side = min(fp["median_size"]) if min(fp["median_size"]) > 0 else 224
    side = min(224, smallest_side)
    plan["data"]["image_size"] = [side, side]
    if side < 96:  # small inputs: no strided stem, fewer stages
        plan["model"]["stem_stride"] = 1
        plan["model"]["stem_kernel_size"] = 3
        plan["model"]["filters"] = [32, 64, 128]
    n_train = sum(fp["counts"].get("train", {}).values())
    plan["train"]["batch_size"] = int(max(8, min(64, n_train // 8 or 8)))
    return plan
