"""The run report: one self-contained HTML page built from pluggable sections."""
from .html import REPORT, ReportContext, SECTIONS, register_section, render, write_report

__all__ = ["REPORT", "ReportContext", "SECTIONS", "register_section", "render", "write_report"]
