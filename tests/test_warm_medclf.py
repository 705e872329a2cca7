"""The tests' warm medclf (tests/warm_medclf.py): a command forked from it behaves as a fresh
``python -m medclf.cli`` process would (exit status, output, fault injection, timeout)."""
import os
import socket
import subprocess
import threading
import time

import pytest

from medclf.version import __version__

from conftest import free_port


@pytest.fixture
def warm(warm_medclf):
    if os.environ.get("MEDCLF_TESTS_COLD") == "1":
        pytest.skip("MEDCLF_TESTS_COLD=1: no warm server")
    assert warm_medclf.socket is not None, "the warm medclf server did not start"
    return warm_medclf


def _answers(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_a_forked_command_returns_its_status_and_output(warm, tiny_dataset):
    done = warm.run(["--version"])
    assert (done.returncode, done.stdout.strip()) == (0, f"medclf {__version__}")
    done = warm.run(["nosuchcommand"])
    assert done.returncode == 2 and "invalid choice: 'nosuchcommand'" in done.stderr
    process = warm.start(["--version"])
    assert process.communicate() == process.communicate() == (f"medclf {__version__}\n", "")  # a fixture's clean-up reads again
    done = warm.run(["train", str(tiny_dataset / "no-such-folder")])
    assert done.returncode == 2 and "no-such-folder" in done.stderr and "Traceback" not in done.stderr
    # fault injection reads the command's environment, not the server's: killed as a process is
    env = {**os.environ, "MEDCLF_FAULT": "batch=0:1"}
    done = warm.run(["train", str(tiny_dataset), "--out", str(tiny_dataset.parent / "runs"), "--no-progress",
                     "--set", "data.image_size=[24,24]", "--set", "model.filters=[4]", "--set", "train.folds=0"],
                    env)
    assert done.returncode == -9, done.stderr[-2000:]


def test_a_command_past_its_timeout_is_killed(warm, tmp_path):
    port = free_port()
    started, answered = time.monotonic(), []

    def watch():  # the service comes up before the timeout ends it
        while time.monotonic() - started < 8 and not answered:
            answered.append(True) if _answers(port) else time.sleep(0.2)
    watcher = threading.Thread(target=watch)
    watcher.start()
    with pytest.raises(subprocess.TimeoutExpired):
        warm.run(["serve", str(tmp_path), "--port", str(port)], timeout=8)
    watcher.join()
    assert answered and time.monotonic() - started < 20
    deadline = time.monotonic() + 10
    while _answers(port) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _answers(port)  # the service ended with the command
