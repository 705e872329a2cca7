"""Leakage between datasets: this run's validation and test images that the run it starts
from (``--init-from``) has trained on.

Public datasets are built from each other (covid19-xray's Normal and Viral Pneumonia images
come in part from the paediatric collection of chest-xray-pneumonia), so a network
pretrained on one may have seen test images of the other. Each validation/test image is
compared with every training image of the source run: *exact* copies share the content
hash stored in the source run's ``split.csv``; *near* copies (resized, re-encoded,
re-contrasted) match by the thumbnail rule of :mod:`medclf.inspect.duplicates` (pHash
distance and thumbnail correlation), the rule ``medclf inspect`` uses within a dataset.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from .duplicates import MAX_HASH_DISTANCE, MIN_CORRELATION, near_duplicate_pairs_between, thumbnail
from .inspect import scan_file


def source_run_leaks(source_split: pd.DataFrame, source_run: str, frame: pd.DataFrame,
                     decoded: dict[str, np.ndarray], workers: int = 2,
                     min_correlation: float = MIN_CORRELATION,
                     max_hash_distance: int = MAX_HASH_DISTANCE) -> dict:
    """Validation/test images of this run that duplicate a training image of the source run.

    Args:
        source_split: the source run's ``split.csv`` (``path``, ``label``, ``split``, ``sha``).
        source_run: the source run directory (recorded in the result).
        frame: this run's manifest frame (``path``, ``label``, ``split``, ``sha``).
        decoded: ``{path: preprocessed array (C, *spatial)}`` of this run's val/test images.
        workers: threads decoding the source training images (for their thumbnails).

    Returns:
        ``{"source_run", "n_source_train", "n_source_unreadable", "rule", "val": [...],
        "test": [...], "n_val", "n_test"}``; each record is ``{"path", "label",
        "duplicates": [{"path", "label", "kind": "exact"|"near", "correlation",
        "hash_distance"}]}``, sorted by path.
    """
    train = source_split[source_split.split == "train"].reset_index(drop=True)
    by_sha: dict[str, list[int]] = {}
    for i, sha in enumerate(train.get("sha", pd.Series([None] * len(train))).astype(str)):
        by_sha.setdefault(sha, []).append(i)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        infos = list(pool.map(lambda p: scan_file(p, decode=True), train.path))
    readable = [i for i, info in enumerate(infos) if "thumb" in info]
    source_thumbs = np.stack([infos[i]["thumb"] for i in readable]) if readable else np.zeros((0, 32, 32))
    result: dict = {"source_run": str(source_run), "n_source_train": len(train),
                    "n_source_unreadable": len(train) - len(readable),
                    "rule": {"exact": "same content hash", "min_correlation": min_correlation,
                             "max_hash_distance": max_hash_distance, "thumbnail": 32}}
    for split in ("val", "test"):
        rows = frame[frame.split == split].reset_index(drop=True)
        records: dict[str, dict] = {}

        def record(k: int) -> dict:
            return records.setdefault(rows.path[k], {"path": rows.path[k], "label": str(rows.label[k]),
                                                     "duplicates": []})
        for k, sha in enumerate(rows.get("sha", pd.Series([None] * len(rows))).astype(str)):
            for i in by_sha.get(sha, []) if sha not in ("None", "nan") else []:
                record(k)["duplicates"].append({"path": train.path[i], "label": str(train.label[i]), "kind": "exact"})
        have = [k for k in range(len(rows)) if rows.path[k] in decoded]
        thumbs = np.stack([thumbnail(decoded[rows.path[k]]) for k in have]) if have else np.zeros((0, 32, 32))
        for a, b, corr, dist in near_duplicate_pairs_between(source_thumbs, thumbs, min_correlation,
                                                             max_hash_distance):
            i, k = readable[a], have[b]
            if any(d["path"] == train.path[i] for d in records.get(rows.path[k], {}).get("duplicates", [])):
                continue  # already an exact copy
            record(k)["duplicates"].append({"path": train.path[i], "label": str(train.label[i]), "kind": "near",
                                            "correlation": round(corr, 5), "hash_distance": dist})
        result[split] = sorted(records.values(), key=lambda r: r["path"])
        result[f"n_{split}"] = len(records)
    return result


def merge_into_inspection(inspection: dict, leaks: dict) -> dict:
    """Add the source-run leaks to an inspection (``inspection.json``): the whole result
    under ``source_run_leaks``, and each image into ``leaks[split]`` (duplicates marked
    ``split: "train"``, ``source_run``), so every reader of the leaks (``eval.drop_duplicates``,
    ``medclf evaluate``) drops them too."""
    inspection = dict(inspection)
    inspection["source_run_leaks"] = leaks
    merged = {s: {r["path"]: dict(r, duplicates=list(r["duplicates"])) for r in inspection["leaks"].get(s, [])}
              for s in ("val", "test")}
    for split in ("val", "test"):
        for rec in leaks[split]:
            entry = merged[split].setdefault(rec["path"], {"path": rec["path"], "duplicates": []})
            entry["duplicates"] += [{"path": d["path"], "split": "train", "kind": d["kind"],
                                     "source_run": leaks["source_run"]} for d in rec["duplicates"]]
    inspection["leaks"] = {s: sorted(v.values(), key=lambda r: r["path"]) for s, v in merged.items()}
    inspection["n_val_leaked"] = len(inspection["leaks"]["val"])
    inspection["n_test_leaked"] = len(inspection["leaks"]["test"])
    return inspection


def source_split_of(run_dir: str | Path) -> pd.DataFrame:
    """The ``split.csv`` of a run directory (``path``, ``label``, ``split``, ``sha``)."""
    return pd.read_csv(Path(run_dir) / "split.csv", dtype={"label": str, "path": str, "sha": str})
