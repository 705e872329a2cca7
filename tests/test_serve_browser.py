"""The web page in a real browser: Playwright drives Debian's Chromium (headless) against a
live ``medclf serve`` on 127.0.0.1, with a run trained on a few real chest X-rays."""
from __future__ import annotations

import base64
import os
import shutil
import time
import urllib.request
from pathlib import Path

import pytest

import medclf

from conftest import COVID, free_port, needs_chromium, needs_data, require_chromium

FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
FAST = ["train.max_epochs=2", "data.image_size=[32,32]", "model.filters=[8,16]", "train.batch_size=8"]

pytestmark = [needs_chromium, needs_data(COVID)]  # fail under CI=true when missing, skip otherwise


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A folder with one run trained on a few covid X-rays."""
    root = tmp_path_factory.mktemp("browser")
    data = root / "covid"
    for split, n in (("train", 6), ("test", 2)):
        for cls in sorted(p for p in (COVID / split).iterdir() if p.is_dir()):
            (data / split / cls.name).mkdir(parents=True)
            for f in sorted(cls.iterdir())[:n]:
                (data / split / cls.name / f.name).symlink_to(f)
    medclf.train(data, overrides=FAST, out=root / "runs", name="covid-xray", progress=False)
    return root


@pytest.fixture(scope="module", params=["torch", "onnx"])
def server(trained, request, warm_medclf):
    """``medclf serve --backend torch|onnx`` in a subprocess on a free loopback port, over one
    covid run; yields once the service is ready (``/api/ready``: model loaded and warm)."""
    if request.param == "onnx":
        pytest.importorskip("onnxruntime")
    port = free_port()
    process = warm_medclf.start(["serve", trained / "runs", "--host", "127.0.0.1", "--port", port,
                                 "--backend", request.param])  # in a fork of the warm server (conftest)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                with urllib.request.urlopen(f"{url}/api/ready", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                if process.poll() is not None:
                    raise RuntimeError("".join(process.communicate()))
                time.sleep(0.2)
        else:
            process.kill()
            raise RuntimeError("server did not start: " + "".join(process.communicate()))
        yield url
    finally:
        process.terminate()
        process.wait(timeout=20)
        process.communicate()


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:  # Debian's Chromium, never `playwright install`
        chromium = playwright.chromium.launch(executable_path=require_chromium(), headless=True, args=FLAGS)
        yield chromium
        chromium.close()


def save_screenshot(page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("MEDCLF_SCREENSHOTS"):  # keep a copy to look at
        Path(os.environ["MEDCLF_SCREENSHOTS"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(os.environ["MEDCLF_SCREENSHOTS"]) / name)
    return path


def test_drop_an_xray_and_see_prediction_and_heatmap(server, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    requests = []
    page.on("request", lambda request: requests.append(request.url))

    page.goto(f"{server}/")
    page.wait_for_selector("#runs tr[data-run='covid-xray']")
    assert "covid-xray" in page.inner_text("#runs")

    page.click("text=predict")
    page.wait_for_selector("#dropzone")
    xray = sorted((COVID / "test" / "Covid").iterdir())[0]
    payload = base64.b64encode(xray.read_bytes()).decode()
    # a real drag-and-drop: a DataTransfer holding the file, dropped on the drop zone
    transfer = page.evaluate_handle("""([b64, name]) => {
        const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], name, {type: 'image/jpeg'}));
        return dt; }""", [payload, xray.name])
    page.dispatch_event("#dropzone", "dragover", {"dataTransfer": transfer})
    page.dispatch_event("#dropzone", "drop", {"dataTransfer": transfer})

    page.wait_for_selector("#predicted", timeout=60_000)
    predicted = page.inner_text("#predicted")
    assert predicted in ("Covid", "Normal", "Viral Pneumonia")
    bars = page.query_selector_all(".bar")
    assert len(bars) == 3
    page.wait_for_function("document.querySelector('#heatmap') && document.querySelector('#heatmap').complete"
                           " && document.querySelector('#heatmap').naturalWidth > 0")
    page.wait_for_function("document.querySelector('#upload-preview').naturalWidth > 0")
    assert page.get_attribute("#heatmap", "alt") == f"Grad-CAM for {predicted}"
    shot = save_screenshot(page, tmp_path, "serve_predict.png")
    assert shot.stat().st_size > 10_000
    assert not errors, errors
    assert all(url.startswith((server, "data:", "blob:")) for url in requests), requests  # offline


def test_run_page_shows_plots_and_metrics(server, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"{server}/#/run/covid-xray")
    page.wait_for_selector(".plots img")
    for alt in ("learning curves", "confusion matrix", "roc curves"):
        page.wait_for_function(f"document.querySelector(\"img[alt='{alt}']\").naturalWidth > 0")
    assert "sensitivity" in page.inner_text("#per-class")
    assert len(page.query_selector_all("#epochs tbody tr")) == 2
    save_screenshot(page, tmp_path, "serve_run.png")


def test_a_corrupt_upload_shows_the_message(server, browser, tmp_path):
    page = browser.new_page()
    page.goto(f"{server}/#/predict/covid-xray")
    page.set_input_files("#file-input", files=[{"name": "notes.png", "mimeType": "image/png",
                                                "buffer": b"this is not an image"}])
    page.wait_for_selector("#predict-error")
    assert "422" in page.inner_text("#predict-error") and "notes.png" in page.inner_text("#predict-error")


def test_api_docs_render_offline(server, browser):
    page = browser.new_page()
    requests = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(f"{server}/docs")
    page.wait_for_selector(".opblock-summary-path", timeout=30_000)
    paths = page.eval_on_selector_all(".opblock-summary-path", "nodes => nodes.map(n => n.textContent)")
    assert "/api/runs/{run}/predict" in "".join(paths)
    assert all(url.startswith(server) or url.startswith("data:") for url in requests), requests
