"""Export a run's network for deployment stacks (ONNX, TorchScript) with its preprocessing metadata."""
from __future__ import annotations

from .export import FORMATS, ExportedModel, export_metadata, export_run, load_onnx_session

__all__ = ["FORMATS", "ExportedModel", "export_run", "export_metadata", "load_onnx_session"]
