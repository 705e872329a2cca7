"""``medclf inspect DATA``: what is in a dataset, and does its test split leak?

Per file it records format, size, channels (Pillow mode), bit depth and intensity range,
and for volumes (NIfTI, DICOM) the voxel spacing the readers report; over the dataset:
counts per split and class, the class imbalance ratio, voxel spacing per split, exact and near
duplicates (see :mod:`medclf.inspect.duplicates`) within and across splits, and every
unreadable file (listed, never fatal).
"""
from __future__ import annotations

import io
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..data.formats import content_digest, content_hash, load_raw, probe, source_format
from ..data.sources import Manifest
from ..errors import UnreadableImage
from .duplicates import MAX_HASH_DISTANCE, MIN_CORRELATION, exact_duplicate_groups, near_duplicate_pairs, thumbnail

PROGRESS_MIN_ITEMS = 1000  # stages over at least this many items show a progress bar with an ETA
BIT_DEPTH = {"1": 1, "L": 8, "P": 8, "LA": 8, "PA": 8, "RGB": 8, "RGBA": 8, "CMYK": 8, "YCbCr": 8,
             "I;16": 16, "I;16B": 16, "I;16L": 16, "I": 32, "F": 32}
CHANNELS = {"1": 1, "L": 1, "P": 1, "I": 1, "F": 1, "LA": 2, "PA": 2, "RGB": 3, "YCbCr": 3,
            "RGBA": 4, "CMYK": 4}


def scan_file(path: str, decode: bool = True, max_pixels: int = 100_000_000) -> dict:
    """Facts about one image file; never raises.

    Returns:
        dict with ``sha`` (content hash), ``format``, ``size`` ``[H, W]`` pixels, ``mode``,
        ``channels``, ``bit_depth``; with ``decode`` also ``min``/``max`` intensity and
        ``thumb`` (32x32 float32 array). An unreadable file gives ``{"error": reason}``.
    """
    if source_format(path) != "image":
        return _scan_volume(path, decode)
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        return {"error": f"cannot read file ({err.strerror or err})"}
    if not data:
        return {"error": "empty file (0 bytes)"}
    info: dict = {"sha": content_hash(data)}
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width * height > max_pixels:
            return {"error": f"{width}x{height} pixels exceeds {max_pixels}"}
        info.update(format=image.format, size=[height, width], mode=image.mode,
                    channels=CHANNELS.get(image.mode.split(";")[0], len(image.getbands())),
                    bit_depth=BIT_DEPTH.get(image.mode, 8))
        if decode:
            image.load()
            image = ImageOps.exif_transpose(image)
            array = np.asarray(image)
            info.update(min=float(array.min()), max=float(array.max()))
            gray = np.asarray(image.convert("F") if image.mode.startswith("I") else image.convert("L"),
                              dtype=np.float32)
            info["thumb"] = thumbnail(gray)
    except Exception as err:  # noqa: BLE001  (any decoder failure is a bad file, listed)
        return {"error": f"not a readable image ({err.__class__.__name__}: {err})"}
    return info


def _scan_volume(path: str, decode: bool) -> dict:
    """:func:`scan_file` for the medical readers (NIfTI, DICOM file or series, npz item):
    header facts from :func:`~medclf.data.formats.probe` (``size`` is the spatial shape,
    ``spacing`` mm per array axis when the format has one); with ``decode`` the item is read
    once by :func:`~medclf.data.formats.load_raw` for its intensity range and thumbnail."""
    try:
        facts = probe(path)
        sha, _ = content_digest(path)
        dtype = facts.get("dtype")
        bits = facts.get("bits_stored") or (np.dtype(dtype).itemsize * 8 if dtype else None)
        info = {"sha": sha, "format": facts["format"], "size": list(facts["shape"]),
                "spatial_dims": facts["spatial_dims"], "channels": facts.get("channels", 1),
                "bit_depth": bits}
        if facts.get("spacing") is not None:
            info["spacing"] = [round(float(v), 6) for v in facts["spacing"]]  # header zooms are float32
        if decode:
            array, _, _ = load_raw(path)
            info.update(min=float(array.min()), max=float(array.max()), thumb=thumbnail(array))
    except (UnreadableImage, OSError, ValueError) as err:
        return {"error": str(err) or err.__class__.__name__}
    except Exception as err:  # noqa: BLE001  (any decoder failure is a bad file, listed)
        return {"error": f"not a readable image ({err.__class__.__name__}: {err})"}
    return info


def spacing_summary(spacings: list[list[float]]) -> dict | None:
    """Per-axis ``median``, ``min`` and ``max`` (mm) and the number of ``distinct`` spacings
    of volumes; ``n`` volumes. Spacings of a different number of axes than the most common
    one are left out. None without any."""
    if not spacings:
        return None
    axes = Counter(len(s) for s in spacings).most_common(1)[0][0]
    values = np.array([s for s in spacings if len(s) == axes], dtype=float)
    return {"n": len(values), "median": [round(float(v), 6) for v in np.median(values, axis=0)],
            "min": values.min(0).tolist(), "max": values.max(0).tolist(),
            "distinct": len({tuple(np.round(v, 6)) for v in values})}


