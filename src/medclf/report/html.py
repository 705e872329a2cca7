"""``medclf report``: one self-contained HTML page per run (images embedded, no internet).

The page is a list of sections. Each section is a builder ``(ReportContext) -> str | None``
registered with :func:`register_section`; it returns an HTML fragment, or None when the files
it needs are absent (the section is then left out). A builder that fails is replaced by a
short note, so one broken section never costs the page. To add a section::

    from medclf.report import register_section

    @register_section("Calibration", order=45)
    def calibration(ctx):
        if not ctx.exists("plots/calibration.png"):
            return None
        return ctx.img("plots/calibration.png", "reliability diagram")
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from ..io import write_text
from ..rundir import REPORT, load_run
from . import sections  # noqa: F401  (registers the built-in sections)
from .context import SECTIONS, ReportContext, esc

log = logging.getLogger("medclf")

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1200px;
padding:1em 2em;color:#222;line-height:1.4}
h1{margin-bottom:0}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
img{max-width:100%;height:auto;margin:.3em 0}pre{background:#f7f7f7;padding:.8em;overflow-x:auto;font-size:85%}
.grid{display:flex;flex-wrap:wrap;gap:1em}.grid figure{margin:0;flex:1 1 420px}
figcaption{font-size:85%;color:#555}.warn{background:#fff4e5;border-left:4px solid #f0a020;padding:.4em .8em}
.headline{font-size:120%}.muted{color:#777}nav a{margin-right:1em}
"""


def render(run_dir: str | Path) -> str:
    """The report page of a run as an HTML string (every image embedded)."""
    ctx = ReportContext(Path(run_dir))
    parts = []
    for section in SECTIONS:
        try:
            body = section.builder(ctx)
        except Exception as err:  # noqa: BLE001  (one broken section never costs the page)
            log.warning("report: section %r failed: %s", section.title, err)
            body = f'<p class="warn">This section could not be drawn: {esc(type(err).__name__)}: {esc(err)}</p>'
        if body:
            anchor = "s-" + "".join(c if c.isalnum() else "-" for c in section.title.lower())
            parts.append((section.title, anchor, body))
    nav = " ".join(f'<a href="#{a}">{esc(t)}</a>' for t, a, _ in parts)
    body = "\n".join(f'<section id="{a}"><h2>{esc(t)}</h2>\n{b}\n</section>' for t, a, b in parts)
    name = Path(run_dir).resolve().name
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>medclf report: {esc(name)}</title><style>{CSS}</style></head><body>"
            f"<h1>medclf report: {esc(name)}</h1>"
            f'<p class="muted">{esc(Path(run_dir).resolve())} &middot; written '
            f"{time.strftime('%Y-%m-%d %H:%M:%S')}</p><nav>{nav}</nav>\n{body}\n</body></html>\n")


def write_report(run_dir: str | Path, path: str | Path | None = None) -> Path:
    """Write ``run_dir/report.html`` (or ``path``) atomically and return its path.

    Raises:
        RunDirError: ``run_dir`` is not a run directory.
    """
    load_run(run_dir)  # a clear error for a folder that is not a run
    return write_text(Path(path) if path else Path(run_dir) / REPORT, render(run_dir))
