"""The FastAPI application: HTTP API over a folder of run directories, and the web page.

Endpoints (OpenAPI schema at ``/openapi.json``, interactive docs at ``/docs``):

- ``GET /api/health`` (liveness: the process answers), ``GET /api/ready`` (readiness: every
  run's model is loaded and warmed up; 503 until then), ``GET /metrics`` (Prometheus)
- ``GET /api/runs``: every run with name, data, model, date and key test metrics
- ``GET /api/runs/{run}``: configuration, per-epoch metrics, test metrics, plot links
- ``GET /api/runs/{run}/plots/{file}``, ``GET /api/runs/{run}/report.html``
- ``POST /api/runs/{run}/predict`` (multipart field ``file``; ``?gradcam=true``)
- ``POST /api/runs/{run}/predict/batch`` (multipart field ``files``, repeated)

Uploads are decoded in memory (Starlette spools large parts to its own temporary files)
with exactly the run's preprocessing (:func:`medclf.data.preprocess.preprocess_bytes`).
Predictions go through PyTorch or ONNX Runtime (``backend``), with concurrent requests
micro-batched (:mod:`medclf.serve.batching`); Grad-CAM always runs on PyTorch.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import threading
import weakref
from pathlib import Path
from typing import Annotated, Optional, Union

import anyio
import numpy as np
import torch
from fastapi import FastAPI, File, HTTPException, Query, UploadFile
from fastapi.exception_handlers import http_exception_handler
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import rundir
from ..data.preprocess import preprocess_bytes
from ..errors import ConfigError, MedclfError
from ..version import __version__
from .heatmap import gradcam_png
from .metrics import MetricsMiddleware, ServiceMetrics
from .runs import LoadedRun, RunNotFound, RunStore
from .tasks import task_fields

STATIC = Path(__file__).parent / "static"
MAX_BATCH_FILES = 64
CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
       "frame-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'")


class Health(BaseModel):
    status: str = Field(description="'ok' when the service answers.")
    version: str = Field(description="medclf version.")
    runs: int = Field(description="Number of run directories found.")


class Ready(BaseModel):
    status: str = Field(description="'ready' when every run's model is loaded and warmed up, else 'loading'.")
    runs_loaded: int = Field(description="Models in memory.")
    backend: str = Field(description="Prediction backend: torch or onnx.")


class RunMetrics(BaseModel):
    n: Optional[int] = Field(None, description="Test images.")
    accuracy: Optional[float] = None
    balanced_accuracy: Optional[float] = None
    roc_auc: Optional[float] = Field(None, description="Macro one-vs-rest ROC AUC on the test split.")


class RunSummary(BaseModel):
    name: str = Field(description="The run's name: the {run} of the other endpoints.")
    data: Optional[str] = Field(None, description="Dataset folder name.")
    model: str = Field(description="Model name (model.name).")
    spatial_dims: int
    image_size: list[int]
    class_names: list[str]
    date: str = Field(description="When the run was created (ISO 8601, UTC).")
    has_model: bool = Field(description="A checkpoint exists, so the run can predict.")
    metrics: Optional[RunMetrics] = Field(None, description="Test metrics (null before evaluation).")


class RunDetail(RunSummary):
    config: dict = Field(description="The fully resolved configuration (config.yaml).")
    dataset: dict = Field(description="The dataset fingerprint (dataset.json).")
    epochs: list[dict] = Field(description="metrics.csv: one row per epoch.")
    test_metrics: Optional[dict] = Field(None, description="test_metrics.json.")
    plots: dict[str, str] = Field(description="Plot name -> URL of its image.")
    report: Optional[str] = Field(None, description="URL of report.html, when the run has one.")


class Prediction(BaseModel):
    filename: str = Field(description="The uploaded file's name.")
    predicted: str = Field(description="The class with the highest probability.")
    probability: float = Field(description="Probability of the predicted class, in [0, 1].")
    probabilities: dict[str, float] = Field(description="Class name -> softmax probability; they sum to 1.")
    gradcam: Optional[str] = Field(None, description="Grad-CAM overlay of the predicted class: base64 PNG "
                                                     "(only with ?gradcam=true).")
    task: str = Field("classification", description="classification; multilabel (probabilities: one sigmoid "
                                                    "per finding, independent); regression (see value).")
    findings: Optional[list[str]] = Field(None, description="Multilabel: findings at or above their threshold.")
    thresholds: Optional[dict[str, float]] = Field(None, description="Multilabel: per-finding thresholds "
                                                                     "chosen on validation.")
    value: Optional[float] = Field(None, description="Regression: the predicted number, in target units.")
    interval: Optional[list[float]] = Field(None, description="Regression: [low, high] prediction interval "
                                                              "(split conformal on validation errors).")
    interval_level: Optional[float] = Field(None, description="Regression: the interval's intended coverage.")


class PredictResponse(Prediction):
    run: str


class BatchResponse(BaseModel):
    run: str
    results: list[Prediction]


class ErrorMessage(BaseModel):
    detail: Union[str, list[dict]] = Field(description="What is wrong (FastAPI's validation errors are a list).")


ERRORS = {404: {"model": ErrorMessage, "description": "No such run (or the run has no checkpoint)."},
          413: {"model": ErrorMessage, "description": "Upload larger than the service's limit."},
          422: {"model": ErrorMessage, "description": "Not a supported image, a corrupt one, or a bad request."}}


class _DecodeSlots:
    """At most one decoding thread per core, per event loop (each test client runs its own).

    Uploads are decoded in worker threads; with one per waiting request (AnyIO's default
    pool has 40) they all share the cores at once and each finishes late, which stretches
    the latency tail at the same throughput. A :class:`anyio.CapacityLimiter` of one slot
    per core decodes them first come, first served.
    """

    def __init__(self, slots: int):
        self.slots = slots
        self._limiters: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def limiter(self) -> anyio.CapacityLimiter:
        loop = asyncio.get_running_loop()
        if loop not in self._limiters:
            self._limiters[loop] = anyio.CapacityLimiter(self.slots)
        return self._limiters[loop]


def create_app(runs_dir: str | Path, max_upload_mb: float = 50.0, accelerator: str = "cpu",
               backend: str = "torch", batch_window_ms: float = 5.0, max_batch: int = 32,
               preload: bool = True) -> FastAPI:
    """Build the service for the run directories inside ``runs_dir``.

    Args:
        runs_dir: folder whose direct subfolders are run directories.
        max_upload_mb: request bodies above this many MB (10^6 bytes) get 413, checked on
            the Content-Length header and again while reading.
        accelerator: ``cpu`` (default) or ``auto`` (CUDA when available).
        backend: ``torch`` (default) or ``onnx`` (ONNX Runtime, CPU) for predictions.
        batch_window_ms: micro-batching window, milliseconds (0: every request alone).
        max_batch: most images in one forward pass of micro-batching.
        preload: load and warm every run's model when the service starts (``/api/ready``
            answers 503 until done); otherwise on the first ``/api/ready`` or prediction.

    Raises:
        RunDirError: ``runs_dir`` is not a folder.
        ConfigError: ``max_upload_mb`` or ``max_batch`` is not positive, ``batch_window_ms``
            is negative, or the backend is unknown.
    """
    if not max_upload_mb > 0:
        raise ConfigError(f"--max-upload-mb must be positive, got {max_upload_mb}")
    if not (batch_window_ms >= 0 and max_batch >= 1):
        raise ConfigError(f"--batch-window-ms must be >= 0 and --max-batch >= 1, got {batch_window_ms}, {max_batch}")
    metrics = ServiceMetrics()
    store = RunStore(runs_dir, accelerator, backend=backend, batch_window_ms=batch_window_ms, max_batch=max_batch,
                     on_load=lambda name, kind, seconds: metrics.model_load.labels(name, kind).set(seconds),
                     on_batch=metrics.batch_size.observe)
    limit = int(max_upload_mb * 1_000_000)
    decoding = _DecodeSlots(os.cpu_count() or 1)
    swagger = _swagger_ui_path()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if preload:  # in the background: the service answers /api/health meanwhile
            threading.Thread(target=store.warm_up, name="medclf-warm-up", daemon=True).start()
        yield

    app = FastAPI(title="medclf", version=__version__, docs_url=None if swagger else "/docs", redoc_url=None,
                  lifespan=lifespan,
                  description="Predictions, Grad-CAM heatmaps and metrics of medclf runs.")
    if swagger:  # the interactive docs from local files too, so /docs works offline
        app.mount("/docs-static", StaticFiles(directory=swagger), name="docs-static")

        @app.get("/docs", include_in_schema=False)
        def docs():
            return get_swagger_ui_html(openapi_url=app.openapi_url, title="medclf API",
                                       swagger_js_url="/docs-static/swagger-ui-bundle.js",
                                       swagger_css_url="/docs-static/swagger-ui.css",
                                       swagger_favicon_url="/static/favicon.svg")
    app.state.store = store
    app.state.metrics = metrics

    too_large = {"detail": f"upload larger than the limit of {max_upload_mb:g} MB (medclf serve --max-upload-mb)"}

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc):
        if exc.status_code == 413:
            return JSONResponse(too_large, status_code=413)
        return await http_exception_handler(request, exc)

    @app.exception_handler(RunNotFound)
    async def _not_found(request, exc):
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(MedclfError)
    async def _server_side(request, exc):  # e.g. a damaged checkpoint: the server's problem, said plainly
        return JSONResponse({"detail": str(exc)}, status_code=500)

    @app.get("/api/health", response_model=Health, tags=["service"])
    def health():
        """The service is up; how many runs it sees."""
        return {"status": "ok", "version": __version__, "runs": len(store.names())}

    @app.get("/api/ready", response_model=Ready, tags=["service"],
             responses={503: {"model": Ready, "description": "Models are still loading."}})
    async def ready():
        """Every run's model is loaded and warmed up (503 while loading; starts loading if
        it has not started)."""
        state = store.ready()
        if state is None:
            threading.Thread(target=store.warm_up, name="medclf-warm-up", daemon=True).start()
        body = {"status": "ready" if state else "loading", "runs_loaded": store.loaded_count(),
                "backend": store.backend}
        return JSONResponse(body, status_code=200 if state else 503)

    @app.get("/metrics", include_in_schema=False)
    def prometheus_metrics():
        data, content_type = metrics.exposition()
        return Response(data, media_type=content_type)

    @app.get("/api/runs", response_model=list[RunSummary], tags=["runs"])
    def runs():
        """Every run: name, data, model, date and key test metrics (newest first)."""
        out = []
        for name in store.names():
            try:
                out.append(store.summary(name))
            except RunNotFound:
                continue  # unreadable or vanished meanwhile
        return out

    @app.get("/api/runs/{run}", response_model=RunDetail, responses={404: ERRORS[404], 422: ERRORS[422]}, tags=["runs"])
    def run_detail(run: str):
        """Configuration, per-epoch metrics, test metrics and links to plots and report."""
        return store.detail(run)

    @app.get("/api/runs/{run}/plots/{filename}", response_class=FileResponse,
             responses={404: ERRORS[404], 422: ERRORS[422], 200: {"content": {"image/png": {}}}}, tags=["runs"])
    def plot(run: str, filename: str):
        """A plot image of the run (learning curves, confusion matrix, ROC curves, ...)."""
        return FileResponse(store.file(run, rundir.PLOTS, filename, (".png", ".svg", ".jpg")))

    @app.get("/api/runs/{run}/report.html", response_class=FileResponse,
             responses={404: ERRORS[404], 422: ERRORS[422], 200: {"content": {"text/html": {}}}}, tags=["runs"])
    def report(run: str):
        """The run's report page, when it has one."""
        response = FileResponse(store.file(run, "", rundir.REPORT, (".html",)), media_type="text/html")
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'none'")
        return response

    # exclude_unset: the multilabel/regression fields appear only for those runs (classification answers as before)
    @app.post("/api/runs/{run}/predict", response_model=PredictResponse, responses=ERRORS, tags=["predict"],
              response_model_exclude_unset=True)
    async def predict(run: str, file: Annotated[UploadFile, File(description="Image file (PNG, JPEG, BMP, TIFF).")],
                      gradcam: Annotated[bool, Query(description="Add the Grad-CAM overlay (base64 PNG).")] = False):
        """Class probabilities of one image, with exactly the run's preprocessing."""
        loaded = await run_in_threadpool(store.model, run)
        result = (await _predict(loaded, [file], gradcam, decoding))[0]
        return {"run": run, **result}

    @app.post("/api/runs/{run}/predict/batch", response_model=BatchResponse, responses=ERRORS,
              tags=["predict"], response_model_exclude_unset=True)
    async def predict_batch(run: str, files: Annotated[list[UploadFile], File(description="Images (repeat the field).")],
                            gradcam: Annotated[bool, Query(description="Add Grad-CAM overlays.")] = False):
        """Class probabilities of several images in one request (at most 64)."""
        if len(files) > MAX_BATCH_FILES:
            raise HTTPException(422, f"{len(files)} files sent; at most {MAX_BATCH_FILES} per request")
        loaded = await run_in_threadpool(store.model, run)
        return {"run": run, "results": await _predict(loaded, files, gradcam, decoding)}

    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(Guard, limit=limit, message=too_large)
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: sees the 413s of Guard too
    return app