def inspect_manifest(manifest: Manifest, decoded: dict | None = None, workers: int = 2,
                     min_correlation: float = MIN_CORRELATION,
                     max_hash_distance: int = MAX_HASH_DISTANCE) -> dict:
    """Inspect the images of a manifest.

    Args:
        manifest: ``frame`` with ``path``, ``label``, ``split`` (and optionally ``sha``).
        decoded: ``{path: array (C, H, W)}`` of already preprocessed images (training
            reuses them: no pixel is decoded again, intensity ranges are then omitted).
        workers: threads decoding files.

    Returns:
        the JSON-ready inspection (see ``medclf inspect --help``): ``counts``,
        ``imbalance_ratio``, ``sizes`` (``[H, W]`` or volumes ``[D, H, W]``, whichever
        dominate), ``spacing`` (volumes: per split and ``all``, see :func:`spacing_summary`;
        None without volumes), ``channels``, ``bit_depths``, ``formats``,
        ``intensity_range``, ``unreadable``, ``exact_duplicates``, ``near_duplicates``,
        ``leaks`` (val/test paths duplicating a train image, and test duplicating val).
    """
    frame = manifest.frame.reset_index(drop=True)
    paths = list(frame.path)
    decode = decoded is None
    from tqdm.auto import tqdm
    quiet = len(paths) < PROGRESS_MIN_ITEMS
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        infos = list(tqdm(pool.map(lambda p: scan_file(p, decode=decode), paths), total=len(paths),
                          desc="inspecting", unit="img", disable=quiet, mininterval=1.0))
    if decoded is not None:
        for path, info in tqdm(list(zip(paths, infos)), desc="thumbnails", unit="img", disable=quiet,
                               mininterval=1.0):
            if path in decoded and "error" not in info:
                info["thumb"] = thumbnail(decoded[path])
    good = [i for i, info in enumerate(infos) if "error" not in info]
    split, label = frame.split.to_numpy(), frame.label.to_numpy()
    unreadable = [{"path": paths[i], "split": frame.split[i], "reason": infos[i]["error"]}
                  for i in range(len(paths)) if "error" in infos[i]]

    counts = {s: {c: int(((split == s) & (label == c)).sum()) for c in manifest.class_names}
              for s in ("train", "val", "test") if (split == s).any()}
    train_counts = [n for n in counts.get("train", {}).values()]
    lengths = Counter(len(infos[i]["size"]) for i in good)
    axes = lengths.most_common(1)[0][0] if good else 2  # 2D images or volumes, whichever dominate
    sizes = np.array([infos[i]["size"] for i in good if len(infos[i]["size"]) == axes]) if good \
        else np.zeros((0, 2))
    volumes = [i for i in good if infos[i].get("spatial_dims") == 3 and "spacing" in infos[i]]
    spacing = {s: spacing_summary([infos[i]["spacing"] for i in volumes if split[i] == s])
               for s in ("train", "val", "test") if any(split[i] == s for i in volumes)}
    if spacing:
        spacing["all"] = spacing_summary([infos[i]["spacing"] for i in volumes])
    result = {
        "n_files": len(paths), "n_readable": len(good), "class_names": manifest.class_names,
        "counts": counts,
        "imbalance_ratio": (round(max(train_counts) / min(train_counts), 3)
                            if train_counts and min(train_counts) else None),
        "sizes": ({"min": sizes.min(0).tolist(), "median": np.median(sizes, 0).astype(int).tolist(),
                   "max": sizes.max(0).tolist(), "distinct": len({tuple(s) for s in sizes})}
                  if len(sizes) else None),
        "spacing": spacing or None,
        "formats": dict(Counter(infos[i]["format"] for i in good)),
        "modes": dict(Counter(infos[i]["mode"] for i in good if "mode" in infos[i])),
        "channels": dict(Counter(str(infos[i]["channels"]) for i in good)),
        "bit_depths": dict(Counter(str(infos[i]["bit_depth"]) for i in good if infos[i]["bit_depth"])),
        "intensity_range": ([min(infos[i]["min"] for i in good), max(infos[i]["max"] for i in good)]
                            if decode and good else None),
        "unreadable": unreadable,
    }

    def entry(i):
        return {"path": paths[i], "split": str(split[i]), "label": str(label[i])}

    good_set = set(good)
    position = {path: i for i, path in enumerate(paths)}
    hashes = [infos[i].get("sha") if i in good_set else None for i in range(len(paths))]
    groups = exact_duplicate_groups(hashes)
    exact = [{"files": [entry(i) for i in g], "cross_split": len({split[i] for i in g}) > 1,
              "conflicting_labels": len({label[i] for i in g}) > 1} for g in groups]
    exact_pairs = {(a, b) for g in groups for a in g for b in g if a < b}
    with_thumb = [i for i in good if "thumb" in infos[i]]
    near = []
    if len(with_thumb) > 1:
        thumbs = np.stack([infos[i]["thumb"] for i in with_thumb])
        local = {i: k for k, i in enumerate(with_thumb)}
        excl = {(local[a], local[b]) for a, b in exact_pairs if a in local and b in local}
        for a, b, corr, dist in near_duplicate_pairs(thumbs, excl, min_correlation, max_hash_distance):
            i, j = with_thumb[a], with_thumb[b]
            near.append({"files": [entry(i), entry(j)], "correlation": round(corr, 5),
                         "hash_distance": dist, "cross_split": split[i] != split[j],
                         "conflicting_labels": label[i] != label[j]})
    result["exact_duplicates"] = exact
    result["near_duplicates"] = near
    result["near_duplicate_rule"] = {"min_correlation": min_correlation, "max_hash_distance": max_hash_distance,
                                     "thumbnail": 32}
    # leaks: a val/test image with an exact or near copy in an earlier split
    pairs = [(a, b, "exact") for a, b in exact_pairs] + \
            [(position[n["files"][0]["path"]], position[n["files"][1]["path"]], "near") for n in near]
    order = {"train": 0, "val": 1, "test": 2}
    leaks: dict[str, dict[str, dict]] = {"val": {}, "test": {}}
    for a, b, kind in pairs:
        if split[a] == split[b]:
            continue
        later, earlier = (a, b) if order[split[a]] > order[split[b]] else (b, a)
        record = leaks[str(split[later])].setdefault(paths[later], {"path": paths[later], "duplicates": []})
        record["duplicates"].append({"path": paths[earlier], "split": str(split[earlier]), "kind": kind})
    result["leaks"] = {s: sorted(v.values(), key=lambda r: r["path"]) for s, v in leaks.items()}
    result["n_exact_duplicate_groups"] = len(exact)
    result["n_near_duplicate_pairs"] = len(near)
    result["n_val_leaked"] = len(result["leaks"]["val"])
    result["n_test_leaked"] = len(result["leaks"]["test"])
    return result


