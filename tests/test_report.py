"""The run report: rendered by headless Chromium (Debian's) with every image loaded."""
import shutil

import pytest
from PIL import Image

from medclf.cli import main
from medclf.report import register_section, render, write_report
from medclf.report.html import SECTIONS

from conftest import needs_chromium, needs_graphviz, require_chromium

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


def render_in_chromium(html_path, screenshot, profile):
    """Open the page in headless Chromium; return the images' state and the requested URLs."""
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(profile), executable_path=require_chromium(), headless=True, args=FLAGS,
            viewport={"width": 1280, "height": 900})
        try:
            page = context.new_page()
            requests = []
            page.on("request", lambda request: requests.append(request.url))
            page.goto(html_path.resolve().as_uri(), wait_until="load")
            images = page.evaluate("""() => Array.from(document.images).map(i =>
                ({alt: i.alt, complete: i.complete, width: i.naturalWidth, height: i.naturalHeight}))""")
            headings = page.evaluate("() => Array.from(document.querySelectorAll('h2')).map(h => h.textContent)")
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            context.close()
    return images, headings, requests


@needs_chromium
@needs_graphviz  # the "model graph" image
def test_report_renders_in_chromium_with_every_image(tiny_run, tmp_path):
    report = tiny_run / "report.html"
    assert report.is_file()  # written at the end of train
    images, headings, requests = render_in_chromium(report, tmp_path / "report.png", tmp_path / "profile")
    for title in ("Summary", "Dataset", "Learning curves", "Test metrics", "Training diagnostics",
                  "Architecture", "Configuration"):
        assert title in headings
    assert any(h.startswith("Gallery") for h in headings)
    broken = [i for i in images if not i["complete"] or i["width"] == 0]
    assert not broken, broken
    alts = {i["alt"] for i in images}
    assert {"learning curves", "confusion matrix (rows: true class)", "ROC curves, one-vs-rest",
            "diagnostics summary", "weights", "gradients", "activations", "model graph"} <= alts
    assert len(images) >= 8 + 2  # the above and at least two gallery figures
    assert all(url.startswith(("file:", "data:")) for url in requests), "the page reached out"
    shot = Image.open(tmp_path / "report.png").convert("L")
    assert shot.height > 3000  # a long page, not an error page
    low, high = shot.getextrema()
    assert high - low > 200  # not blank


def test_report_of_an_unfinished_run_and_a_failing_section(tiny_run, tmp_path, capsys):
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in ("config.yaml", "dataset.json"):
        shutil.copy(tiny_run / name, partial / name)

    @register_section("Broken", order=15)
    def broken(ctx):
        raise ValueError("boom")
    try:
        assert main(["report", str(partial)]) == 0
    finally:
        SECTIONS[:] = [s for s in SECTIONS if s.title != "Broken"]
    page = (partial / "report.html").read_text()
    assert "No test metrics" in page and "This section could not be drawn: ValueError: boom" in page
    assert "<h2>Dataset</h2>" in page and "Learning curves" not in page  # absent files: no section
    assert "Broken" not in render(partial)


def test_report_of_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "is not a medclf run directory" in capsys.readouterr().err
    with pytest.raises(Exception, match="not a medclf run"):
        write_report(tmp_path)