def _swagger_ui_path() -> str | None:
    """Folder of Swagger UI's files from the swagger-ui-bundle-v2 package, if installed."""
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        return None
    return swagger_ui_path if (Path(swagger_ui_path) / "swagger-ui-bundle.js").is_file() else None


class Guard:
    """Pure ASGI middleware: 413 for request bodies above ``limit`` bytes, security headers.

    Checks the Content-Length header before the application runs, and counts the bytes as
    they arrive (chunked uploads, lying headers), so nothing larger is ever read. Adds
    ``X-Content-Type-Options: nosniff`` and, outside /docs, a Content-Security-Policy
    that only allows this origin (the page works offline, and cannot load anything else).
    """

    def __init__(self, app, limit: int, message: dict):
        self.app, self.limit, self.message = app, limit, message

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            return await JSONResponse(self.message, status_code=413)(scope, receive, send)
        received = 0

        async def limited():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise HTTPException(413)  # turned into the JSON 413 by the app's handler
            return message

        docs = scope["path"].startswith(("/docs", "/redoc"))

        async def with_headers(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                headers.append((b"x-content-type-options", b"nosniff"))
                if not docs and b"content-security-policy" not in names:
                    headers.append((b"content-security-policy", CSP.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, limited, with_headers)


async def _predict(loaded: LoadedRun, files: list[UploadFile], gradcam: bool, decoding: _DecodeSlots) -> list[dict]:
    """Preprocess every upload (422 listing every bad file) in a decoding thread, predict
    (through the micro-batcher when the store has one), add Grad-CAM (PyTorch)."""
    if not files:
        raise HTTPException(422, "no file uploaded")
    contents = [await upload.read() for upload in files]
    images = await anyio.to_thread.run_sync(_preprocess, loaded, files, contents, limiter=decoding.limiter())
    if loaded.batcher is not None:
        probabilities = await loaded.batcher.submit(images.numpy())
    else:
        probabilities = await run_in_threadpool(loaded.probabilities, images)
    if gradcam:
        return await run_in_threadpool(_results, loaded, files, images, probabilities, True)
    return _results(loaded, files, images, probabilities, False)


def _preprocess(loaded: LoadedRun, files: list[UploadFile], contents: list[bytes]) -> torch.Tensor:
    """The uploads as one batch ``(N, C, *spatial)``; 422 naming every bad file."""
    arrays, bad = [], []
    spatial_dims = loaded.run.config.model.spatial_dims
    for upload, content in zip(files, contents):
        name = upload.filename or "upload"
        try:
            array = preprocess_bytes(content, loaded.run.config, name=name)
        except (MedclfError, ValueError, OSError, SyntaxError, EOFError) as err:  # untrusted bytes
            bad.append(f"{name}: {err}")
            continue
        if array.ndim != spatial_dims + 1:
            kind = "a 3D volume (C, D, H, W)" if spatial_dims == 3 else "a 2D image (C, H, W)"
            bad.append(f"{name}: this run's model takes {kind}; the file gave shape {tuple(array.shape)}")
            continue
        arrays.append(array)
    if bad:
        raise HTTPException(422, "not a supported image: " + "; ".join(bad))
    return torch.from_numpy(np.stack(arrays))


def _results(loaded: LoadedRun, files: list[UploadFile], images: torch.Tensor, probabilities: np.ndarray,
             gradcam: bool) -> list[dict]:
    names = loaded.run.class_names
    results = []
    for upload, image, probs in zip(files, images, probabilities):
        best = int(probs.argmax())
        results.append({
            "filename": upload.filename or "upload",
            "predicted": names[best], "probability": float(probs[best]),
            "probabilities": {n: float(p) for n, p in zip(names, probs)},
            "gradcam": base64.b64encode(gradcam_png(loaded.cam_model, image, best)).decode("ascii")
            if gradcam else None,
            **task_fields(loaded.run, probs),  # multilabel findings / regression value and interval
        })
    return results
