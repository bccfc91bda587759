"""The client library against real servers, including ones that misbehave on purpose."""

from __future__ import annotations

import errno
import io
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from sockecho import EchoMismatch, Server, client
from sockecho.bench import BenchSpec, run_bench
from sockecho.errors import ConnectError, EchoTimeout, OutputError
from tests.conftest import WAIT


@pytest.fixture
def misbehaving_server() -> Iterator[Callable[[Callable[[bytes], bytes]], tuple[str, int]]]:
    """A one-connection server that replies with ``transform(received)`` then closes."""
    listeners: list[socket.socket] = []
    threads: list[threading.Thread] = []

    def start(transform: Callable[[bytes], bytes]) -> tuple[str, int]:
        listener = socket.create_server(("127.0.0.1", 0))
        listeners.append(listener)

        def serve() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(10)
                data = conn.recv(65536)
                conn.sendall(transform(data))

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        threads.append(thread)
        host, port = listener.getsockname()[:2]
        return host, port

    yield start
    for listener in listeners:
        listener.close()
    for thread in threads:
        thread.join(10)


def test_echo_returns_the_identical_reply(server: Server) -> None:
    assert client.echo(b"hola\n", *server.address) == b"hola\n"


def test_echo_reports_a_corrupted_reply(misbehaving_server: Callable[..., tuple[str, int]]) -> None:
    address = misbehaving_server(lambda data: data.upper())
    with pytest.raises(EchoMismatch, match="differs from what was sent at byte 0"):
        client.echo(b"hola\n", *address)


def test_echo_reports_a_short_reply(misbehaving_server: Callable[..., tuple[str, int]]) -> None:
    address = misbehaving_server(lambda data: data[:2])
    with pytest.raises(EchoMismatch, match="short: 2 of 5 bytes"):
        client.echo(b"hola\n", *address)


def test_echo_times_out_on_a_silent_server() -> None:
    with (
        socket.create_server(("127.0.0.1", 0)) as silent,  # listens, never answers
        pytest.raises(EchoTimeout),
    ):
        client.echo(b"hola\n", *silent.getsockname()[:2], timeout=0.2)


def test_connect_refused_names_the_address() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        with pytest.raises(ConnectError, match=f"connection refused by 127.0.0.1:{port}"):
            client.connect("127.0.0.1", port)


CONNECT_FAILURES = [
    pytest.param(
        ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"),
        "connection refused by {where} (is a server running?)",
        id="refused",
    ),
    pytest.param(
        TimeoutError("timed out"),
        "timed out connecting to {where} after 2 s (is the host reachable?)",
        id="timeout",
    ),
    pytest.param(
        OSError(errno.EHOSTUNREACH, "No route to host"),
        "cannot connect to {where}: No route to host",
        id="unreachable",
    ),
]


@pytest.mark.parametrize(("error", "line"), CONNECT_FAILURES)
def test_send_and_bench_say_the_same_line_for_a_failed_connect(
    error: OSError, line: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One translation of a failed connect, used by every client (``send``, ``bench``)."""

    class FailingSocket(socket.socket):
        def connect(self, address: Any, /) -> None:
            raise error

    def failing_create_connection(*args: Any, **kwargs: Any) -> socket.socket:
        raise error

    expected = line.format(where="127.0.0.1:7")
    with pytest.raises(ConnectError) as sent:
        client.connect("127.0.0.1", 7, timeout=2, socket_class=FailingSocket)
    assert str(sent.value) == expected
    monkeypatch.setattr(socket, "create_connection", failing_create_connection)
    with pytest.raises(ConnectError) as benched:
        run_bench(BenchSpec(host="127.0.0.1", port=7, timeout=2))
    assert str(benched.value) == expected


def test_stream_pipes_a_large_input_without_deadlock(server: Server) -> None:
    payload = os.urandom(8 * 1024 * 1024)
    sink = io.BytesIO()
    result = client.stream(io.BytesIO(payload), sink, *server.address)
    assert sink.getvalue() == payload
    assert result.bytes_sent == result.bytes_received == len(payload)
    assert result.intact


def test_stream_reports_a_short_echo(misbehaving_server: Callable[..., tuple[str, int]]) -> None:
    address = misbehaving_server(lambda data: data[:3])
    with pytest.raises(EchoMismatch, match=r"short|connection failed"):
        client.stream(io.BytesIO(b"hola mundo"), io.BytesIO(), *address)


def test_stream_reports_a_different_echo(
    misbehaving_server: Callable[..., tuple[str, int]],
) -> None:
    address = misbehaving_server(lambda data: data[::-1])
    with pytest.raises(EchoMismatch, match="differs"):
        client.stream(io.BytesIO(b"hola mundo"), io.BytesIO(), *address)


def test_echo_reports_extra_bytes(misbehaving_server: Callable[..., tuple[str, int]]) -> None:
    address = misbehaving_server(lambda data: data + b"EXTRA")
    with pytest.raises(EchoMismatch, match="extra bytes: 10 came back for 5 sent"):
        client.echo(b"hola\n", *address)


def test_echo_of_a_message_larger_than_the_socket_buffers_does_not_deadlock(
    server: Server,
) -> None:
    message = os.urandom(32 * 1024 * 1024)
    assert client.echo(message, *server.address) == message


@pytest.fixture
def never_closing_server() -> Iterator[tuple[str, int]]:
    """Echoes everything, even after the client's half-close, but never closes."""
    listener = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)
            done.wait(10)  # EOF seen: keep the connection open until the test ends

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[:2]
    done.set()
    thread.join(10)
    listener.close()


