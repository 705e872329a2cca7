"""``medclf serve``: HTTP API and web page over a folder of run directories (FastAPI + Uvicorn)."""
from __future__ import annotations

from ..serve import create_app


def serve(runs_dir: str = "runs", host: str = "127.0.0.1", port: int = 8000,
          max_upload_mb: float = 50.0, accelerator: str = "cpu", backend: str = "torch",
          batch_window_ms: float = 5.0, max_batch: int = 32) -> None:
    """Run the service with Uvicorn until interrupted (binds to localhost by default).

    Raises:
        RunDirError: ``runs_dir`` is not a folder.
    """
    import uvicorn
    app = create_app(runs_dir, max_upload_mb=max_upload_mb, accelerator=accelerator, backend=backend,
                     batch_window_ms=batch_window_ms, max_batch=max_batch)
    print(f"medclf serve: {len(app.state.store.names())} run(s) in {app.state.store.root}, backend {backend}; "
          f"open http://{host}:{port}/  (API docs: http://{host}:{port}/docs)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")


def main(args) -> int:
    """Serve until interrupted."""
    serve(args.runs_dir, host=args.host, port=args.port, max_upload_mb=args.max_upload_mb,
          backend=args.backend, batch_window_ms=args.batch_window_ms, max_batch=args.max_batch)
    return 0
