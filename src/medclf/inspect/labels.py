"""Label statistics of multilabel and regression datasets for ``medclf inspect``: finding
frequencies per split, their co-occurrence and the number of findings per image; the
target's distribution per split and its histogram."""
from __future__ import annotations

import numpy as np

from ..data.sources.manifest import SPLITS


def label_statistics(manifest, bins: int = 10) -> dict | None:
    """Label statistics of a manifest (None for classification: the class counts say it all).

    Multilabel: ``frequency`` ``{split: {finding: positive fraction}}``, ``positives``
    ``{split: {finding: count}}``, ``co_occurrence`` (all splits: ``K x K`` counts of images
    with both findings; the diagonal is each finding's count), ``findings_per_image``
    ``{count: images}``. Regression: ``summary`` ``{split: {n, mean, std, min, median,
    max}}`` and ``histogram`` (``edges`` ``(bins + 1,)``, ``counts`` per split).
    """
    if manifest.task == "multilabel":
        names = manifest.class_names
        present = [s for s in SPLITS if s in set(manifest.frame.split)]
        findings = {s: manifest.targets(s) for s in present}
        everything = manifest.frame[names].to_numpy(dtype=np.int64)
        per_image = np.bincount(everything.sum(axis=1))
        return {"task": "multilabel",
                "frequency": {s: {n: round(float(f[:, k].mean()), 4) for k, n in enumerate(names)}
                              for s, f in findings.items()},
                "positives": {s: {n: int(f[:, k].sum()) for k, n in enumerate(names)} for s, f in findings.items()},
                "co_occurrence": {"names": names, "counts": (everything.T @ everything).tolist()},
                "findings_per_image": {str(i): int(c) for i, c in enumerate(per_image)}}
    if manifest.task == "regression":
        present = [s for s in SPLITS if s in set(manifest.frame.split)]
        values = {s: manifest.targets(s).astype(np.float64) for s in present}
        edges = np.histogram_bin_edges(np.concatenate(list(values.values())), bins=bins)
        return {"task": "regression", "target": manifest.class_names[0],
                "summary": {s: {"n": int(v.size), "mean": float(v.mean()), "std": float(v.std()),
                                "min": float(v.min()), "median": float(np.median(v)), "max": float(v.max())}
                            for s, v in values.items()},
                "histogram": {"edges": edges.tolist(),
                              "counts": {s: np.histogram(v, bins=edges)[0].tolist() for s, v in values.items()}}}
    return None


def label_summary_lines(stats: dict | None) -> list[str]:
    """Console lines for :func:`label_statistics` (none for classification)."""
    if not stats:
        return []
    if stats["task"] == "multilabel":
        lines = ["finding frequency per split (positive fraction):"]
        for split, freq in stats["frequency"].items():
            lines.append(f"  {split:<6}" + "  ".join(f"{n}={v:.3f}" for n, v in freq.items()))
        names, counts = stats["co_occurrence"]["names"], stats["co_occurrence"]["counts"]
        lines.append("co-occurrence (images with both findings):")
        width = max(6, *(len(n) + 1 for n in names))
        lines.append(" " * (width + 2) + "".join(f"{n:>{width}}" for n in names))
        lines += [f"  {a:<{width}}" + "".join(f"{c:>{width}}" for c in row) for a, row in zip(names, counts)]
        lines.append("findings per image: " + "  ".join(f"{k}: {v}" for k, v in stats["findings_per_image"].items()))
        return lines
    lines = [f"target {stats['target']} per split:"]
    for split, s in stats["summary"].items():
        lines.append(f"  {split:<6}n={s['n']}  mean {s['mean']:.4g}  sd {s['std']:.4g}  "
                     f"min {s['min']:.4g}  median {s['median']:.4g}  max {s['max']:.4g}")
    edges, counts = stats["histogram"]["edges"], stats["histogram"]["counts"]
    total = np.sum([np.asarray(c) for c in counts.values()], axis=0)
    lines.append("histogram (all splits):")
    lines += [f"  {edges[i]:>8.4g} - {edges[i + 1]:<8.4g} {'#' * int(round(40 * n / max(total.max(), 1)))} {n}"
              for i, n in enumerate(total)]
    return lines
