"""Failure paths of every model: a crash of the model, a bug in one connection, the stop's lock.

A crash (an exception escaping the model's own loop) must become
:class:`~sockecho.errors.ServerFailed` within the drain time, with every
connection closed, and the CLI must exit 1 with one line. An exception while
serving one connection must close that connection only, log it (traceback at
``-v``), and leave the server serving everyone else.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from sockecho import Server, ServerConfig, net
from sockecho.core import EchoSession
from sockecho.errors import ServerFailed
from sockecho.servers import asyncio_impl
from sockecho.servers.blocking import BlockingModel
from sockecho.servers.readiness import ReadinessModel
from tests.conftest import WAIT, ServeProcess, connect, recv_exactly

DRAIN = 1.0
#: How late the asyncio model's sweeper (where its crash is injected) runs after arming.
SWEEP = 1.0


class Injected(RuntimeError):
    """The bug the tests plant."""


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server closed ``sock`` (EOF or reset), reading whatever echo is left."""
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return True


def plant_crash(srv: Server, armed: threading.Event, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the model's own loop raise once ``armed`` is set (and, for the blocking and
    readiness models, a client connects)."""
    model: Any = srv.model
    if isinstance(model, BlockingModel):
        next_client = model.next_client

        def crashing_next_client() -> tuple[socket.socket, net.SockAddr] | None:
            accepted = next_client()
            if armed.is_set() and accepted is not None:
                accepted[0].close()
                raise Injected("planted in the accept loop")
            return accepted

        model.next_client = crashing_next_client
    elif isinstance(model, ReadinessModel):
        accept_ready = model.accept_ready

        def crashing_accept_ready(listener: socket.socket) -> None:
            accept_ready(listener)
            if armed.is_set():
                raise Injected("planted in the readiness loop")

        model.accept_ready = crashing_accept_ready
    else:
        idle_connections = asyncio_impl.idle_connections

        def crashing_idle_connections(*args: Any) -> Any:
            if armed.is_set():
                raise Injected("planted in the idle sweeper")
            return idle_connections(*args)

        monkeypatch.setattr(asyncio_impl, "idle_connections", crashing_idle_connections)


def test_a_crash_of_the_model_becomes_server_failed_within_the_drain_time(
    model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    srv = Server(ServerConfig(model=model, port=0, drain_timeout=DRAIN, idle_timeout=60))
    armed = threading.Event()
    plant_crash(srv, armed, monkeypatch)
    srv.start()
    try:
        lingering = None
        if model != "iterative":  # (iterative serves one client at a time: none may linger)
            lingering = connect(srv.address)
            lingering.sendall(b"hi")
            assert recv_exactly(lingering, 2) == b"hi"
        armed.set()
        crashed_at = time.monotonic()
        if model != "asyncio":
            with connect(srv.address):  # the trigger: the next accept
                pass
        assert srv.stopped.wait(WAIT), "the model never stopped after its crash"
        took = time.monotonic() - crashed_at
        bound = DRAIN + 1.0 + (SWEEP if model == "asyncio" else 0.0)
        assert took <= bound, f"stopped {took:.2f} s after the crash, bound {bound} s"
        with pytest.raises(ServerFailed, match="Injected"):
            srv.join(WAIT)
        if lingering is not None:
            with lingering:
                assert closed_by_server(lingering)
        with pytest.raises(ConnectionRefusedError), socket.create_connection(srv.address):
            pass  # the listener is closed too
    finally:
        srv.request_stop(graceful=False)
        srv.stopped.wait(WAIT)


CRASH_LAUNCHER = """
import sys
from sockecho import cli
from sockecho.servers.blocking import BlockingModel

next_client = BlockingModel.next_client
calls = []

def crashing_next_client(self):
    accepted = next_client(self)
    calls.append(accepted)
    if len(calls) == 2:  # the second client
        raise RuntimeError("planted in the accept loop")
    return accepted

