"""A warm ``medclf`` for the tests: one server process imports the commands once, and a test's
``medclf`` command runs in a fork of it instead of a fresh interpreter.

A ``medclf train`` spends about 12 s of a 2-core machine importing PyTorch, Lightning and
MONAI before it reads an image; the documented pages (tests/test_docs_commands.py) and the
kill-and-resume tests run some thirty such commands. The fork starts with those modules
loaded and nothing else of the server: no thread, no OpenMP pool (the server runs no tensor
operation; fork after one is not safe with GNU OpenMP). It is a real process all the same:
its own pid and process group, signals, exit status, fault injection (``MEDCLF_FAULT``).

Protocol, over a Unix socket: the client sends one JSON line ``{"argv", "cwd", "env"}`` with
its standard input, output and error as passed file descriptors; the server forks, and the
child takes over those descriptors, the directory and the environment, gets its own process
group (so that it and its fold processes can be signalled as one) and runs
:func:`medclf.cli.main`. The server answers ``pid N`` at once and ``exit S`` when the child
ends (S as :func:`os.waitstatus_to_exitcode` gives it: negative for a signal). When the
client's connection closes before the child ended (the client was killed, e.g. by a
timeout), the server kills the child's group.

Clients: :func:`run_warm` (the docs test's ``medclf`` wrapper; it forwards SIGTERM, SIGINT
and SIGHUP to the command) and :class:`WarmProcess` (a test's ``subprocess.Popen`` of medclf,
through :class:`WarmMedclf`).
Run the server as ``python tests/warm_medclf.py SOCKET``; it prints ``ready`` when it
accepts commands (:func:`start_server` does that for a pytest fixture).
"""
from __future__ import annotations

import atexit
import gc
import json
import os
import selectors
import signal
import socket
import sys
import threading
import traceback

PRELOAD = ("medclf.cli", "medclf.commands.train", "medclf.commands.evaluate", "medclf.commands.predict",
           "medclf.commands.explain", "medclf.commands.report", "medclf.commands.inspect",
           "medclf.commands.preview", "medclf.commands.sanity", "medclf.commands.tune",
           "medclf.commands.export", "medclf.commands.serve", "medclf.commands.folds")
MAX_FDS = 3


def _read_line(conn: socket.socket, fds: list[int]) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk, passed, _, _ = socket.recv_fds(conn, 1 << 16, MAX_FDS)
        if not chunk:
            raise ConnectionError("the wrapper closed the connection before its request ended")
        fds += passed
        data += chunk
    return data


def serve(path: str):
    """Accept commands on ``path`` until SIGTERM; in a forked child, return its
    ``(connection, request, fds)`` (the caller runs the command); never returns in the server."""
    import importlib
    for name in PRELOAD:
        importlib.import_module(name)
    if threading.active_count() != 1:  # forking a process with threads can deadlock the child
        raise RuntimeError(f"importing {PRELOAD} started threads: {threading.enumerate()}")
    gc.freeze()  # the collector leaves the imported objects alone in the forks (no copy-on-write)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    children: dict[int, socket.socket] = {}  # pid -> the wrapper's connection
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    print("ready", flush=True)
    while not stop:
        for key, _ in selector.select(timeout=0.1):
            if key.fileobj is listener:
                conn, _ = listener.accept()
                fds: list[int] = []
                try:
                    request = json.loads(_read_line(conn, fds))
                except (ConnectionError, ValueError):
                    conn.close()
                    continue
                pid = os.fork()
                if pid == 0:
                    os.setpgid(0, 0)  # its own process group (set on both sides: no race with killpg)
                    selector.close()
                    listener.close()
                    for other in children.values():
                        other.close()
                    signal.signal(signal.SIGTERM, signal.SIG_DFL)
                    return conn, request, fds
                try:
                    os.setpgid(pid, pid)
                except (PermissionError, ProcessLookupError):  # the child set it already, or ended
                    pass
                for fd in fds:
                    os.close(fd)
                conn.sendall(f"pid {pid}\n".encode())
                children[pid] = conn
                selector.register(conn, selectors.EVENT_READ, pid)
            else:  # a wrapper's connection is readable: it closed (it sends nothing more)
                _kill_group(key.data)
                selector.unregister(key.fileobj)
        _reap(children, selector)
    for pid in children:
        _kill_group(pid)
    sys.exit(0)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _reap(children: dict, selector) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = children.pop(pid, None)
        if conn is None:
            continue
        try:
            selector.unregister(conn)
        except (KeyError, ValueError):
            pass
        try:
            conn.sendall(f"exit {os.waitstatus_to_exitcode(status)}\n".encode())
        except OSError:
            pass
        conn.close()


