"""``--trace``: the narration is what really happened, in order, for every model and the client.

The tests run a scripted session (connect, send b'hola\\n', read the echo, close)
and parse the trace back into calls, then check the order of the lifecycle,
that the descriptor ``accept`` returned is the one ``recv``/``send``/``close``
use, and the byte counts.
"""

from __future__ import annotations

import io
import itertools
import re
import select
import selectors
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sockecho import Server, ServerConfig, i18n, narration
from sockecho.client import echo
from sockecho.config import DEFAULT_BACKLOG
from sockecho.servers.base import SocketCalls
from sockecho.trace import (
    PREVIEW_BYTES,
    TracedSelector,
    Tracer,
    preview,
    traced_calls,
    traced_socket_class,
)
from tests.conftest import (
    CONCURRENT_MODELS,
    REPO,
    WAIT,
    connect,
    recv_exactly,
    require_tool,
    reset,
    run_cli,
)
from tests.console_docs import normalise

#: One trace line: ``role  [thread] name(args)``, then `` ...  (why)`` or `` -> result`` or
#: nothing; the ``[thread]`` tag is there when another thread was blocked in a call meanwhile.
LINE = re.compile(
    r"^(?P<role>\S+)  (?:\[(?P<thread>[^\]]+)\] )?(?P<name>[\w.]+)\((?P<args>.*?)\)"
    r"(?:(?P<waiting> \.\.\.) +\((?P<why>blocks.*?)\)| +-> (?P<result>.*?))?"
    r"(?: +\[kernel: (?P<kernel>[^\]]+)\])?$"
)


@dataclass(frozen=True)
class Call:
    role: str
    name: str
    args: str
    result: str | None
    waiting: bool
    thread: str | None = None
    kernel: str | None = None


def parse(text: str) -> list[Call]:
    calls = []
    for line in text.splitlines():
        match = LINE.match(line)
        assert match, f"not a trace line: {line!r}"
        calls.append(
            Call(
                match["role"],
                match["name"],
                match["args"],
                match["result"],
                match["waiting"] is not None,
                match["thread"],
                match["kernel"],
            )
        )
    return calls


class Script:
    """Finds expected calls in order in a trace; each step may bind values for later steps."""

    def __init__(self, calls: list[Call]) -> None:
        self.calls = calls
        self.position = 0

    def expect(self, predicate: Callable[[Call], bool], what: str) -> Call:
        for index in range(self.position, len(self.calls)):
            call = self.calls[index]
            if not call.waiting and predicate(call):
                self.position = index + 1
                return call
        shown = "\n".join(map(str, self.calls[self.position :]))
        raise AssertionError(f"expected {what} after position {self.position}; rest:\n{shown}")


def fd_in(result: str | None) -> int:
    assert result is not None
    match = re.match(r"fd (\d+)", result)
    assert match, result
    return int(match[1])


@pytest.fixture
def trace_stream() -> io.StringIO:
    return io.StringIO()


@pytest.fixture
def traced_server(model: str, trace_stream: io.StringIO) -> Iterator[Server]:
    tracer = Tracer("server", trace_stream, color=False)
    config = ServerConfig(model=model, port=0, drain_timeout=1.0)
    with Server(config, calls=traced_calls(tracer)) as srv:
        yield srv


def run_session(srv: Server) -> int:
    """Connect, send b'hola\\n', read it back, close; return the client's own port."""
    with connect(srv.address) as sock:
        client_port = int(sock.getsockname()[1])
        sock.sendall(b"hola\n")
        assert recv_exactly(sock, 5) == b"hola\n"
    assert srv.stats.wait_for(lambda s: s.connections_closed == 1, WAIT)
    return client_port


