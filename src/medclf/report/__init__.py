"""The run report: one self-contained HTML page built from pluggable sections."""
from . import tasks  # noqa: F401  (registers the multilabel and regression sections)
from .context import SECTIONS, ReportContext, register_section
from .html import REPORT, render, write_report

__all__ = ["REPORT", "ReportContext", "SECTIONS", "register_section", "render", "write_report"]