def run_child(conn: socket.socket, request: dict, fds: list[int]) -> None:
    """In the forked child: take over the wrapper's descriptors, directory and environment,
    and run the command; ends the process with its exit status."""
    conn.close()
    for target, fd in enumerate(fds[:3]):
        os.dup2(fd, target)
    for fd in fds:
        if fd > 2:
            os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = ["medclf", *request["argv"]]
    from medclf.cli import main
    try:
        code = main(request["argv"])
    except SystemExit as exit_:  # argparse's errors and --help
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except BaseException:
        traceback.print_exc()
        code = 1
    # what the interpreter's exit does, without its teardown of every module: that touches each
    # object the fork shares with the server, copying the whole heap (seconds)
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _send(path: str, argv: list[str], fds: list[int], env: dict, cwd: str):
    """Connect to the server at ``path`` and send a command; returns ``(connection, reader, pid)``.

    Raises:
        OSError: no server answers at ``path``.
    """
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
        request = json.dumps({"argv": argv, "cwd": cwd, "env": env}).encode() + b"\n"
        socket.send_fds(conn, [request[:1]], fds)
        conn.sendall(request[1:])
        reader = conn.makefile("r")
        return conn, reader, int(reader.readline().split()[1])
    except (OSError, IndexError, ValueError):
        conn.close()
        raise OSError(f"no warm medclf server answers at {path}") from None


def _exit_status(line: str) -> int:
    """The child's status as :class:`subprocess.Popen` gives it (negative: killed by that signal)."""
    return int(line.split()[1]) if line.startswith("exit ") else 1


