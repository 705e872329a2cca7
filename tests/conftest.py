"""Shared fixtures: small generated datasets, the real data in ../shared/data, and the one
place that decides what a test does when something it needs is missing.

A test that needs the real data (``../shared/data``), Debian's Chromium, Graphviz or a
PostgreSQL server asks for it with ``require_data(path)``, ``require_chromium()``,
``require_graphviz()``, ``require_postgres()`` (inside a test or fixture) or with the marks
``@needs_data(path)``, ``@needs_chromium``, ``@needs_graphviz``, ``@needs_postgres``. When it is
missing the test is skipped, except under ``CI=true`` (set by ``.ci/run`` and by CI services),
where it fails: a CI machine that lacks them is set up wrongly, and a skip would hide it.
``bash scripts/test.sh`` installs the Debian packages when it runs as root.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
from pathlib import Path
from typing import NoReturn

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MEDCLF_SHARED_DATA", ROOT.parent / "shared" / "data"))
COVID = SHARED_DATA / "covid19-xray"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (the OS picks it)."""
    import socket
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def install_hint(package: str) -> str:
    """How to install a Debian package the tests need."""
    return f"sudo apt-get install -y {package} (bash scripts/test.sh installs it when run as root)"


# ---------------------------------------------------------------------------- missing resources
def strict() -> bool:
    """True under ``CI=true`` (also ``1``/``yes``, any case): a missing resource fails the test."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def missing(reason: str) -> NoReturn:
    """Fail the calling test under ``CI=true`` (see :func:`strict`), skip it otherwise.

    Raises:
        pytest.fail.Exception: under ``CI=true``.
        pytest.skip.Exception: otherwise.
    """
    if strict():
        pytest.fail(f"{reason} [CI=true: a missing resource is a failure, not a skip]", pytrace=False)
    pytest.skip(reason)


def require_data(path) -> Path:
    """``path`` (a file or folder of the real data, e.g. ``SHARED_DATA / "covid19-xray"``) if it
    exists; else :func:`missing` (fail under ``CI=true``, skip otherwise)."""
    path = Path(path)
    if not path.exists():
        missing(f"real data not found at {path}")
    return path


def chromium_path() -> str | None:
    """Debian's Chromium executable (``chromium`` on the PATH or /usr/bin/chromium), or None."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


def require_chromium() -> str:
    """The Chromium executable for Playwright and headless screenshots (never ``playwright install``);
    if there is none, :func:`missing`."""
    found = chromium_path()
    if found is None:
        missing(f"Chromium is not installed: {install_hint('chromium')}")
    return found


def require_graphviz() -> str:
    """Graphviz's ``dot`` (draws ``architecture.png``); if there is none, :func:`missing`."""
    found = shutil.which("dot")
    if found is None:
        missing(f"Graphviz (dot) is not installed: {install_hint('graphviz')}")
    return found


def postgres_bin() -> Path | None:
    """The folder of the PostgreSQL server programs ``initdb`` and ``pg_ctl`` (Debian's
    /usr/lib/postgresql/<version>/bin, newest first, else the PATH), or None."""
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(folder, "initdb").exists() and Path(folder, "pg_ctl").exists():
            return Path(folder)
    found = shutil.which("initdb")
    return Path(found).parent if found and shutil.which("pg_ctl") else None


def require_postgres() -> Path:
    """:func:`postgres_bin`; if the server programs are missing (or, as root, the ``postgres`` user
    that initdb must run as), :func:`missing`."""
    bindir = postgres_bin()
    if bindir is None:
        missing(f"PostgreSQL server programs (initdb, pg_ctl) not found: {install_hint('postgresql')}")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            missing("running as root and there is no 'postgres' user to run initdb as "
                    "(Debian's postgresql package creates it)")
    return bindir


def needs_data(path) -> pytest.MarkDecorator:
    """Mark: the test needs ``path`` of the real data (:func:`require_data`, checked before fixtures)."""
    return pytest.mark.needs_data(Path(path))


needs_chromium = pytest.mark.needs_chromium
needs_graphviz = pytest.mark.needs_graphviz
needs_postgres = pytest.mark.needs_postgres


