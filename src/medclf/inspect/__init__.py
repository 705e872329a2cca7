"""Dataset inspection: fingerprint, exact and near duplicates, unreadable files."""
from .inspect import inspect_manifest, leaked_paths, summary_lines

__all__ = ["inspect_manifest", "leaked_paths", "summary_lines"]