def test_trace_narrates_the_whole_server_lifecycle_in_order(
    model: str, traced_server: Server, trace_stream: io.StringIO
) -> None:
    client_port = run_session(traced_server)
    traced_server.stop()
    calls = parse(trace_stream.getvalue())
    script = Script(calls)

    created = script.expect(lambda c: c.name == "socket", "socket()")
    assert created.args == "AF_INET, SOCK_STREAM"
    listener = fd_in(created.result)
    script.expect(
        lambda c: (
            c.name == "setsockopt" and c.args == f"fd {listener}, SOL_SOCKET, SO_REUSEADDR, 1"
        ),
        "SO_REUSEADDR on the listener",
    )
    bound = script.expect(lambda c: c.name == "bind", "bind()")
    assert bound.args == f"fd {listener}, ('127.0.0.1', 0)"
    assert bound.result is not None
    assert bound.result.startswith(f"port {traced_server.address[1]} ")
    listened = f"fd {listener}, {DEFAULT_BACKLOG}"
    script.expect(lambda c: c.name == "listen" and c.args == listened, "listen()")

    accepted = script.expect(
        lambda c: (
            c.name == "accept"
            and c.args == f"fd {listener}"
            and c.result is not None
            and c.result.startswith("fd ")
        ),
        "accept() returning a connection",
    )
    conn = fd_in(accepted.result)
    assert accepted.result == f"fd {conn}, peer 127.0.0.1:{client_port}"
    assert conn != listener

    reads = ("recv", "recv_into")
    # How each model learns that the client's bytes are there before reading them.
    if model == "select":
        script.expect(
            lambda c: (
                c.name == "select"
                and c.result is not None
                and re.search(rf"readable \[.*\b{conn}\b.*\]", c.result) is not None
            ),
            "select() reporting the connection readable",
        )
    elif model in ("selectors", "asyncio"):
        script.expect(
            lambda c: c.name == "epoll_ctl" and c.args == f"ADD, fd {conn}, READ",
            "the connection registered for reading",
        )
        script.expect(
            lambda c: c.name == "epoll_wait" and f"fd {conn} readable" in (c.result or ""),
            "epoll_wait() reporting the connection readable",
        )
    else:  # blocking models: the recv itself waits, and says so first
        # iterative: the idle limit is a socket timeout; threading: a sweeping thread instead
        limit = "300.0" if model == "iterative" else "None"
        script.expect(lambda c: c.name == "settimeout" and c.args == f"fd {conn}, {limit}", "idle")
        # (threading: the serving thread's next epoll_wait may be announced first)
        waiting = [c for c in calls[script.position :] if c.waiting and c.name != "epoll_wait"]
        assert waiting[0].name == "recv"
        assert waiting[0].args == f"fd {conn}, 65536"
    received = script.expect(
        lambda c: c.name in reads and c.args == f"fd {conn}, 65536", "the first read"
    )
    assert received.result == "5 bytes b'hola\\n'"
    echoed = script.expect(lambda c: c.name in ("send", "sendall"), "the echo")
    assert echoed.args == f"fd {conn}, 5 bytes"
    assert echoed.result == ("5 bytes" if echoed.name == "send" else None)
    eof = script.expect(lambda c: c.name in reads and c.args.startswith(f"fd {conn},"), "EOF")
    assert eof.result == "0 bytes: b'' (peer closed its side)"
    script.expect(lambda c: c.name == "close" and c.args == f"fd {conn}", "close(connection)")
    script.expect(lambda c: c.name == "close" and c.args == f"fd {listener}", "close(listener)")

    # Nothing used the connection's descriptor outside accept() .. close().
    opened = calls.index(accepted)
    closed = next(i for i, c in enumerate(calls) if c.name == "close" and c.args == f"fd {conn}")
    for index, call in enumerate(calls):
        if call.args.startswith(f"fd {conn},") or call.args == f"fd {conn}":
            if call.name.startswith("epoll"):
                continue  # interest changes are on the epoll descriptor's list
            assert opened < index <= closed, f"{call} outside the connection's life"


def test_trace_shows_a_reset_with_its_errno(
    traced_server: Server, trace_stream: io.StringIO
) -> None:
    with connect(traced_server.address) as sock:
        sock.sendall(b"hola\n")
        assert recv_exactly(sock, 5) == b"hola\n"  # the server is now reading again
        reset(sock)
    assert traced_server.stats.wait_for(lambda s: s.connections_closed == 1, WAIT)
    traced_server.stop()
    calls = parse(trace_stream.getvalue())
    script = Script(calls)
    accepted = script.expect(
        lambda c: c.name == "accept" and (c.result or "").startswith("fd "), "accept()"
    )
    conn = fd_in(accepted.result)
    script.expect(lambda c: c.name in ("recv", "recv_into") and "5 bytes" in (c.result or ""), "")
    failed = script.expect(
        lambda c: c.name in ("recv", "recv_into") and c.args.startswith(f"fd {conn},"),
        "the read that meets the reset",
    )
    assert failed.result == ("ConnectionResetError [ECONNRESET] (the peer reset the connection)")
    script.expect(lambda c: c.name == "close" and c.args == f"fd {conn}", "close after reset")


