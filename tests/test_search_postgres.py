"""Two medclf tune workers share one study on a real PostgreSQL server started by the test."""
import json
import os
import pwd
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna
import pytest

from conftest import free_port, require_postgres
from test_search import BASE, _env


@pytest.fixture
def postgres_url():
    """A throw-away PostgreSQL server (Debian's postgresql package) on a Unix socket in a temp dir.

    initdb refuses to run as root, so as root the server runs as the ``postgres`` user. Without the
    server programs (or that user) the test fails under ``CI=true`` and is skipped otherwise.
    """
    bindir = require_postgres()
    as_root = os.geteuid() == 0
    if as_root:
        user = pwd.getpwnam("postgres")  # require_postgres() checked that it exists
    root = Path(tempfile.mkdtemp(prefix="medclf-pg-"))  # short path: Unix socket names are limited
    if as_root:
        os.chown(root, user.pw_uid, user.pw_gid)

    def run(*args):
        command = [str(a) for a in args]
        if as_root:
            command = ["su", "postgres", "-s", "/bin/sh", "-c", shlex.join(command)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{command}: {done.stdout}\n{done.stderr}"

    port = free_port()
    run(bindir / "initdb", "-D", root / "data", "-A", "trust", "-U", "postgres", "--no-sync")
    run(bindir / "pg_ctl", "-D", root / "data", "-l", root / "server.log", "-w", "-t", "60",
        "-o", f"-p {port} -k {root} -c listen_addresses='' -c fsync=off", "start")
    try:
        run(bindir / "createdb", "-h", root, "-p", port, "-U", "postgres", "medclf")
        yield f"postgresql+psycopg2://postgres@/medclf?host={root}&port={port}"
    finally:
        run(bindir / "pg_ctl", "-D", root / "data", "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


def test_two_workers_share_one_postgres_study(tiny_dataset, tmp_path, postgres_url, warm_medclf):
    space = tmp_path / "space.yaml"
    space.write_text("train.lr: [1.0e-3, 1.0e-2]\nmodel.dropout: [0.0, 0.3]\n")  # 4 grid points
    workers = []
    for i in (1, 2):  # two workers, each with its own output folder, as on two machines
        command = [sys.executable, "-m", "medclf.cli", "tune", str(tiny_dataset), "--space", str(space),
                   "--sampler", "grid", "--storage", postgres_url, "--name", "shared",
                   "--out", str(tmp_path / f"worker{i}"), *BASE,
                   "--set", "train.max_epochs=1"]
        workers.append(warm_medclf.start(command[3:], _env()))  # in forks of the warm server
    results = [w.communicate(timeout=400) for w in workers]
    for worker, (_, err) in zip(workers, results):
        assert worker.returncode == 0, err[-3000:]

    study = optuna.load_study(study_name="shared", storage=postgres_url)
    finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(finished) == 4
    points = {json.dumps(t.params, sort_keys=True) for t in finished}
    assert len(points) == 4  # every grid point once, none twice
    assert {t.user_attrs["pid"] for t in finished} == {w.pid for w in workers}  # both workers trained
    run_dirs = [tmp_path / f"worker{i}" / "shared" / t.user_attrs["run_dir"]
                for t in finished for i in (1, 2)
                if (tmp_path / f"worker{i}" / "shared" / t.user_attrs["run_dir"] / "metrics.csv").exists()]
    assert len(run_dirs) == 4 and len(set(run_dirs)) == 4  # each trial trained in exactly one place
    assert all(t.state != optuna.trial.TrialState.RUNNING for t in study.trials)
