"""HTTP API of ``medclf serve`` against a run trained on tiny generated data."""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

import medclf  # noqa: E402
from medclf.serve import create_app  # noqa: E402

from conftest import make_dataset, synthetic_image  # noqa: E402

FAST = ["train.max_epochs=2", "data.image_size=[32,32]", "model.filters=[8,16]", "train.batch_size=8"]


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    """A runs folder with one trained run 'tiny' (classes bar, disk), a non-run folder and a
    secret file beside the runs folder that no request may read."""
    root = tmp_path_factory.mktemp("serve")
    data = make_dataset(root / "data")
    medclf.train(data, overrides=FAST, out=root / "runs", name="tiny", progress=False)
    (root / "runs" / "not-a-run").mkdir()
    (root / "secret.txt").write_text("top secret")
    return root / "runs"


BACKENDS = ["torch", pytest.param("onnx", marks=pytest.mark.skipif(
    __import__("importlib").util.find_spec("onnxruntime") is None, reason="onnxruntime not installed"))]


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request):
    return request.param


@pytest.fixture(scope="module")
def client(runs_dir, backend):
    """The API with each prediction backend (PyTorch, ONNX Runtime), micro-batching on."""
    return TestClient(create_app(runs_dir, max_upload_mb=0.2, backend=backend))