@pytest.mark.parametrize("model", CONCURRENT_MODELS)
def test_concurrent_connections_never_interleave_mid_line(
    traced_server: Server, trace_stream: io.StringIO
) -> None:
    clients = 8

    def session(index: int) -> None:
        message = f"client {index}\n".encode()
        with connect(traced_server.address) as sock:
            for _ in range(5):
                sock.sendall(message)
                assert recv_exactly(sock, len(message)) == message

    threads = [threading.Thread(target=session, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert traced_server.stats.wait_for(lambda s: s.connections_closed == clients, WAIT)
    calls = parse(trace_stream.getvalue())  # every line is whole, or parse() fails
    accepted = [c for c in calls if c.name == "accept" and (c.result or "").startswith("fd ")]
    assert len(accepted) == clients


def test_every_listen_call_uses_the_configured_backlog(model: str) -> None:
    out = io.StringIO()
    config = ServerConfig(model=model, port=0, backlog=64)
    with Server(config, calls=traced_calls(Tracer("server", out, color=False))):
        pass
    listens = [c for c in parse(out.getvalue()) if c.name == "listen"]
    assert listens
    assert all(c.args.endswith(", 64") for c in listens), listens


def test_udp_datagrams_are_narrated(model: str) -> None:
    out = io.StringIO()
    config = ServerConfig(model=model, port=0, udp=True, drain_timeout=1.0)
    with Server(config, calls=traced_calls(Tracer("server", out, color=False))) as srv:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(WAIT)
            sock.sendto(b"hola\n", srv.datagram_addresses[0])
            assert sock.recvfrom(100)[0] == b"hola\n"
            client = f"127.0.0.1:{sock.getsockname()[1]}"
            client_tuple = f"('127.0.0.1', {sock.getsockname()[1]})"
        assert srv.stats.wait_for(lambda s: s.datagrams_echoed == 1, WAIT)
    script = Script(parse(out.getvalue()))
    created = script.expect(lambda c: c.args == "AF_INET, SOCK_DGRAM", "the UDP socket")
    fd = fd_in(created.result)
    received = script.expect(lambda c: c.name.startswith("recvfrom"), "the datagram")
    assert received.args.startswith(f"fd {fd}, ")
    assert received.result == f"5 bytes b'hola\\n' from {client}"
    sent = script.expect(lambda c: c.name == "sendto", "the echo")
    assert (sent.args, sent.result) == (f"fd {fd}, 5 bytes, {client_tuple}", "5 bytes")


def test_a_server_without_trace_uses_the_plain_standard_library(model: str) -> None:
    with Server(model=model, port=0) as srv:
        assert srv.model.calls == SocketCalls(
            socket.socket, select.select, selectors.DefaultSelector
        )
        assert all(type(sock) is socket.socket for sock in srv.model.listeners)


def test_send_trace_narrates_the_client_lifecycle() -> None:
    with Server(model="selectors", port=0) as srv:
        port = srv.address[1]
        done = run_cli("send", "--trace", "--port", str(port), "hola")
    assert done.returncode == 0
    assert done.stdout == b"hola\n"
    stderr = done.stderr.decode()
    assert "\x1b[" not in stderr  # piped: no colour
    script = Script(parse(stderr))
    created = script.expect(lambda c: c.name == "socket", "socket()")
    fd = fd_in(created.result)
    script.expect(lambda c: c.name == "settimeout" and c.args == f"fd {fd}, 10.0", "timeout")
    connected = script.expect(lambda c: c.name == "connect", "connect()")
    assert connected.args == f"fd {fd}, ('127.0.0.1', {port})"
    assert connected.result == "connected"
    script.expect(lambda c: c.args == f"fd {fd}, IPPROTO_TCP, TCP_NODELAY, 1", "TCP_NODELAY")
    sent = script.expect(lambda c: c.name == "sendall", "sendall()")
    assert sent.args == f"fd {fd}, 5 bytes"
    script.expect(lambda c: c.name == "shutdown" and "SHUT_WR" in c.args, "shutdown(SHUT_WR)")
    received = script.expect(lambda c: c.name == "recv", "recv()")
    assert (received.args, received.result) == (f"fd {fd}, 5", "5 bytes b'hola\\n'")
    closed = script.expect(lambda c: c.name == "recv" and not c.waiting, "recv() of the close")
    assert closed.result == "0 bytes: b'' (peer closed its side)"
    script.expect(lambda c: c.name == "close" and c.args == f"fd {fd}", "close()")
    assert all(c.role == "client" for c in script.calls)


def test_send_trace_shows_connection_refused_with_errno() -> None:
    with socket.socket() as probe:  # a port nothing listens on: bound, never listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        done = run_cli("send", "--trace", "--port", str(port), "hola")
    assert done.returncode == 1
    lines = done.stderr.decode().splitlines()
    assert lines[-1].startswith(f"sockecho: error: connection refused by 127.0.0.1:{port}")
    calls = parse("\n".join(lines[:-1]))
    refused = [c for c in calls if c.name == "connect" and not c.waiting]
    assert (
        refused[0].result == "ConnectionRefusedError [ECONNREFUSED] (nothing listens on that port)"
    )


def test_partial_send_is_shown_as_partial() -> None:
    tracer_out = io.StringIO()
    cls = traced_socket_class(Tracer("client", tracer_out, color=False))
    left, right = socket.socketpair()
    with right, cls(fileno=left.detach()) as sock:
        sock.setblocking(False)
        big = bytes(16 * 1024 * 1024)  # more than any socket buffer: the kernel takes a part
        sent = sock.send(big)
    assert 0 < sent < len(big)
    line = next(c for c in parse(tracer_out.getvalue()) if c.name == "send")
    assert line.result == (
        f"{sent} of {len(big)} bytes (a partial send: the rest must be sent later)"
    )


def quoted_listing(document: Path, test_name: str) -> list[str]:
    """The ```text listing a tutorial quotes as the output of ``test_name`` (the first one
    after the line naming it)."""
    lines = document.read_text().splitlines()
    named = next(i for i, line in enumerate(lines) if test_name in line)
    start = next(i for i in range(named, len(lines)) if lines[i] == "```text") + 1
    end = next(i for i in range(start, len(lines)) if lines[i] == "```")
    return lines[start:end]


@pytest.mark.parametrize(("document", "lang"), [("tutorial.md", "en"), ("tutorial.es.md", "es")])
def test_the_tutorials_quote_a_reset_and_a_partial_send_as_the_trace_narrates_them(
    document: str, lang: str
) -> None:
    """Section 7 of both tutorials quotes these two traces; here they are made again, in the
    tutorial's language, and every quoted line must be one of theirs (fds and counts aside)."""
    i18n.set_language(lang)
    try:
        reset_trace = io.StringIO()
        tracer = Tracer("server", reset_trace, color=False)
        with Server(ServerConfig(model="selectors", port=0), calls=traced_calls(tracer)) as srv:
            with connect(srv.address) as sock:
                sock.sendall(b"hola\n")
                assert recv_exactly(sock, 5) == b"hola\n"
                reset(sock)
            assert srv.stats.wait_for(lambda s: s.connections_closed == 1, WAIT)
        partial_trace = io.StringIO()
        cls = traced_socket_class(Tracer("client", partial_trace, color=False))
        left, right = socket.socketpair()
        with right, cls(fileno=left.detach()) as sock:
            sock.setblocking(False)
            assert sock.send(bytes(16 * 1024 * 1024)) < 16 * 1024 * 1024
    finally:
        i18n.set_language("en")
    path = REPO / "docs" / document
    for test_name, trace in [
        ("test_trace_shows_a_reset_with_its_errno", reset_trace),
        ("test_partial_send_is_shown_as_partial", partial_trace),
    ]:
        narrated = {normalise(line) for line in trace.getvalue().splitlines()}
        quoted = quoted_listing(path, test_name)
        assert quoted, f"no listing after {test_name} in {document}"
        for line in quoted:
            assert normalise(line) in narrated, f"{document}: {line!r} is not narrated"


def test_payload_preview_is_truncated() -> None:
    assert preview(b"hola\n") == "b'hola\\n'"
    long = b"x" * (PREVIEW_BYTES + 10)
    assert preview(long) == repr(b"x" * PREVIEW_BYTES) + "..."


def test_colour_on_request_and_never_with_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    coloured = io.StringIO()
    Tracer("server", coloured, color=True).returned(narration.Call("close", ("fd 4",)))
    assert "\x1b[" in coloured.getvalue()
    assert "close(fd 4)" in coloured.getvalue()

    class FakeTerminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setenv("NO_COLOR", "1")
    plain = FakeTerminal()
    Tracer("server", plain).returned(narration.Call("close", ("fd 4",)))
    assert plain.getvalue() == "server  close(fd 4)\n"
    monkeypatch.delenv("NO_COLOR")
    terminal = FakeTerminal()
    Tracer("server", terminal).returned(narration.Call("close", ("fd 4",)))
    assert "\x1b[" in terminal.getvalue()


def test_traced_selector_narrates_interest_and_readiness() -> None:
    out = io.StringIO()
    left, right = socket.socketpair()
    with left, right, TracedSelector(Tracer("server", out, color=False)) as selector:
        selector.register(left, selectors.EVENT_READ)
        right.sendall(b"x")
        ready = selector.select(WAIT)
        selector.modify(left, selectors.EVENT_READ | selectors.EVENT_WRITE)
        selector.unregister(left)
    fd = ready[0][0].fd
    assert [key.fd for key, _ in ready] == [fd]
    calls = [c for c in parse(out.getvalue()) if not c.waiting]
    epoll_fd = fd_in(calls[0].result)
    assert [(c.name, c.args, c.result) for c in calls] == [
        ("epoll_create1", "", f"fd {epoll_fd}"),
        ("epoll_ctl", f"ADD, fd {fd}, READ", None),
        ("epoll_wait", f"timeout {WAIT:.2f}", f"fd {fd} readable"),
        ("epoll_ctl", f"MOD, fd {fd}, READ|WRITE", None),
        ("epoll_ctl", f"DEL, fd {fd}", None),
        ("close", f"fd {epoll_fd}", None),
    ]


@pytest.mark.skipif(sys.platform != "linux", reason="epoll is Linux's")
def test_epoll_descriptor_is_announced_and_closed() -> None:
    out = io.StringIO()
    TracedSelector(Tracer("server", out, color=False)).close()
    calls = parse(out.getvalue())
    assert [c.name for c in calls] == ["epoll_create1", "close"]
    assert calls[1].args == f"fd {fd_in(calls[0].result)}"


def test_trace_narrates_a_udp_echo(model: str, trace_stream: io.StringIO) -> None:
    tracer = Tracer("server", trace_stream, color=False)
    config = ServerConfig(model=model, port=0, udp=True, drain_timeout=1.0)
    with (
        Server(config, calls=traced_calls(tracer)) as srv,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client,
    ):
        client.bind(("127.0.0.1", 0))
        client.settimeout(WAIT)
        client.sendto(b"hola\n", srv.datagram_addresses[0])
        assert client.recv(100) == b"hola\n"
        port = client.getsockname()[1]
        peer = f"127.0.0.1:{port}"
        assert srv.stats.wait_for(lambda s: s.datagrams_echoed == 1, WAIT)
    script = Script(parse(trace_stream.getvalue()))
    created = script.expect(lambda c: c.name == "socket" and "SOCK_DGRAM" in c.args, "socket()")
    udp = fd_in(created.result)
    received = script.expect(lambda c: c.name == "recvfrom", "recvfrom()")
    fd, size = received.args.split(", ")
    assert fd == f"fd {udp}"
    assert int(size) >= 65535  # room for any datagram (asyncio asks for 256 KiB)
    assert received.result == f"5 bytes b'hola\\n' from {peer}"
    sent = script.expect(lambda c: c.name == "sendto", "sendto()")
    assert sent.args == f"fd {udp}, 5 bytes, ('127.0.0.1', {port})"
    assert sent.result == "5 bytes"


@pytest.mark.parametrize("udp", [False, True], ids=["tcp", "udp"])
def test_ping_trace_narrates_each_probe(udp: bool) -> None:
    with Server(model="selectors", port=0, udp=udp) as srv:
        port = srv.address[1]
        done = run_cli(
            "ping",
            "-c",
            "2",
            "-i",
            "0.05",
            "--trace",
            *(["--udp"] if udp else []),
            f"127.0.0.1:{port}",
        )
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().count(f"56 bytes from 127.0.0.1:{port}: seq=") == 2
    script = Script(parse(done.stderr.decode()))
    kind = "SOCK_DGRAM" if udp else "SOCK_STREAM"
    fd = fd_in(script.expect(lambda c: c.args == f"AF_INET, {kind}", "socket()").result)
    connected = script.expect(lambda c: c.name == "connect", "connect()")
    assert connected.result == (
        "default peer set (a UDP connect sends nothing)" if udp else "connected"
    )
    for _probe in range(2):
        sent = script.expect(lambda c: c.name in ("send", "sendall"), "a probe")
        assert sent.args == f"fd {fd}, 56 bytes"
        echoed = script.expect(lambda c: c.name == "recv", "its echo")
        assert echoed.result is not None
        assert echoed.result.startswith("56 bytes ")
    script.expect(lambda c: c.name == "close" and c.args == f"fd {fd}", "close()")


class ReaderGone(io.StringIO):
    """A trace stream whose reader leaves after ``lines`` lines (``2>&1 | head -3``)."""

    def __init__(self, lines: int) -> None:
        super().__init__()
        self.lines_left = lines

    def write(self, text: str) -> int:
        if self.lines_left <= 0:
            raise BrokenPipeError(32, "Broken pipe")
        self.lines_left -= text.count("\n")
        return super().write(text)


def test_a_trace_reader_that_goes_away_stops_the_trace_not_the_server(
    model: str, caplog: pytest.LogCaptureFixture
) -> None:
    stream = ReaderGone(lines=3)
    config = ServerConfig(model=model, port=0, drain_timeout=1.0)
    with Server(config, calls=traced_calls(Tracer("server", stream, color=False))) as srv:
        for _ in range(3):
            with connect(srv.address) as sock:
                sock.sendall(b"hola\n")
                assert recv_exactly(sock, 5) == b"hola\n"
        assert srv.stats.wait_for(lambda s: s.connections_closed == 3, WAIT)
    assert len(stream.getvalue().splitlines()) == 3
    stopped = [r for r in caplog.records if r.getMessage().startswith("--trace stopped")]
    assert len(stopped) == 1, caplog.text
    assert "BrokenPipeError [EPIPE]" in stopped[0].getMessage()


def test_a_trace_reader_that_goes_away_does_not_break_the_client() -> None:
    stream = ReaderGone(lines=1)
    with Server(model="selectors", port=0) as srv:
        socket_class = traced_socket_class(Tracer("client", stream, color=False))
        reply = echo(b"hola\n", *srv.address, WAIT, socket_class=socket_class)
    assert reply == b"hola\n"
    assert stream.getvalue().startswith("client  socket(")


def test_serve_trace_keeps_serving_after_its_stderr_reader_left() -> None:
    """``sockecho serve --trace 2>&1 | head``: the server outlives the pipe's reader."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "sockecho", "serve", "--trace", "--port", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # ends with the process, if it never gets ready
            if line.startswith("listening on tcp://"):
                port = int(line.rsplit(":", 1)[1])
                break
        else:
            pytest.fail(f"no ready line; exit code {proc.wait(WAIT)}")
        proc.stderr.close()  # the reader goes away; the next trace line meets EPIPE
        for _ in range(2):
            with connect(("127.0.0.1", port)) as sock:
                sock.sendall(b"hola\n")
                assert recv_exactly(sock, 5) == b"hola\n"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(WAIT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(WAIT)


def test_a_stop_from_another_thread_is_narrated_in_the_order_it_happened(
    monkeypatch: pytest.MonkeyPatch, trace_stream: io.StringIO
) -> None:
    """The stop's ``shutdown(SHUT_RD)`` comes before the ``close`` it leads to, tagged with
    the thread that made it, and the ``accept`` it fails says why.

    The real shutdown returns, then the test holds the stopping thread until the serving
    thread has closed the listener (or 0.5 s): a trace written after the call, outside
    the tracer's lock, would show ``close`` first.
    """
    closed = threading.Event()
    waiting = threading.Event()
    listener_close = "close(fd ?)"  # known once the server has opened its listener

    class WatchedTrace(io.StringIO):
        def write(self, text: str) -> int:
            if "epoll_wait(no timeout) ..." in text:
                waiting.set()
            if listener_close in text:
                closed.set()
            return super().write(text)

    stream = WatchedTrace()
    real_shutdown = socket.socket.shutdown

    def shutdown_then_linger(sock: socket.socket, how: int) -> None:
        real_shutdown(sock, how)
        if how == socket.SHUT_RD:
            closed.wait(0.5)  # never set with the fix: the serving thread waits for the lock

    monkeypatch.setattr(socket.socket, "shutdown", shutdown_then_linger)
    tracer = Tracer("server", stream, color=False)
    srv = Server(ServerConfig(model="iterative", port=0), calls=traced_calls(tracer))
    srv.start()
    listener = srv.model.listeners[0].fileno()
    listener_close = f"close(fd {listener})"
    assert waiting.wait(WAIT)  # the serving thread waits for a client: stop it from here
    srv.stop()
    calls = parse(stream.getvalue())
    names = [(c.name, c.args) for c in calls]
    assert names.index(("shutdown", f"fd {listener}, SHUT_RD")) < names.index(
        ("close", f"fd {listener}")
    ), stream.getvalue()
    stop = next(c for c in calls if c.name == "shutdown")
    assert stop.thread == threading.current_thread().name
    assert all(c.thread is None for c in calls if c.name != "shutdown")
    for failed in (c for c in calls if c.name == "accept"):
        assert failed.result == (
            "OSError [EINVAL] (the socket is not listening any more: "
            "a stop shut it down to refuse clients)"
        )


def test_asyncio_polls_that_find_nothing_are_folded_and_counted(
    trace_stream: io.StringIO,
) -> None:
    tracer = Tracer("server", trace_stream, color=False)
    with Server(ServerConfig(model="asyncio", port=0), calls=traced_calls(tracer)) as srv:
        run_session(srv)
    calls = parse(trace_stream.getvalue())
    polls = [c for c in calls if c.name == "epoll_wait" and c.args == "timeout 0.00"]
    assert polls
    folded = 0
    for poll in polls:
        assert poll.result is not None
        assert poll.result != "nothing ready (timeout)"  # one line per empty poll: a flood
        match = re.fullmatch(
            r"nothing ready, (\d+) times? \(polls that do not wait, folded since the last "
            r"wait shown\)",
            poll.result,
        )
        if match:
            folded += int(match[1])
        else:
            assert "readable" in poll.result or "writable" in poll.result, poll
    assert folded > 0  # asyncio does poll with timeout 0; the count says how often


def test_folded_polls_are_reported_before_the_next_wait_and_at_close() -> None:
    out = io.StringIO()
    left, right = socket.socketpair()
    with left, right:
        selector = TracedSelector(Tracer("server", out, color=False))
        selector.register(left, selectors.EVENT_READ)
        for _ in range(3):
            assert selector.select(0) == []
        right.sendall(b"x")
        assert len(selector.select(WAIT)) == 1
        assert selector.select(0) != []  # a poll that finds something is shown
        left.recv(1)
        assert selector.select(0) == []
        fd = left.fileno()
        selector.close()
    waits = [(c.args, c.result) for c in parse(out.getvalue()) if c.name == "epoll_wait"]
    folded = "nothing ready, {} (polls that do not wait, folded since the last wait shown)"
    assert waits == [
        ("timeout 0.00", folded.format("3 times")),
        (f"timeout {WAIT:.2f}", None),  # the announcement: ``epoll_wait(timeout 20.00) ...``
        (f"timeout {WAIT:.2f}", f"fd {fd} readable"),
        ("timeout 0.00", f"fd {fd} readable"),
        ("timeout 0.00", folded.format("1 time")),  # reported when the selector closes
    ]


def test_every_trace_line_is_worded_by_format_event(
    model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The narration has one entry point: a rewording there changes every line of a session
    (server and client), so wording and translation live in one place."""
    worded: list[narration.Event] = []
    original = narration.format_event

    def recording(event: narration.Event) -> tuple[str, str]:
        worded.append(event)
        call, tail = original(event)
        return "WORDED " + call, tail

    monkeypatch.setattr(narration, "format_event", recording)
    out = io.StringIO()
    config = ServerConfig(model=model, port=0, drain_timeout=1.0)
    with Server(config, calls=traced_calls(Tracer("server", out, color=False))) as srv:
        client_class = traced_socket_class(Tracer("client", out, color=False))
        assert echo(b"hola\n", *srv.address, WAIT, socket_class=client_class) == b"hola\n"
        assert srv.stats.wait_for(lambda s: s.connections_closed == 1, WAIT)
    lines = out.getvalue().splitlines()
    assert len(lines) == len(worded) > 10
    assert all(re.match(r"^(server|client)  (\[[^\]]+\] )?WORDED ", line) for line in lines)
    assert {"socket", "accept", "connect", "close"} <= {event.call.name for event in worded}


class CountingTracer(Tracer):
    """Counts the readiness waits that timed out, and says when there were enough."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.timeouts = 0
        self.idle_enough = threading.Event()

    def timed_out(self, call: narration.Call, wait: tuple[str, ...]) -> None:
        super().timed_out(call, wait)
        self.timeouts += 1
        if self.timeouts >= 6:
            self.idle_enough.set()


@pytest.mark.parametrize("model", ["select", "selectors", "asyncio"])
def test_an_idle_server_folds_its_repeated_timeouts_into_one_line(model: str) -> None:
    out = io.StringIO()
    tracer = CountingTracer("server", out, color=False)
    # idle_timeout 0.2 s: the loop wakes to sweep every 0.05 s, so it times out often.
    config = ServerConfig(model=model, port=0, idle_timeout=0.2)
    with Server(config, calls=tracer.socket_calls()) as srv:
        assert tracer.idle_enough.wait(WAIT)
        with connect(srv.address) as sock:
            sock.sendall(b"x")
            assert recv_exactly(sock, 1) == b"x"
    lines = out.getvalue().splitlines()
    timeouts = [line for line in lines if "nothing ready (timeout)" in line]
    folded = [line for line in timeouts if "more time" in line]
    repeats = [int(m[1]) for line in folded if (m := re.search(r"(\d+) more times?", line))]
    shown = len(timeouts) - len(folded)
    assert folded, "\n".join(lines)
    assert shown + sum(repeats) == tracer.timeouts, "every timeout is a line or in a count"
    # One line per idle stretch, not one per timeout: between two timeouts shown there is
    # always something that ended the first stretch (a socket ready). How many stretches
    # there are is the client's timing: on a busy machine a pause between its connect and
    # its send, or its read and its close, is a stretch of its own (often of one timeout).
    shown_at = [i for i, line in enumerate(lines) if line in timeouts and line not in folded]
    for first, second in itertools.pairwise(shown_at):
        between = lines[first + 1 : second]
        assert any(" -> " in line and "nothing ready" not in line for line in between), (
            "one line per idle stretch, not one per timeout:\n" + "\n".join(lines)
        )
    waits = [line for line in lines if line.rstrip().endswith(")") and " ... " in line]
    assert len(waits) < tracer.timeouts, "the repeated waits were announced one by one"


#: A small lifecycle through the traced socket, run under strace (tests the kernel names).
STRACED_SESSION = """
import socket, sys
from sockecho.trace import Tracer, traced_select
tracer = Tracer("demo", sys.stderr, color=False)
Socket = tracer.socket_class()
server = Socket(socket.AF_INET, socket.SOCK_STREAM)
server.bind(("127.0.0.1", 0))
server.listen(5)
client = Socket(socket.AF_INET, socket.SOCK_STREAM)
client.settimeout(5.0)
client.connect(server.getsockname())
conn, _ = server.accept()
client.sendall(b"hola")
conn.recv(100)
conn.setblocking(False)
conn.send(b"hola")
client.recv(100)
traced_select(tracer)([conn], [], [], 0.05)
client.shutdown(socket.SHUT_WR)
"""
#: The system calls strace is asked to show (close and memory calls are left out).
STRACED = "network,ioctl,poll,pselect6,epoll_wait,epoll_create1,epoll_ctl"


def kernel_names(trace_line: str) -> list[str]:
    """The system calls a trace line says were made: its ``[kernel: ...]`` or its own name."""
    match = re.search(r"\[kernel: ([^\]]+)\]", trace_line)
    named = match[1].split(" + ") if match else [trace_line.split()[1].split("(", maxsplit=1)[0]]
    return [re.match(r"[a-z_0-9]+", name)[0] for name in named]  # type: ignore[index]


def test_the_kernel_calls_named_by_the_trace_are_the_ones_strace_sees(tmp_path: Path) -> None:
    strace = require_tool("strace")
    log_file = tmp_path / "strace.log"
    done = subprocess.run(
        [
            strace,
            "-f",
            "-qq",
            "-e",
            f"trace={STRACED}",
            "-o",
            str(log_file),
            sys.executable,
            "-c",
            STRACED_SESSION,
        ],
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    narrated: list[str] = []
    announced: set[str] = set()  # calls whose waiting line named them: their result does not
    for line in done.stderr.splitlines():
        call = re.match(r"demo\s+(\S.*?\))", line)
        if call is None:
            continue
        if " ... " in line:
            announced.add(call[1])
        elif call[1] in announced:
            announced.discard(call[1])
            continue
        narrated += [name for name in kernel_names(line) if name != "close"]
    seen = [
        m[1]
        for line in log_file.read_text().splitlines()
        if (m := re.match(r"\d+\s+(\w+)\(", line)) and "resumed" not in line
    ]
    assert {"accept4", "recvfrom", "sendto", "ioctl", "poll", "pselect6"} <= set(narrated)
    position = 0
    for name in narrated:  # every call the trace names, in the order strace saw them
        assert name in seen[position:], f"{name} after {seen[:position][-5:]}; strace: {seen}"
        position = seen.index(name, position) + 1
