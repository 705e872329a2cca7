"""Do a dataset's file names carry patient ids? A suggestion for ``data.patient_id_pattern``.

Images of one patient in both training and validation (or test) make a split look better
than it is; many public sets name files after the patient (``person12_virus_3.jpeg``,
``00000001_000.png``, ``IM-0115-0001.jpeg``, ``0_left.jpg``). :func:`suggest_patient_pattern`
tries one pattern, the leading letters and the first number of the name, followed by more
of the name (a bare ``12.png`` is an image number, often restarting in every folder), and
reports it when it groups several images under one id. It is a suggestion, never applied
on its own: a wrong id merges or splits patients silently, and only the dataset's
documentation can confirm it.
"""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pandas as pd

CANDIDATE = r"^(\D*\d+)"
"""The candidate id: the name's leading non-digits and its first run of digits."""
MIN_GROUPED_SHARE = 0.1
"""Fewest files, as a share of all, that must share their id with another file for a suggestion."""
LARGEST_SHOWN = 3
"""Largest id groups listed with the suggestion (an id naming hundreds of files is not a patient)."""


def suggest_patient_pattern(frame: pd.DataFrame) -> dict | None:
    """The candidate ``data.patient_id_pattern`` for a manifest frame, when its file names look
    like they carry patient ids.

    Args:
        frame: a manifest frame (``path``, ``split``; ``patient_id`` when the source has them).

    Returns:
        None when the frame already has patient ids, when the candidate (:data:`CANDIDATE`)
        misses some file name or is the whole of a name (before its extension), or when
        fewer than :data:`MIN_GROUPED_SHARE` of the files share their id with another file; else ``pattern``, ``n_files``, ``n_ids``, ``grouped_share``
        (files whose id names two or more), ``largest`` (``[id, files]`` of the
        :data:`LARGEST_SHOWN` largest groups) and ``cross_split`` (ids with files in two given
        or carved splits).
    """
    if "patient_id" in frame.columns and (frame.patient_id.astype(str) != "").any():
        return None
    regex = re.compile(CANDIDATE)
    ids = []
    for path in frame.path:
        name = Path(str(path)).name
        match = regex.search(name)
        if match is None or not re.match(r"[^.]", name[match.end():]):  # nothing after the id but the extension
            return None
        ids.append(match.group(1))
    sizes = Counter(ids)
    grouped = sum(n for n in sizes.values() if n > 1)
    if not len(ids) or grouped < MIN_GROUPED_SHARE * len(ids):
        return None
    splits = pd.DataFrame({"id": ids, "split": frame.split.astype(str).to_numpy()})
    return {"pattern": CANDIDATE, "n_files": len(ids), "n_ids": len(sizes),
            "grouped_share": round(grouped / len(ids), 4),
            "largest": [[name, n] for name, n in sizes.most_common(LARGEST_SHOWN)],
            "cross_split": int((splits.groupby("id").split.nunique() > 1).sum())}


def suggestion_lines(suggestion: dict | None) -> list[str]:
    """The human-readable lines of :func:`suggest_patient_pattern`'s result (none without one)."""
    if not suggestion:
        return []
    largest = ", ".join(f"{name} ({n} files)" for name, n in suggestion["largest"])
    return [f"file names may carry patient ids: {suggestion['pattern']!r} finds {suggestion['n_ids']} ids in "
            f"{suggestion['n_files']} files ({suggestion['grouped_share']:.0%} of the files share their id; "
            f"largest: {largest}; {suggestion['cross_split']} ids in two splits)",
            "  if these are patients (check the dataset's documentation), keep each patient in one split: "
            f"--set 'data.patient_id_pattern={suggestion['pattern']}' (refine the pattern where one id "
            "names more files than a patient has)"]