BlockingModel.next_client = crashing_next_client
sys.exit(cli.main(sys.argv[1:]))
"""


def test_cli_reports_a_crashed_model_in_one_line_and_exits_1(
    serve_process: type[ServeProcess],
) -> None:
    launcher = type("CrashingServe", (serve_process,), {"launcher": ("-c", CRASH_LAUNCHER)})
    srv = launcher("--model", "threading", "--port", "0", "--drain-timeout", str(DRAIN))
    with connect(srv.address) as lingering:
        lingering.sendall(b"hi")
        assert recv_exactly(lingering, 2) == b"hi"
        crashed_at = time.monotonic()
        with connect(srv.address):
            pass
        assert srv.proc.wait(WAIT) == 1
        assert time.monotonic() - crashed_at <= DRAIN + 1.0 + 1.0  # (+1 s: the interpreter exits)
        assert closed_by_server(lingering)
    srv.close()
    errors = [line for line in srv.stderr_lines if line.startswith("sockecho: error:")]
    assert len(errors) == 1, srv.stderr_lines
    assert "RuntimeError" in errors[0]
    assert not any("Traceback" in line for line in srv.stderr_lines)


class PoisonedSession(EchoSession):
    """A session that fails (as a bug of ours would) for the peers in ``poisoned``."""

    poisoned: set[str] = set()  # noqa: RUF012 - per-test, reset by the fixture

    def echoed(self, n: int) -> None:
        if self.peer in self.poisoned:
            raise Injected(f"planted for {self.peer}")
        super().echoed(n)

    def data_received(self, data: bytes | bytearray | memoryview) -> None:
        if self.peer in self.poisoned:
            raise Injected(f"planted for {self.peer}")
        super().data_received(data)


@pytest.fixture
def poison(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[socket.socket], str]]:
    """Make the sessions of the given client sockets fail; returns each one's peer name."""
    monkeypatch.setattr("sockecho.servers.base.EchoSession", PoisonedSession)

    def poison_client(sock: socket.socket) -> str:
        peer = net.format_sockaddr(sock.getsockname())
        PoisonedSession.poisoned.add(peer)
        return peer

    yield poison_client
    PoisonedSession.poisoned.clear()


def test_a_bug_in_one_connection_closes_it_alone_and_is_logged(
    model: str, poison: Callable[[socket.socket], str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="sockecho")
    # (Clients are created before the server's session for them, so the poison is in place.)
    with Server(ServerConfig(model=model, port=0, drain_timeout=DRAIN)) as srv:
        bystander = None
        if model != "iterative":
            bystander = connect(srv.address)
            bystander.sendall(b"before")
            assert recv_exactly(bystander, 6) == b"before"
        victim = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        victim.bind(("127.0.0.1", 0))
        peer = poison(victim)
        victim.settimeout(WAIT)
        victim.connect(srv.address)
        with victim:
            victim.sendall(b"boom")
            assert closed_by_server(victim)
        assert srv.stats.wait_for(lambda s: s.connection_errors >= 1, WAIT)
        if bystander is not None:
            with bystander:
                bystander.sendall(b"after")
                assert recv_exactly(bystander, 5) == b"after"
        with connect(srv.address) as newcomer:
            newcomer.sendall(b"new")
            assert recv_exactly(newcomer, 3) == b"new"
    closes = [r for r in caplog.records if r.getMessage().startswith(f"close {peer}:")]
    assert closes, [r.getMessage() for r in caplog.records]
    assert closes[0].levelno == logging.WARNING
    assert "Injected" in closes[0].getMessage()
    tracebacks = [
        r
        for r in caplog.records
        if r.levelno == logging.DEBUG and r.exc_info and isinstance(r.exc_info[1], Injected)
    ]
    assert tracebacks, "the traceback is not logged at -v"


def test_the_threading_model_leaves_the_process_thread_stack_size_alone() -> None:
    before = threading.stack_size()
    with Server(ServerConfig(model="threading", port=0)) as srv, connect(srv.address) as sock:
        sock.sendall(b"x")
        assert recv_exactly(sock, 1) == b"x"
        assert threading.stack_size() == before
    assert threading.stack_size() == before


@pytest.mark.parametrize("model", ["iterative", "threading"])
def test_blocking_models_shut_listeners_down_under_the_connections_lock(model: str) -> None:
    """wake() shuts the listeners down while holding the lock close_listeners() takes, so it
    never reaches a descriptor that was closed and reused meanwhile."""
    with Server(ServerConfig(model=model, port=0, drain_timeout=DRAIN)) as srv:
        blocking = srv.model
        assert isinstance(blocking, BlockingModel)
        with blocking._open_changed:
            stopper = threading.Thread(target=srv.request_stop)
            stopper.start()
            stopper.join(0.2)
            assert stopper.is_alive(), "wake() did not wait for the lock"
            with connect(srv.address):  # still listening: nothing was shut down yet
                pass
        stopper.join(WAIT)
        assert srv.stopped.wait(WAIT)
