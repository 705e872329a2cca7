"""tests/conftest.py's missing-resource rule: under CI=true a test whose data (or Chromium,
Graphviz, PostgreSQL) is missing fails; otherwise it is skipped. Checked on a real pytest run."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import pytest

from conftest import ROOT, missing, require_data, strict

TESTS = ROOT / "tests"


def run_pytest(folder, ci: str | None) -> tuple[int, dict[str, int], str]:
    """Run pytest (a subprocess, with tests/conftest.py as a plugin) on ``folder``; return the exit
    status, the outcome counts of its summary line ({"passed": 1, "failed": 1, ...}) and the output."""
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS")}
    if ci is not None:
        env["CI"] = ci
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # the rule is conftest's alone; the installed plugins cost ~4 s a run
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(ROOT / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "conftest", "-p", "no:cacheprovider",
                           "--rootdir", str(folder), "-c", str(folder / "pytest.ini"), str(folder)],
                          cwd=folder, env=env, capture_output=True, text=True, timeout=120)
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|errors?)", summary)}
    counts["errors"] = counts.pop("error", 0) + counts.pop("errors", 0)
    return done.returncode, counts, done.stdout + done.stderr


@pytest.fixture
def suite(tmp_path):
    """A folder with a test file needing a missing data path (by call and by mark) and one present."""
    folder = tmp_path / "suite"
    folder.mkdir()
    (folder / "pytest.ini").write_text("[pytest]\n")
    absent = tmp_path / "no such data" / "covid19-xray"
    (folder / "test_needs_data.py").write_text(textwrap.dedent(f"""
        from conftest import needs_data, require_data

        def test_calls_require_data():
            require_data({str(absent)!r})
            raise AssertionError("not reached: the data is missing")

        @needs_data({str(absent)!r})
        def test_marked_needs_data():
            raise AssertionError("not reached: the data is missing")

        def test_present_data(tmp_path):
            assert require_data(tmp_path) == tmp_path
        """))
    return folder, absent


def test_missing_data_fails_the_run_under_ci(suite):
    folder, absent = suite
    code, counts, output = run_pytest(folder, "true")
    assert code == 1, output
    assert counts.get("failed") == 1 and counts["errors"] == 1 and counts.get("passed") == 1, output
    assert "skipped" not in counts, output
    assert f"real data not found at {absent}" in output and "CI=true" in output


def test_missing_data_skips_without_ci(suite):
    folder, absent = suite
    for ci in (None, "false"):
        code, counts, output = run_pytest(folder, ci)
        assert code == 0, output
        assert counts.get("skipped") == 2 and counts.get("passed") == 1, output
        assert "failed" not in counts and counts["errors"] == 0, output
        assert f"real data not found at {absent}" in output


@pytest.mark.parametrize("value, expected", [("true", True), ("TRUE", True), ("1", True), ("yes", True),
                                             ("false", False), ("0", False), ("", False), (None, False)])
def test_strict_reads_ci(monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    assert strict() is expected


def test_missing_and_require_data_in_process(monkeypatch, tmp_path):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="Chromium is not installed"):
        missing("Chromium is not installed")
    with pytest.raises(pytest.fail.Exception, match="real data not found"):
        require_data(tmp_path / "absent")
    assert require_data(tmp_path) == tmp_path
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="real data not found"):
        require_data(tmp_path / "absent")