def run_warm(argv: list[str]) -> int | None:
    """The docs test wrapper's side: run ``medclf argv`` in the warm server named by
    ``$MEDCLF_DOCS_WARM``, with this process's standard streams, and return its exit status
    as a shell gives it (128 + N for signal N), or None when there is no server to ask (run it
    in-process then)."""
    path = os.environ.get("MEDCLF_DOCS_WARM")
    if not path:
        return None
    try:
        conn, reader, pid = _send(path, argv, [0, 1, 2], dict(os.environ), os.getcwd())
    except OSError:
        return None

    def forward(signum, _frame):
        try:
            os.killpg(pid, signum)
        except ProcessLookupError:
            pass
    previous = {signum: signal.signal(signum, forward) for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        line = reader.readline()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        conn.close()
    code = _exit_status(line)
    return code if code >= 0 else 128 - code


class WarmProcess:
    """``medclf ARGS`` running in a fork of the warm server at ``path``, with the part of
    :class:`subprocess.Popen`'s interface the tests use: ``pid``, ``returncode`` (negative when
    killed by a signal), :meth:`poll`, :meth:`wait`, :meth:`communicate` (text),
    :meth:`send_signal` and :meth:`kill` (to the command's process, as Popen's), and
    :meth:`kill_group`. Standard input is empty; standard output and error are captured.

    Raises:
        OSError: no server answers at ``path``.
    """

    def __init__(self, path: str, args, env: dict):
        import tempfile
        self.args = ["medclf", *args]
        self.returncode = None
        self._out, self._err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
        self._texts: tuple[str, str] | None = None
        with open(os.devnull) as nothing:
            self._conn, reader, self.pid = _send(path, list(args), [nothing.fileno(), self._out.fileno(),
                                                                    self._err.fileno()], env, os.getcwd())
        self._waiter = threading.Thread(target=self._wait_exit, args=(reader,), daemon=True)
        self._waiter.start()

    def _wait_exit(self, reader) -> None:
        try:
            line = reader.readline()
        except OSError:
            line = ""
        self._conn.close()
        self.returncode = _exit_status(line)

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        import subprocess
        self._waiter.join(timeout)
        if self._waiter.is_alive():
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        """Wait, then the command's standard output and error; a second call returns them again
        (a fixture's clean-up may call it after an error path did)."""
        self.wait(timeout)
        if self._texts is None:
            texts = []
            for file in (self._out, self._err):
                file.seek(0)
                texts.append(file.read().decode(errors="replace"))
                file.close()
            self._texts = (texts[0], texts[1])
        return self._texts

    def send_signal(self, signum: int) -> None:
        """Signal the command's process (only: its fold processes must notice its end themselves)."""
        if self.returncode is None:
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill_group(self) -> None:
        """SIGKILL the command's process group: it and every process it started."""
        _kill_group(self.pid)


class ColdProcess:
    """:class:`WarmProcess`'s interface over a fresh ``python -m medclf.cli`` (a
    :class:`subprocess.Popen` whose output goes to temporary files, so that a long-running
    command never blocks on a full pipe)."""

    def __init__(self, argv: list[str], env: dict):
        import subprocess
        import tempfile
        self._out, self._err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
        self._texts: tuple[str, str] | None = None
        self._popen = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=self._out, stderr=self._err)
        self.args, self.pid = argv, self._popen.pid

    @property
    def returncode(self) -> int | None:
        return self._popen.returncode

    def poll(self) -> int | None:
        return self._popen.poll()

    def wait(self, timeout: float | None = None) -> int:
        return self._popen.wait(timeout)

    communicate = WarmProcess.communicate

    def send_signal(self, signum: int) -> None:
        self._popen.send_signal(signum)

    kill, terminate = WarmProcess.kill, WarmProcess.terminate

    def kill_group(self) -> None:
        self.kill()  # it shares the tests' process group: the process alone


def start_server(path: str, env: dict):
    """Start the server on socket ``path`` with environment ``env``; returns the
    :class:`subprocess.Popen` once it accepts commands, or None when it failed to start."""
    import subprocess
    server = subprocess.Popen([sys.executable, __file__, path], env=env, stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    if server.stdout.readline().strip() == "ready":
        return server
    stop_server(server)
    return None


def stop_server(server) -> None:
    """End a server from :func:`start_server` and the commands still running in it."""
    import subprocess
    server.terminate()
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
    server.stdout.close()


class WarmMedclf:
    """A running server and the commands it starts (:meth:`start`, :meth:`run`), or none
    (``socket`` None: they start a fresh interpreter, as a test did before).

    Args:
        socket_path: the server's socket, or None.
        src: the ``src`` folder put first on a cold command's PYTHONPATH.
    """

    def __init__(self, socket_path: str | None, src: str):
        self.socket = socket_path
        self.src = src

    def start(self, args, env: dict | None = None):
        """Start ``medclf ARGS`` with ``env`` (default: this environment) and ``src`` first on
        its PYTHONPATH: a :class:`WarmProcess`, or without a server a :class:`ColdProcess`."""
        args = [str(a) for a in args]
        env = dict(os.environ if env is None else env)
        env["PYTHONPATH"] = os.pathsep.join([self.src, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        if self.socket:
            return WarmProcess(self.socket, args, env)
        return ColdProcess([sys.executable, "-m", "medclf.cli", *args], env)

    def run(self, args, env: dict | None = None, timeout: float = 600):
        """As ``subprocess.run(..., capture_output=True, text=True, timeout=timeout)``: the
        finished command as a :class:`subprocess.CompletedProcess`.

        Raises:
            subprocess.TimeoutExpired: it ran past ``timeout`` seconds (it is killed first).
        """
        import subprocess
        process = self.start(args, env)
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill_group()
            process.wait()
            raise
        return subprocess.CompletedProcess(process.args, process.returncode, out, err)


if __name__ == "__main__":
    child = serve(sys.argv[1])
    run_child(*child)
