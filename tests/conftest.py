"""Shared fixtures: every test talks to a real server over real sockets on loopback, port 0."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pytest

from sockecho import MODELS, Server, ServerConfig

ALL_MODELS = list(MODELS)
#: The models that serve clients at the same time (all but iterative, by design).
CONCURRENT_MODELS = [name for name in ALL_MODELS if name != "iterative"]
#: Every wait in a test has a bound; a loaded CI machine gets generous ones.
WAIT = 20.0
#: Seconds a stop may take beyond its drain timeout (closing sockets, joining threads, a
#: process exiting, on a loaded machine): the upper bound of every drain test, well below
#: the 8 s late stop of issue 9's mutant, which such a test must catch.
STOP_MARGIN = 3.0


def pytest_configure(config: pytest.Config) -> None:
    """Let the child processes the tests stop with SIGINT (Ctrl-C) be stopped by it.

    A non-interactive shell starts a background job (``pytest &``, some CI runners) with
    SIGINT ignored, and an ignored signal stays ignored across exec: the example servers and
    the tutorials' commands, which rely on Python's KeyboardInterrupt as a student's Ctrl-C,
    would never stop. A handler (unlike SIG_IGN) is reset to the default in each child.
    """
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """cli.main() points the sockecho logger at the current stderr; undo it after each test."""
    logger = logging.getLogger("sockecho")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved


@pytest.fixture(params=ALL_MODELS)
def model(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def server(model: str) -> Iterator[Server]:
    with Server(ServerConfig(model=model, port=0, drain_timeout=1.0)) as srv:
        yield srv


@pytest.fixture
def server_log() -> Iterator[list[str]]:
    """The server's log lines (the CLI may have stopped propagation to the root logger)."""
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    logger = logging.getLogger("sockecho.server")
    handler, level = Collect(logging.INFO), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield lines
    logger.removeHandler(handler)
    logger.setLevel(level)


def connect(address: tuple[str, int], timeout: float = WAIT) -> socket.socket:
    sock = socket.create_connection(address, timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(min(65536, size - len(data)))
        if not chunk:
            break
        data += chunk
    return bytes(data)


def recv_until_eof(sock: socket.socket) -> bytes:
    data = bytearray()
    while chunk := sock.recv(65536):
        data += chunk
    return bytes(data)


def reset(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the kernel sends RST instead of FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()


def open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


def require_tool(name: str) -> str:
    """The path of an external peer; in CI a missing one fails the test instead of skipping it."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed; .ci/run must install it")
        pytest.skip(f"{name} is not installed (make test installs it as root)")
    return path


class ServeProcess:
    """``sockecho serve`` in a child process; ready when its ready lines were read."""

    #: What runs ``sockecho``: ``python -c CODE`` wrappers can prepare the process first.
    launcher: tuple[str, ...] = ("-m", "sockecho")

    def __init__(self, *args: str, ready_lines: int = 1) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, *self.launcher, "serve", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.endpoints: list[str] = []
        self.stderr_lines: list[str] = []
        self._lines_ready = threading.Condition()
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        with self._lines_ready:
            self._lines_ready.wait_for(
                lambda: len(self.endpoints) >= ready_lines or self.proc.poll() is not None,
                timeout=WAIT,
            )

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._lines_ready:
                self.stderr_lines.append(line.rstrip("\n"))
                if line.startswith("listening on "):
                    self.endpoints.append(line.split(" ", 2)[2].strip())
                self._lines_ready.notify_all()
        self.proc.wait()  # stderr closed: the process is ending; waiters must see it has ended
        with self._lines_ready:
            self._lines_ready.notify_all()

    def logged_lines(self) -> list[str]:
        """The stderr lines read so far, and how the process ended if it has."""
        with self._lines_ready:
            lines = list(self.stderr_lines)
        code = self.proc.poll()
        return [*lines, "(still running)" if code is None else f"(exited with {code})"]

    def wait_for_line(self, fragment: str, timeout: float = WAIT) -> bool:
        with self._lines_ready:
            return self._lines_ready.wait_for(
                lambda: any(fragment in line for line in self.stderr_lines), timeout
            )

    @property
    def address(self) -> tuple[str, int]:
        assert self.endpoints, f"no ready line; stderr: {self.stderr_lines}"
        hostport = self.endpoints[0].split("://", 1)[1]
        host, _, port = hostport.rpartition(":")
        return host.strip("[]"), int(port)

    def stop(self, signum: int, timeout: float = WAIT) -> int:
        self.proc.send_signal(signum)
        code = self.proc.wait(timeout)
        self._reader.join(timeout)
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(WAIT)
        self._reader.join(WAIT)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def run_cli(
    *args: str, stdin: bytes = b"", timeout: float = WAIT
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "sockecho", *args],
        input=stdin,
        capture_output=True,
        timeout=timeout,
        check=False,
    )


#: What a test's child processes wrote: (title, lines) readers, shown in its report if it fails.
CHILD_OUTPUT = pytest.StashKey[list[Callable[[], tuple[str, list[str]]]]]()


def report_child_output(
    request: pytest.FixtureRequest, title: str, lines: Callable[[], list[str]]
) -> None:
    """Show ``lines()`` of a child process under ``title`` when the current test fails."""
    request.node.stash.setdefault(CHILD_OUTPUT, []).append(lambda: (title, lines()))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed test's report gets what its servers logged: the why is usually there."""
    report = yield
    if report.failed:
        for read in item.stash.get(CHILD_OUTPUT, []):
            title, lines = read()
            report.sections.append((title, "\n".join(lines) or "(nothing)"))
    return report


@pytest.fixture
def serve_process(request: pytest.FixtureRequest) -> Iterator[type[ServeProcess]]:
    started: list[ServeProcess] = []

    class Tracked(ServeProcess):
        def __init__(self, *args: str, ready_lines: int = 1) -> None:
            super().__init__(*args, ready_lines=ready_lines)
            started.append(self)
            report_child_output(
                request,
                f"stderr of sockecho serve {' '.join(args)} (#{len(started)})",
                self.logged_lines,
            )

    yield Tracked
    for proc in started:
        proc.close()


REPO = Path(__file__).resolve().parent.parent
