"""Steps that run after a run's evaluation: the explanation gallery, then the report.

Each step is a plug-in: a function ``(run_dir, config) -> None`` in :data:`STEPS`. A failing
step only logs a warning, so it never costs the trained and evaluated run. Later stages
(calibration, ...) add themselves with :func:`register_step`.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from ..explain.gallery import write_gallery
from ..report import write_report
from ..training.tasks import task_of

log = logging.getLogger("medclf")

STEPS: list[tuple[str, float, Callable]] = []


def register_step(name: str, order: float = 50):
    """Decorator: run ``step(run_dir, config)`` after every evaluation, sorted by ``order``."""
    def wrap(step):
        STEPS[:] = [s for s in STEPS if s[0] != name] + [(name, order, step)]
        STEPS.sort(key=lambda s: s[1])
        return step
    return wrap


@register_step("gallery", order=50)
def _gallery(run_dir: Path, config) -> None:
    if config.explain.gallery_size > 0 and task_of(config) == "classification":  # a gallery of classes
        write_gallery(run_dir, config.explain.gallery_size, config.explain.method)


@register_step("report", order=1000)  # last: it shows what the other steps wrote
def _report(run_dir: Path, config) -> None:
    write_report(run_dir)


def after_evaluation(run_dir: str | Path, config) -> None:
    """Run every registered step; failures are logged as warnings, never raised."""
    for name, _, step in list(STEPS):
        try:
            step(Path(run_dir), config)
        except Exception as err:  # noqa: BLE001  (a plug-in never loses the run)
            log.warning("%s could not be written: %s: %s", name, type(err).__name__, err)
