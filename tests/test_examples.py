"""The course's exercises in examples/: run them against sockecho, and sockecho against them.

Each example server is started as a student would (``python examples/X.py HOST 0``)
and is ready when it prints ``listening on tcp://HOST:PORT``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sockecho import Server, ServerConfig
from tests.conftest import (
    REPO,
    WAIT,
    connect,
    recv_exactly,
    report_child_output,
    reset,
    run_cli,
)

EXAMPLES = REPO / "examples"
SERVERS = ["echo_server.py", "select_server.py", "threading_server.py"]
#: Kept as the course handout wrote them, mistakes included (docs/tutorial.md, section 4).
FLAWED = {"handout_server.py", "handout_client.py"}
#: A child that may keep only descriptors 0-4 open: the listener is 3, one client 4.
FIVE_DESCRIPTORS = "import resource; resource.setrlimit(resource.RLIMIT_NOFILE, (5, 5))"
#: A child whose next descriptor after the listener is 1024, past select()'s FD_SETSIZE.
NEXT_FD_IS_1024 = """
import os, resource
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (2048, max(hard, 2048)))
while os.open(os.devnull, os.O_RDONLY) < 1022:
    pass
"""
#: The exercise-2 servers: they serve several clients at once.
CONCURRENT_SERVERS = ["select_server.py", "threading_server.py"]
#: How long a client waits to show that exercise 1's server is busy with another client.
BUSY_PROBE = 0.5


class ExampleServer:
    """An example server in a child process, ready once it printed its ready line."""

    def __init__(self, name: str, prepare: str = "") -> None:
        # ``prepare``: Python run in the child before the example (limits, descriptors).
        script = str(EXAMPLES / name)
        command = [sys.executable, script, "127.0.0.1", "0"]
        if prepare:
            run = f"import runpy, sys; sys.argv = {command[1:]!r}; runpy.run_path({script!r}, "
            command = [sys.executable, "-c", f"{prepare}\n{run}run_name='__main__')"]
        self.proc = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.lines: list[str] = []
        self.ready_line = ""
        ready = threading.Event()

        def read() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.lines.append(line.rstrip("\n"))
                if line.startswith("listening on tcp://"):
                    self.ready_line = line.strip()
                    ready.set()
            ready.set()  # ended without a ready line: the assertion below reports it

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()
        assert ready.wait(WAIT)
        assert self.ready_line, f"no ready line; output: {self.lines}"
        self.port = int(self.ready_line.rsplit(":", 1)[1])
        self.address = ("127.0.0.1", self.port)

    def interrupt(self) -> int:
        """Ctrl-C, as a student stops it; the exit code."""
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(WAIT)
        self._reader.join(WAIT)
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(WAIT)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def start_example(request: pytest.FixtureRequest) -> Iterator[type[ExampleServer]]:
    started: list[ExampleServer] = []

    class Tracked(ExampleServer):
        def __init__(self, name: str, prepare: str = "") -> None:
            super().__init__(name, prepare)
            started.append(self)
            report_child_output(request, f"stdout of examples/{name}", lambda: list(self.lines))

    yield Tracked
    for server in started:
        server.close()


def run_example_client(port: int, *words: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / "echo_client.py"), "127.0.0.1", str(port), *words],
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )


@pytest.mark.parametrize("name", SERVERS)
def test_example_server_echoes_for_sockecho_send(
    name: str, start_example: type[ExampleServer]
) -> None:
    server = start_example(name)
    done = run_cli("send", "--port", str(server.port), "hola", "mundo")
    assert (done.returncode, done.stdout) == (0, b"hola mundo\n"), done.stderr
    # 1 MiB through stdin: many recv()s of at most 1024 bytes, then a half-close.
    payload = os.urandom(1024 * 1024)
    streamed = run_cli("send", "--port", str(server.port), stdin=payload)
    assert streamed.returncode == 0, streamed.stderr
    assert streamed.stdout == payload
    assert server.interrupt() == 0  # Ctrl-C: closed cleanly, no traceback


@pytest.mark.parametrize("name", SERVERS)
def test_example_server_survives_a_client_reset(
    name: str, start_example: type[ExampleServer]
) -> None:
    server = start_example(name)
    with connect(server.address) as sock:
        sock.sendall(b"hola\n")
        assert recv_exactly(sock, 5) == b"hola\n"
        reset(sock)  # RST: the server's recv() raises ConnectionResetError
    done = run_cli("send", "--port", str(server.port), "sigo vivo")
    assert (done.returncode, done.stdout) == (0, b"sigo vivo\n")
    assert server.interrupt() == 0
    assert any("Connection reset by peer" in line for line in server.lines), server.lines


def test_example_client_against_every_sockecho_model(model: str) -> None:
    with Server(ServerConfig(model=model, port=0)) as srv:
        done = run_example_client(srv.address[1], "hola", "mundo")
    assert (done.returncode, done.stdout, done.stderr) == (0, "hola mundo\n", "")


def test_example_client_against_example_server(start_example: type[ExampleServer]) -> None:
    server = start_example("echo_server.py")
    done = run_example_client(server.port)
    assert (done.returncode, done.stdout) == (0, "hola\n")


def test_example_client_reports_connection_refused() -> None:
    with socket.socket() as probe:  # bound but not listening: connecting is refused
        probe.bind(("127.0.0.1", 0))
        done = run_example_client(probe.getsockname()[1])
    assert done.returncode == 1
    assert done.stderr.startswith("error en el socket: [Errno 111] Connection refused")


@pytest.mark.parametrize("name", CONCURRENT_SERVERS)
def test_exercise_2_servers_echo_to_two_clients_at_once(
    name: str, start_example: type[ExampleServer]
) -> None:
    server = start_example(name)
    with connect(server.address) as first, connect(server.address) as second:
        first.sendall(b"primero\n")
        second.sendall(b"segundo\n")  # the first is still connected: both are served
        assert recv_exactly(second, 8) == b"segundo\n"
        assert recv_exactly(first, 8) == b"primero\n"
        first.sendall(b"otra vez\n")
        assert recv_exactly(first, 9) == b"otra vez\n"


def test_exercise_1_server_makes_a_second_client_wait(
    start_example: type[ExampleServer],
) -> None:
    server = start_example("echo_server.py")
    with connect(server.address) as first, connect(server.address) as second:
        first.sendall(b"primero\n")
        assert recv_exactly(first, 8) == b"primero\n"  # the server is now busy with `first`
        second.sendall(b"segundo\n")  # queued by the kernel, not read by the server
        second.settimeout(BUSY_PROBE)
        with pytest.raises(TimeoutError):
            second.recv(8)
        second.settimeout(WAIT)
        first.close()  # now accept() returns `second` and it gets its echo
        assert recv_exactly(second, 8) == b"segundo\n"


def send_until_blocked(sock: socket.socket) -> int:
    """Send without reading until a send waits BUSY_PROBE for room; the bytes sent."""
    sock.settimeout(BUSY_PROBE)
    sent = 0
    try:
        while sent < 1 << 30:  # loopback buffers hold a few MiB; a bound all the same
            sent += sock.send(b"x" * 65536)
    except TimeoutError:
        return sent
    raise AssertionError(f"{sent} bytes went without the peer stopping to read")


#: The course's exercises; examples/locustfile.py shows sockecho.locust, so it imports sockecho.
EXERCISES = sorted(path for path in EXAMPLES.glob("*.py") if path.name != "locustfile.py")


@pytest.mark.parametrize("path", EXERCISES, ids=lambda p: p.name)
def test_examples_stand_alone_and_stay_short(path: Path) -> None:
    text = path.read_text()
    imports = [line for line in text.splitlines() if line.startswith(("import ", "from "))]
    assert not [line for line in imports if "sockecho" in line]
    assert len(text.splitlines()) <= 60  # about 50 lines: a student reads it in one screen
    if path.name not in FLAWED:
        assert "except OSError" in text
        assert "finally:" in text


@pytest.mark.parametrize("name", CONCURRENT_SERVERS)
def test_exercise_2_servers_survive_running_out_of_descriptors_in_accept(
    name: str, start_example: type[ExampleServer]
) -> None:
    server = start_example(name, FIVE_DESCRIPTORS)
    with connect(server.address) as first:
        first.sendall(b"uno\n")
        assert recv_exactly(first, 4) == b"uno\n"  # `first` holds the last descriptor
        with connect(server.address) as second:  # queued by the kernel; accept() gets EMFILE
            second.sendall(b"dos\n")
            second.settimeout(BUSY_PROBE)
            with pytest.raises(TimeoutError):
                second.recv(4)
            second.settimeout(WAIT)
            first.close()  # a descriptor is free again: the next accept() takes `second`
            assert recv_exactly(second, 4) == b"dos\n"
    assert server.interrupt() == 0
    assert any("Too many open files" in line for line in server.lines), server.lines


def test_exercise_1_server_survives_running_out_of_descriptors_in_accept(
    start_example: type[ExampleServer],
) -> None:
    server = start_example("echo_server.py", FIVE_DESCRIPTORS.replace("(5, 5)", "(4, 4)"))
    with connect(server.address):
        deadline = time.monotonic() + WAIT
        while not any("Too many open files" in line for line in server.lines):
            assert time.monotonic() < deadline, server.lines
            assert server.proc.poll() is None, server.lines
            time.sleep(0.05)
    assert server.proc.poll() is None  # an accept() error is not the end of the server
    assert server.interrupt() == 0


def test_select_example_refuses_a_descriptor_select_cannot_watch(
    start_example: type[ExampleServer],
) -> None:
    server = start_example("select_server.py", NEXT_FD_IS_1024)
    with connect(server.address) as refused:
        assert refused.recv(1) == b""  # closed by the server: descriptor 1024
    assert server.proc.poll() is None, server.lines
    assert server.interrupt() == 0
    assert any("rechazado" in line and "fd 1024" in line for line in server.lines), server.lines


def test_select_example_freezes_while_one_client_does_not_read(
    start_example: type[ExampleServer],
) -> None:
    """The limit select_server.py states: its sendall() blocks on a client that does not read."""
    server = start_example("select_server.py")
    with connect(server.address) as lazy:
        send_until_blocked(lazy)  # the buffers fill: the server stopped reading
        with connect(server.address) as other:
            other.sendall(b"hola\n")
            other.settimeout(BUSY_PROBE)
            with pytest.raises(TimeoutError):  # frozen in the lazy client's sendall()
                other.recv(5)
            other.settimeout(WAIT)
            reset(lazy)  # the blocked sendall() fails; the server goes on
            assert recv_exactly(other, 5) == b"hola\n"
    assert server.interrupt() == 0
