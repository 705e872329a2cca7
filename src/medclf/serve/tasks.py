"""What the service adds to a prediction for multilabel and regression runs (classification: nothing)."""
from __future__ import annotations

import json

import numpy as np

from .. import rundir
from ..training.tasks import MULTILABEL, REGRESSION, task_of


def task_fields(run, outputs: np.ndarray) -> dict:
    """Extra response fields of one image's outputs ``(K,)``.

    Multilabel: ``task``, ``findings`` (the findings at or above their validation-chosen
    threshold of ``test_metrics.json``, 0.5 before the run was evaluated) and
    ``thresholds``. Regression: ``task``, ``value`` (target units) and ``interval``
    (``[low, high]``, the run's split-conformal interval, see
    :mod:`medclf.evaluation.regression`; None before the run was evaluated). Classification: ``{}``.
    """
    task = task_of(run.config)
    if task not in (MULTILABEL, REGRESSION):
        return {}
    path = run.path / rundir.TEST_METRICS
    stored = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    if task == MULTILABEL:
        thresholds = {n: float((stored.get("per_label", {}).get(n) or {}).get("threshold", 0.5))
                      for n in run.class_names}
        return {"task": task, "thresholds": thresholds,
                "findings": [n for n, p in zip(run.class_names, outputs) if p >= thresholds[n]]}
    value = float(outputs[0])
    half = (stored.get("interval") or {}).get("half_width")
    return {"task": task, "value": value, "interval": [value - half, value + half] if half is not None else None,
            "interval_level": (stored.get("interval") or {}).get("level")}