def pytest_configure(config):
    for line in ("needs_data(path): the test needs this file or folder of ../shared/data",
                 "needs_chromium: the test needs Debian's Chromium",
                 "needs_graphviz: the test needs Graphviz (dot)",
                 "needs_postgres: the test needs the PostgreSQL server programs"):
        config.addinivalue_line("markers", line)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """The ``needs_*`` marks, before any fixture (a module fixture may train a model first)."""
    for mark in item.iter_markers("needs_data"):
        require_data(*mark.args)
    if item.get_closest_marker("needs_chromium"):
        require_chromium()
    if item.get_closest_marker("needs_graphviz"):
        require_graphviz()
    if item.get_closest_marker("needs_postgres"):
        require_postgres()


# ---------------------------------------------------------------------------- datasets


def synthetic_image(kind: str, rng: np.random.Generator, size: int = 48) -> np.ndarray:
    """A uint8 grayscale image whose class is visible: a bright disk or a bright bar."""
    image = rng.normal(60, 10, (size, size))
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.integers(size // 3, 2 * size // 3, 2)
    if kind == "disk":
        image[(yy - cy) ** 2 + (xx - cx) ** 2 < (size // 6) ** 2] += 140
    else:
        image[:, max(0, cx - 3):cx + 3] += 140
    return np.clip(image, 0, 255).astype(np.uint8)


def make_dataset(root: Path, per_class=(12, 12), splits=("train", "test"), classes=("disk", "bar"),
                 seed: int = 0, ext: str = ".png") -> Path:
    """Write a class-per-folder tree of synthetic images; returns ``root``."""
    rng = np.random.default_rng(seed)
    for split in splits:
        for cls, n in zip(classes, per_class):
            folder = root / split / cls if split else root / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n if split != "test" else max(3, n // 3)):
                Image.fromarray(synthetic_image(cls, rng)).save(folder / f"{cls}_{i}{ext}")
    return root


@pytest.fixture
def tiny_dataset(tmp_path) -> Path:
    """train/{disk,bar} with 12 images each and test/{disk,bar} with 4 each, 48x48 PNG."""
    return make_dataset(tmp_path / "tiny")


@pytest.fixture
def covid_subset(tmp_path) -> Path:
    """A small copy (symlinks) of ../shared/data/covid19-xray: 10 train, 4 test per class."""
    require_data(COVID)
    root = tmp_path / "covid subset"
    for split, n in (("train", 10), ("test", 4)):
        for cls in sorted(p for p in (COVID / split).iterdir() if p.is_dir()):
            target = root / split / cls.name
            target.mkdir(parents=True)
            for f in sorted(cls.iterdir())[:n]:
                (target / f.name).symlink_to(f)
    return root


@pytest.fixture(scope="session")
def warm_medclf():
    """A :class:`warm_medclf.WarmMedclf` for the tests that run ``medclf`` as a process: its
    ``run(args, env, timeout)`` is ``subprocess.run([python, "-m", "medclf.cli", *args], ...)``
    in a fork of one server that imported medclf's commands once for the session (about 12 s
    of imports saved a command on a 2-core machine; tests/warm_medclf.py). With
    ``MEDCLF_TESTS_COLD=1``, or when the server fails to start, each command starts a fresh
    interpreter instead (``socket`` is None)."""
    import tempfile

    from warm_medclf import WarmMedclf, start_server, stop_server
    src = str(ROOT / "src")
    if os.environ.get("MEDCLF_TESTS_COLD") == "1":
        yield WarmMedclf(None, src)
        return
    folder = Path(tempfile.mkdtemp(prefix="medclf-warm-"))  # short: a socket path holds ~100 bytes
    path = folder / "socket"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "MPLBACKEND": "Agg"}
    env.pop("MEDCLF_FAULT", None)
    server = start_server(str(path), env)
    yield WarmMedclf(str(path) if server else None, src)
    if server:
        stop_server(server)
    path.unlink(missing_ok=True)
    folder.rmdir()


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A run trained for 3 epochs on generated disk/bar images with diagnostics on
    (histograms every 2 steps); it has a gallery, architecture files and report.html."""
    from medclf.commands.train import train
    root = tmp_path_factory.mktemp("tiny_run")
    data = make_dataset(root / "data")
    result = train(data, out=root / "runs", name="tiny", progress=False, overrides=[
        "train.max_epochs=3", "data.image_size=[32,32]", "model.filters=[8,16]", "train.batch_size=8",
        "diagnostics.enabled=true", "diagnostics.every_n_steps=2"])
    return result.run_dir
