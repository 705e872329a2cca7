"""The service: HTTP API and web page over a folder of run directories (FastAPI + Uvicorn)."""
from __future__ import annotations

from .app import create_app

__all__ = ["create_app"]
