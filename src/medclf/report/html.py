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

import base64
import html
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

from ..io import write_text

log = logging.getLogger("medclf")

REPORT = "report.html"
_MIME = {".png": "image/png", ".gif": "image/gif", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
         ".svg": "image/svg+xml"}


@dataclass
class ReportContext:
    """What a section builder gets: the run directory and small helpers for HTML."""

    run_dir: Path
    cache: dict = field(default_factory=dict)

    def exists(self, relative: str) -> bool:
        """True when ``run_dir/relative`` is a file."""
        return (self.run_dir / relative).is_file()

    def json(self, relative: str) -> dict | None:
        """A JSON file of the run (None when absent)."""
        if relative not in self.cache:
            path = self.run_dir / relative
            self.cache[relative] = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
        return self.cache[relative]

    def csv(self, relative: str) -> pd.DataFrame | None:
        """A CSV file of the run (None when absent)."""
        path = self.run_dir / relative
        return pd.read_csv(path) if path.is_file() else None

    def text(self, relative: str) -> str | None:
        path = self.run_dir / relative
        return path.read_text(encoding="utf-8", errors="replace") if path.is_file() else None

    def img(self, relative: str, alt: str = "", width: str | None = None) -> str:
        """An ``<img>`` with the file embedded as a base64 data URI ('' when absent)."""
        path = self.run_dir / relative
        if not path.is_file():
            return ""
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        mime = _MIME.get(path.suffix.lower(), "application/octet-stream")
        style = f' style="max-width:{width}"' if width else ""
        return f'<img src="data:{mime};base64,{data}" alt="{esc(alt or path.name)}"{style}>'


@dataclass
class Section:
    title: str
    builder: Callable[[ReportContext], str | None]
    order: float


SECTIONS: list[Section] = []


def register_section(title: str, order: float = 100):
    """Decorator: add a section builder to every report (sorted by ``order``)."""
    def wrap(builder):
        SECTIONS[:] = [s for s in SECTIONS if s.title != title]
        SECTIONS.append(Section(title, builder, order))
        SECTIONS.sort(key=lambda s: s.order)
        return builder
    return wrap


def esc(value) -> str:
    return html.escape(str(value))


def fmt(value, digits: int = 3) -> str:
    """A number for a table cell (NaN as an em dash)."""
    if isinstance(value, float):
        return "&mdash;" if math.isnan(value) else f"{value:.{digits}f}"
    return esc(value)


def table(rows: list[list], header: list[str]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{fmt(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


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
    from . import sections  # noqa: F401  (registers the built-in sections)
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
    from ..rundir import load_run
    load_run(run_dir)  # a clear error for a folder that is not a run
    return write_text(Path(path) if path else Path(run_dir) / REPORT, render(run_dir))