def png_bytes(kind="disk", size=48, seed=0) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(synthetic_image(kind, np.random.default_rng(seed), size)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_health_and_runs_list(client):
    assert client.get("/api/health").json() == {"status": "ok", "version": medclf.__version__, "runs": 1}
    runs = client.get("/api/runs").json()
    assert [r["name"] for r in runs] == ["tiny"]  # the folder without config.yaml is not a run
    run = runs[0]
    assert run["model"] == "small_cnn" and run["data"] == "data" and run["class_names"] == ["bar", "disk"]
    assert run["has_model"] is True and run["date"].endswith("+00:00")
    assert run["metrics"]["n"] == 8 and 0 <= run["metrics"]["roc_auc"] <= 1


def test_run_detail_links_to_plots(client):
    detail = client.get("/api/runs/tiny").json()
    assert detail["config"]["data"]["image_size"] == [32, 32]
    assert len(detail["epochs"]) == 2 and "val_loss" in detail["epochs"][0]
    assert detail["test_metrics"]["class_names"] == ["bar", "disk"]
    assert set(detail["plots"]) >= {"learning_curves", "confusion_matrix", "roc_curves"}
    assert detail["report"] == "/api/runs/tiny/report.html"  # train writes report.html
    image = client.get(detail["plots"]["roc_curves"])
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert image.content.startswith(b"\x89PNG")


def test_predict_schema_and_same_result_as_medclf_predict(client, runs_dir, tmp_path):
    data = png_bytes("disk", seed=3)
    response = client.post("/api/runs/tiny/predict", files={"file": ("a disk.png", data, "image/png")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"run", "filename", "predicted", "probability", "probabilities", "gradcam"}
    assert body["run"] == "tiny" and body["filename"] == "a disk.png" and body["gradcam"] is None
    assert set(body["probabilities"]) == {"bar", "disk"}
    assert sum(body["probabilities"].values()) == pytest.approx(1, abs=1e-5)
    assert body["predicted"] == max(body["probabilities"], key=body["probabilities"].get)
    assert body["probability"] == body["probabilities"][body["predicted"]]
    # exactly the run's preprocessing: the same numbers as `medclf predict` on the same file
    (tmp_path / "a.png").write_bytes(data)
    frame = medclf.predict(runs_dir / "tiny", [tmp_path / "a.png"])
    for name in ("bar", "disk"):
        assert body["probabilities"][name] == pytest.approx(float(frame[f"prob_{name}"][0]), abs=1e-5)


def test_predict_with_gradcam_returns_a_png(client):
    response = client.post("/api/runs/tiny/predict?gradcam=true",
                           files={"file": ("x.png", png_bytes("bar", seed=1), "image/png")})
    assert response.status_code == 200, response.text
    overlay = Image.open(io.BytesIO(base64.b64decode(response.json()["gradcam"])))
    assert overlay.format == "PNG" and overlay.size == (32, 32)  # the model's input size
    pixels = np.asarray(overlay.convert("RGB"), dtype=float)
    assert pixels.std() > 1  # an actual picture, not a blank


def test_batch_prediction(client):
    files = [("files", (f"{k}.png", png_bytes(k, seed=i), "image/png")) for i, k in enumerate(["disk", "bar", "disk"])]
    response = client.post("/api/runs/tiny/predict/batch?gradcam=true", files=files)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["filename"] for r in results] == ["disk.png", "bar.png", "disk.png"]
    assert all(r["gradcam"] for r in results)
    single = client.post("/api/runs/tiny/predict", files={"file": files[1][1]}).json()
    assert results[1]["probabilities"] == pytest.approx(single["probabilities"], abs=1e-5)


def test_oversize_upload_gets_413(client):
    big = b"\x89PNG" + bytes(300_000)  # limit is 0.2 MB
    response = client.post("/api/runs/tiny/predict", files={"file": ("big.png", big, "image/png")})
    assert response.status_code == 413 and "0.2 MB" in response.json()["detail"]

    def chunks():  # a valid multipart body without Content-Length: counted while reading
        yield b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n\r\n'
        for _ in range(10):
            yield b"x" * 50_000
        yield b"\r\n--xyz--\r\n"
    response = client.post("/api/runs/tiny/predict", content=chunks(),
                           headers={"content-type": "multipart/form-data; boundary=xyz"})
    assert response.status_code == 413


@pytest.mark.parametrize("content", [b"", b"this is text, not an image", png_bytes()[:60]])
def test_corrupt_or_unsupported_file_gets_422_with_a_message(client, content):
    response = client.post("/api/runs/tiny/predict", files={"file": ("bad.png", content, "image/png")})
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert "bad.png" in detail and ("empty" in detail or "not a readable image" in detail or "corrupt" in detail)


def test_batch_lists_every_bad_file(client):
    files = [("files", ("good.png", png_bytes(), "image/png")), ("files", ("bad1.png", b"nope", "image/png")),
             ("files", ("bad2.jpg", b"", "image/jpeg"))]
    response = client.post("/api/runs/tiny/predict/batch", files=files)
    assert response.status_code == 422
    assert "bad1.png" in response.json()["detail"] and "bad2.jpg" in response.json()["detail"]


def test_missing_file_field_gets_422(client):
    assert client.post("/api/runs/tiny/predict").status_code == 422


@pytest.mark.parametrize("path", [
    "/api/runs/nope", "/api/runs/not-a-run", "/api/runs/..", "/api/runs/%2e%2e", "/api/runs/..%2Fsecret.txt",
    "/api/runs/..%2F..%2Fetc%2Fpasswd", "/api/runs/%2Fetc%2Fpasswd", "/api/runs/%2e%2e%2fsecret.txt",
    "/api/runs/tiny/plots/..%2Fconfig.yaml", "/api/runs/tiny/plots/%2e%2e%2f%2e%2e%2fsecret.txt",
    "/api/runs/tiny/plots/nothing.png", "/api/runs/tiny/report.htm", "/api/runs/..%5Csecret.txt",
])
def test_unknown_runs_and_traversal_get_404(client, path):
    response = client.get(path)
    assert response.status_code == 404, (path, response.status_code)
    assert b"top secret" not in response.content


@pytest.mark.parametrize("run", ["nope", "..", "not-a-run", "%2e%2e%2f"])
def test_predict_on_unknown_run_gets_404(client, run):
    response = client.post(f"/api/runs/{run}/predict", files={"file": ("x.png", png_bytes(), "image/png")})
    assert response.status_code == 404


def test_symlink_out_of_runs_dir_is_refused(runs_dir, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    for name in ("config.yaml", "dataset.json"):
        (outside / name).write_bytes((runs_dir / "tiny" / name).read_bytes())
    link = runs_dir / "linked"
    link.symlink_to(outside, target_is_directory=True)
    try:
        client = TestClient(create_app(runs_dir))
        assert client.get("/api/runs/linked").status_code == 404
        assert "linked" not in [r["name"] for r in client.get("/api/runs").json()]
    finally:
        link.unlink()


def test_model_is_loaded_once(client, monkeypatch):
    import medclf.serve.runs as runs_module
    calls = []
    original = runs_module.load_model
    monkeypatch.setattr(runs_module, "load_model", lambda *a, **k: calls.append(1) or original(*a, **k))
    store = client.app.state.store
    store._models.clear()
    for _ in range(3):
        assert client.post("/api/runs/tiny/predict", files={"file": ("x.png", png_bytes(), "image/png")}).status_code == 200
    assert len(calls) == 1


def test_web_page_is_served_without_external_resources(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for asset in ("/static/app.js", "/static/style.css"):
        response = client.get(asset)
        assert response.status_code == 200
        assert "http://" not in response.text and "https://" not in response.text
    assert "http" not in page.text.replace('href="/', "")
    assert client.get("/openapi.json").json()["info"]["title"] == "medclf"


def test_serve_command_rejects_missing_runs_dir(tmp_path, capsys):
    from medclf.cli import main
    assert main(["serve", str(tmp_path / "missing")]) == 2
    assert "runs folder not found" in capsys.readouterr().err
    assert main(["serve", str(tmp_path), "--max-upload-mb", "0"]) == 2
    assert "--max-upload-mb must be positive" in capsys.readouterr().err


# --- schemathesis: generated requests against the OpenAPI schema never get a 5xx ---------
schemathesis = pytest.importorskip("schemathesis")
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance  # noqa: E402

CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance]


def schemathesis_run(app, force_run: str | None = None, max_examples: int = 12) -> int:
    """Generate requests for every operation of the app's OpenAPI schema; return how many ran.

    Each response is checked by schemathesis: no 5xx, a documented status code, and a body
    that matches the documented schema. ``force_run`` puts that run name into ``{run}``.
    """
    from hypothesis import given
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    count = 0
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=max_examples, deadline=None, derandomize=True,
                  suppress_health_check=list(HealthCheck), database=None)
        def check(case):
            nonlocal count
            if force_run and "run" in (case.path_parameters or {}):
                case.path_parameters["run"] = force_run
            case.call_and_validate(checks=CHECKS)
            count += 1

        check()
    return count


def test_schemathesis_finds_no_server_error(runs_dir, backend):
    app = create_app(runs_dir, max_upload_mb=0.2, backend=backend)
    app.state.store.warm_up()  # a ready service (before that, /api/ready answers its documented 503)
    assert schemathesis_run(app) > 30  # random run names (404s, traversal attempts, ...)
    assert schemathesis_run(app, force_run="tiny") > 30  # the real run: predictions of random bytes, plots, ...


def test_report_is_served_when_the_run_has_one(client, runs_dir):
    report = runs_dir / "tiny" / "report.html"
    assert report.is_file()  # written by train
    detail = client.get("/api/runs/tiny").json()
    assert detail["report"] == "/api/runs/tiny/report.html"
    page = client.get(detail["report"])
    assert page.status_code == 200 and page.text == report.read_text(encoding="utf-8")
    assert "script-src 'none'" in page.headers["content-security-policy"]
    # the report's relative links to its plots resolve to the plot endpoint
    assert client.get("/api/runs/tiny/plots/roc_curves.png").status_code == 200


def test_a_2d_upload_to_a_3d_run_gets_422(client, runs_dir, tmp_path):
    import shutil

    import yaml
    run3d = runs_dir / "volumes"
    shutil.copytree(runs_dir / "tiny", run3d)
    config = yaml.safe_load((run3d / "config.yaml").read_text())
    config["model"]["spatial_dims"] = 3
    config["data"]["image_size"] = [8, 32, 32]
    (run3d / "config.yaml").write_text(yaml.safe_dump(config))
    for ckpt in (run3d / "checkpoints").iterdir():  # weights of a 3D small_cnn of the same widths
        import torch

        from medclf.config import validate
        from medclf.models import create_model
        model = create_model(validate(config).model.model_copy(update={"weights": None}), 1, 2)
        torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, ckpt)
    try:
        response = client.post("/api/runs/volumes/predict", files={"file": ("x.png", png_bytes(), "image/png")})
        assert response.status_code == 422 and "3D volume" in response.json()["detail"]
    finally:
        shutil.rmtree(run3d)


def test_damaged_checkpoint_is_reported_not_executed(client, runs_dir):
    import shutil
    broken = runs_dir / "broken"
    shutil.copytree(runs_dir / "tiny", broken)
    import pickle
    for ckpt in (broken / "checkpoints").iterdir():  # a pickle that would run code if unpickled fully
        ckpt.write_bytes(pickle.dumps(__import__("os").system))
    try:
        response = client.post("/api/runs/broken/predict", files={"file": ("x.png", png_bytes(), "image/png")})
        detail = response.json()["detail"]
        assert response.status_code == 500 and "refused to load" in detail and "last.ckpt" in detail
        assert "not weights" in detail and "Traceback" not in response.text
    finally:
        shutil.rmtree(broken)
