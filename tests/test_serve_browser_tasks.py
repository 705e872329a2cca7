"""The web page predicts a multilabel run (a probability bar per finding, the findings over
their threshold) and a regression run (a number with its interval), in headless Chromium."""
from __future__ import annotations

import base64
import time
import urllib.request

import pytest
from taskdata import FINDINGS, make_multilabel_csv, make_regression_csv
from test_serve_browser import FLAGS, save_screenshot

import medclf

from conftest import free_port, needs_chromium, require_chromium

pytestmark = [needs_chromium]
FAST = ["train.max_epochs=3", "data.image_size=[32,32]", "model.filters=[8,16]", "train.batch_size=16",
        "eval.bootstrap=0", "explain.gallery_size=0"]


@pytest.fixture(scope="module")
def task_server(tmp_path_factory, warm_medclf):
    """``medclf serve`` over one multilabel and one regression run trained on generated images."""
    root = tmp_path_factory.mktemp("browser-tasks")
    ml = make_multilabel_csv(root / "ml", n=60)
    rg = make_regression_csv(root / "rg", n=60)
    medclf.train(str(ml), out=root / "runs", name="shapes", progress=False, overrides=FAST + [
        "data.path_column=file", "data.label_columns=[disk,bar,square]"])
    medclf.train(str(rg), out=root / "runs", name="radius", progress=False,
                 overrides=FAST + ["data.label_columns=[radius]"])
    port = free_port()
    process = warm_medclf.start(["serve", root / "runs", "--host", "127.0.0.1", "--port", port])
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                with urllib.request.urlopen(f"{url}/api/health", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                if process.poll() is not None:
                    raise RuntimeError("".join(process.communicate()))
                time.sleep(0.2)
        yield url, root
    finally:
        process.terminate()
        process.wait(timeout=20)
        process.communicate()


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=require_chromium(), headless=True, args=FLAGS)
        yield chromium
        chromium.close()


def drop(page, image_path) -> None:
    payload = base64.b64encode(image_path.read_bytes()).decode()
    transfer = page.evaluate_handle("""([b64, name]) => {
        const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], name, {type: 'image/png'}));
        return dt; }""", [payload, image_path.name])
    page.dispatch_event("#dropzone", "dragover", {"dataTransfer": transfer})
    page.dispatch_event("#dropzone", "drop", {"dataTransfer": transfer})


def test_page_shows_a_probability_per_finding_and_a_number_with_interval(task_server, browser, tmp_path):
    url, root = task_server
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(f"{url}/#/predict/shapes")
    page.wait_for_selector("#dropzone")
    drop(page, root / "ml" / "images" / "img0.png")
    page.wait_for_selector("#predicted", timeout=60_000)
    bars = page.query_selector_all(".bar")
    assert sorted(b.get_attribute("data-class") for b in bars) == sorted(FINDINGS)
    assert "findings above their threshold" in page.inner_text(".bars")
    save_screenshot(page, tmp_path, "serve_multilabel.png")

    page.goto(f"{url}/#/predict/radius")
    page.wait_for_selector("#dropzone")
    drop(page, root / "rg" / "images" / "d0.png")
    page.wait_for_selector("#interval", timeout=60_000)
    value = float(page.inner_text("#predicted"))
    assert 0 < value < 20
    assert "90 % interval" in page.inner_text("#interval")
    save_screenshot(page, tmp_path, "serve_regression.png")
    assert not errors, errors
