"""What a report section sees (:class:`ReportContext`), the section registry and small HTML helpers."""
from __future__ import annotations

import base64
import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

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