def leaked_paths(inspection: dict, split: str, against: tuple[str, ...] = ("train",)) -> set[str]:
    """Paths of ``split`` that duplicate (exactly or nearly) an image of a split in ``against``."""
    return {r["path"] for r in inspection["leaks"].get(split, [])
            if any(d["split"] in against for d in r["duplicates"])}


def summary_lines(result: dict) -> list[str]:
    """A short human-readable summary of an inspection."""
    lines = [f"files: {result['n_files']}  readable: {result['n_readable']}  "
             f"unreadable: {len(result['unreadable'])}"]
    for split, counts in result["counts"].items():
        lines.append(f"  {split:<6}" + "  ".join(f"{c}={n}" for c, n in counts.items()))
    lines.append(f"class imbalance (train, largest/smallest): {result['imbalance_ratio']}")
    if result["sizes"]:
        axes = "[D, H, W]" if len(result["sizes"]["min"]) == 3 else "[H, W]"
        lines.append(f"sizes {axes}: min {result['sizes']['min']} median {result['sizes']['median']} "
                     f"max {result['sizes']['max']}")
    for split, facts in (result.get("spacing") or {}).items():
        lines.append(f"voxel spacing (mm) {split:<5}: median {facts['median']} min {facts['min']} "
                     f"max {facts['max']}  ({facts['distinct']} distinct in {facts['n']} volumes)")
    lines.append(f"formats: {result['formats']}  modes: {result['modes']}  bit depths: {result['bit_depths']}")
    if result["intensity_range"]:
        lines.append(f"intensity range: {result['intensity_range']}")
    for bad in result["unreadable"]:
        lines.append(f"UNREADABLE {bad['path']}: {bad['reason']}")
    lines.append(f"exact duplicate groups: {result['n_exact_duplicate_groups']}  "
                 f"near duplicate pairs: {result['n_near_duplicate_pairs']}")
    for group in result["exact_duplicates"]:
        lines.append("  exact: " + " == ".join(f"[{f['split']}] {f['path']}" for f in group["files"]))
    for pair in result["near_duplicates"]:
        a, b = pair["files"]
        lines.append(f"  near (r={pair['correlation']:.3f}): [{a['split']}] {a['path']} ~ [{b['split']}] {b['path']}")
    for split in ("val", "test"):
        leaked = result["leaks"][split]
        if leaked:
            lines.append(f"WARNING: {len(leaked)} {split} image(s) duplicate training"
                         f"{' or validation' if split == 'test' else ''} images (leakage)")
    return lines