def test_stream_accepts_a_complete_echo_from_a_server_that_never_closes(
    never_closing_server: tuple[str, int],
) -> None:
    sink = io.BytesIO()
    result = client.stream(io.BytesIO(b"x" * 100_000), sink, *never_closing_server, timeout=5)
    assert result.intact
    assert sink.getvalue() == b"x" * 100_000


#: Seconds a LateEndingSource waits, after its echo came back, before it ends.
LATE_END = 0.3


class OneLineSource(io.RawIOBase):
    """An input that gives one line, then waits in :meth:`after_the_line` before it ends."""

    def __init__(self) -> None:
        self.given = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if not self.given:
            self.given = True
            buffer[:5] = b"hola\n"
            return 5
        self.after_the_line()
        return 0

    def after_the_line(self) -> None:
        raise NotImplementedError


class LateEndingSource(OneLineSource):
    """An input that gives one line and ends only a while after its echo came back: the
    sending thread half-closes after the receiving side already holds the whole echo."""

    def __init__(self, echoed: threading.Event) -> None:
        super().__init__()
        self.echoed = echoed

    def after_the_line(self) -> None:
        assert self.echoed.wait(WAIT)
        time.sleep(LATE_END)  # the late end under test, not synchronisation


class SignallingSink(io.BytesIO):
    """A sink that sets ``echoed`` once something was written to it."""

    def __init__(self, echoed: threading.Event) -> None:
        super().__init__()
        self.echoed = echoed

    def write(self, data: Any) -> int:
        written = super().write(data)
        self.echoed.set()
        return written


def test_stream_accepts_a_whole_echo_that_came_back_before_the_input_ended(
    never_closing_server: tuple[str, int],
) -> None:
    echoed = threading.Event()
    sink = SignallingSink(echoed)
    result = client.stream(LateEndingSource(echoed), sink, *never_closing_server, timeout=1)
    assert result.intact
    assert sink.getvalue() == b"hola\n"


class EndlessSource(OneLineSource):
    """An input that gives one line, then never ends (a terminal nobody types into)."""

    def after_the_line(self) -> None:
        threading.Event().wait(30)


def test_stream_reports_a_server_that_closes_before_the_input_ends(
    misbehaving_server: Callable[..., tuple[str, int]],
) -> None:
    address = misbehaving_server(lambda data: data)  # echoes the first chunk, then closes
    source = io.BufferedReader(EndlessSource())
    with pytest.raises(EchoMismatch, match="closed the connection before the input ended"):
        client.stream(source, io.BytesIO(), *address, timeout=5)


class FullDisk(io.RawIOBase):
    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")


def test_stream_blames_the_output_not_the_server_when_writing_fails(server: Server) -> None:
    with pytest.raises(OutputError, match="cannot write the echo: No space left"):
        client.stream(io.BytesIO(b"hola"), FullDisk(), *server.address)  # type: ignore[arg-type]


class KernelGivesUp(socket.socket):
    """A socket whose connect() times out in the kernel (ETIMEDOUT), with no timeout set."""

    def connect(self, address: Any) -> None:
        raise TimeoutError(errno.ETIMEDOUT, "Connection timed out")


def test_a_kernel_timeout_without_a_timeout_of_ours_is_one_line() -> None:
    with pytest.raises(ConnectError, match=r"^timed out connecting to 127\.0\.0\.1:9 \(is the"):
        client.connect("127.0.0.1", 9, timeout=None, socket_class=KernelGivesUp)
