"""The service's operations side: ONNX Runtime backend, micro-batching, /metrics, /api/ready."""
from __future__ import annotations

import asyncio
import io
import time

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("onnxruntime")
from fastapi.testclient import TestClient  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

import medclf  # noqa: E402
from medclf.errors import ConfigError  # noqa: E402
from medclf.serve import create_app  # noqa: E402
from medclf.serve.batching import MicroBatcher  # noqa: E402

from conftest import make_dataset, synthetic_image  # noqa: E402

FAST = ["train.max_epochs=1", "data.image_size=[32,32]", "model.filters=[8,16]", "train.batch_size=8"]


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve_ops")
    medclf.train(make_dataset(root / "data"), overrides=FAST, out=root / "runs", name="tiny", progress=False)
    return root / "runs"


def png(kind="disk", seed=0) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(synthetic_image(kind, np.random.default_rng(seed))).save(buffer, format="PNG")
    return buffer.getvalue()


def metric_samples(client) -> dict:
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {family.name: family.samples for family in text_string_to_metric_families(response.text)}


def test_onnx_and_torch_backends_give_the_same_probabilities(runs_dir):
    bodies = {}
    for backend in ("torch", "onnx"):
        client = TestClient(create_app(runs_dir, backend=backend, batch_window_ms=0))
        files = [("files", (f"{i}.png", png(k, i), "image/png")) for i, k in enumerate(["disk", "bar", "disk"])]
        response = client.post("/api/runs/tiny/predict/batch", files=files)
        assert response.status_code == 200, response.text
        bodies[backend] = [r["probabilities"] for r in response.json()["results"]]
        session = client.app.state.store.model("tiny").session
        assert (session is None) == (backend == "torch")  # onnx: an ONNX Runtime session
        if session is not None:  # its threads sleep between runs instead of spinning on the shared cores
            entry = session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")
            assert entry == "0"
    for torch_p, onnx_p in zip(bodies["torch"], bodies["onnx"]):
        assert onnx_p == pytest.approx(torch_p, abs=1e-4)


def test_metrics_parse_and_count_requests_by_endpoint_and_status(runs_dir):
    client = TestClient(create_app(runs_dir, backend="onnx", max_upload_mb=0.2))
    assert client.post("/api/runs/tiny/predict", files={"file": ("a.png", png(), "image/png")}).status_code == 200
    assert client.post("/api/runs/tiny/predict", files={"file": ("b.png", b"nope", "image/png")}).status_code == 422
    assert client.get("/api/runs/nope").status_code == 404
    assert client.get("/api/runs/..%2Fsecret").status_code == 404  # no route: endpoint 'unmatched'
    big = b"\x89PNG" + bytes(300_000)
    assert client.post("/api/runs/tiny/predict", files={"file": ("big.png", big, "image/png")}).status_code == 413
    samples = metric_samples(client)
    counts = {(s.labels["endpoint"], s.labels["status"]): s.value
              for s in samples["medclf_http_requests"] if s.name.endswith("_total")}
    assert counts[("/api/runs/{run}/predict", "200")] == 1 and counts[("/api/runs/{run}/predict", "422")] == 1
    assert counts[("/api/runs/{run}", "404")] == 1 and counts[("unmatched", "404")] == 1
    assert sum(v for (endpoint, status), v in counts.items() if status == "413") == 1
    latency = {s.labels["endpoint"]: s.value for s in samples["medclf_http_request_duration_seconds"]
               if s.name.endswith("_count")}
    assert latency["/api/runs/{run}/predict"] == 2
    load = [s for s in samples["medclf_model_load_seconds"] if s.labels == {"run": "tiny", "backend": "onnx"}]
    assert len(load) == 1 and load[0].value > 0
    batches = [s for s in samples["medclf_prediction_batch_size"] if s.name.endswith("_count")]
    assert batches[0].value == 1  # the one successful prediction went through the micro-batcher


def test_ready_is_distinct_from_health(runs_dir):
    app = create_app(runs_dir, backend="onnx", preload=False)
    client = TestClient(app)
    assert client.get("/api/health").status_code == 200  # alive at once
    first = client.get("/api/ready")
    assert first.status_code == 503 and first.json()["status"] == "loading"  # starts the warm-up
    deadline = time.time() + 60
    while (response := client.get("/api/ready")).status_code != 200 and time.time() < deadline:
        time.sleep(0.1)
    assert response.json() == {"status": "ready", "runs_loaded": 1, "backend": "onnx"}
    with TestClient(create_app(runs_dir)) as started:  # preload: the lifespan starts the warm-up
        deadline = time.time() + 60
        while started.get("/api/ready").status_code != 200 and time.time() < deadline:
            time.sleep(0.1)
        assert started.get("/api/ready").json()["runs_loaded"] == 1


def test_micro_batching_joins_concurrent_requests():
    sizes = []

    def predict(images):
        sizes.append(len(images))
        time.sleep(0.02)
        return np.repeat(images.reshape(len(images), -1)[:, :1], 2, axis=1)

    batcher = MicroBatcher(predict, window_ms=20, max_batch=8)

    async def main():
        requests = [np.full((1, 1, 2, 2), i, np.float32) for i in range(10)] + [np.full((3, 1, 2, 2), 99, np.float32)]
        return await asyncio.gather(*(batcher.submit(r) for r in requests))

    results = asyncio.run(main())
    assert [float(r[0, 0]) for r in results[:10]] == list(range(10))  # each request gets its own rows
    assert results[10].shape == (3, 2) and (results[10] == 99).all()
    assert sum(sizes) == 13 and max(sizes) <= 8 and len(sizes) <= 3  # joined, never above max_batch

    def failing(images):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        asyncio.run(MicroBatcher(failing).submit(np.zeros((1, 1, 2, 2), np.float32)))


def test_bad_service_settings_are_refused(runs_dir):
    with pytest.raises(ConfigError, match="--backend"):
        create_app(runs_dir, backend="tensorrt")
    with pytest.raises(ConfigError, match="--max-batch"):
        create_app(runs_dir, max_batch=0)


def test_uploads_are_decoded_by_at_most_one_thread_per_core(runs_dir, monkeypatch):
    import threading

    import httpx

    import medclf.serve.app as app_module
    decode = app_module._preprocess
    lock, running, most = threading.Lock(), [0], [0]

    def counting(*args):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.05)  # long enough for every request to be waiting at once
        try:
            return decode(*args)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(app_module, "_preprocess", counting)
    monkeypatch.setattr(app_module.os, "cpu_count", lambda: 2)
    app = create_app(runs_dir, backend="torch", batch_window_ms=0, preload=False)

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await asyncio.gather(*(
                client.post("/api/runs/tiny/predict", files={"file": (f"{i}.png", png("disk", i), "image/png")})
                for i in range(6)))

    responses = asyncio.run(main())
    assert [r.status_code for r in responses] == [200] * 6
    assert most[0] == 2  # six requests waited together, two were decoded at a time
