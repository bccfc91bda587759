"""Promises 2 and 3: idle connections are closed; connection limits refuse at once, quietly.

These run the server in-process (``sockecho.Server``) and wait on its counters.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from sockecho import MODELS, Server, ServerConfig
from sockecho.config import SELECT_MAX_CONNECTIONS
from sockecho.errors import ConfigError
from tests.conftest import (
    CONCURRENT_MODELS,
    WAIT,
    ServeProcess,
    connect,
    recv_exactly,
    recv_until_eof,
)

#: Seconds: short, so the tests are quick, but well above the time one echo takes.
IDLE_TIMEOUT = 0.5


def echo_once(sock: socket.socket, message: bytes = b"ping") -> bytes:
    sock.sendall(message)
    return recv_exactly(sock, len(message))


def closed_by_server(sock: socket.socket) -> bool:
    """True when the server has closed (or reset) this connection."""
    try:
        return recv_until_eof(sock) == b""
    except ConnectionResetError:
        return True


@pytest.fixture
def idle_server(model: str) -> Iterator[Server]:
    config = ServerConfig(model=model, port=0, idle_timeout=IDLE_TIMEOUT, drain_timeout=0.5)
    with Server(config) as srv:
        yield srv


def test_silent_client_is_closed_after_the_idle_timeout_and_counted(idle_server: Server) -> None:
    with connect(idle_server.address) as sock:
        quiet_since = time.monotonic()  # before the server's last activity (reading the ping)
        assert echo_once(sock) == b"ping"
        assert closed_by_server(sock)
        waited = time.monotonic() - quiet_since
    assert idle_server.stats.wait_for(lambda s: s.idle_closed == 1, WAIT)
    assert IDLE_TIMEOUT * 0.9 <= waited < IDLE_TIMEOUT + 2.0


def test_client_that_stops_reading_is_idle_too(idle_server: Server) -> None:
    with connect(idle_server.address) as sock:
        sock.setblocking(False)
        pushed = 0
        while pushed < 64 * 1024 * 1024:  # until the server stops taking bytes (bounded)
            try:
                pushed += sock.send(bytes(65536))
            except BlockingIOError:
                break
        sock.setblocking(True)
        assert idle_server.stats.wait_for(lambda s: s.idle_closed == 1, WAIT)
    assert idle_server.snapshot().connections_active == 0


def test_client_active_for_two_idle_timeouts_stays_open(idle_server: Server) -> None:
    with connect(idle_server.address) as sock:
        until = time.monotonic() + 2 * IDLE_TIMEOUT
        while time.monotonic() < until:  # traffic every tenth of the timeout
            assert echo_once(sock, b".") == b"."
            time.sleep(IDLE_TIMEOUT / 10)  # pacing the traffic, not waiting for the server
        assert echo_once(sock, b"still open") == b"still open"
    assert idle_server.stats.wait_for(lambda s: s.connections_closed == 1, WAIT)
    assert idle_server.snapshot().idle_closed == 0


@pytest.mark.parametrize("model", CONCURRENT_MODELS)
def test_connections_beyond_the_limit_are_closed_at_once_and_logged_once(
    model: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="sockecho")
    with Server(ServerConfig(model=model, port=0, max_connections=2, drain_timeout=0.5)) as srv:
        first, second = connect(srv.address), connect(srv.address)
        assert echo_once(first) == echo_once(second) == b"ping"  # both admitted and served
        started = time.monotonic()  # no rejection before this
        for _ in range(20):
            with connect(srv.address) as refused:
                assert closed_by_server(refused)
        assert srv.stats.wait_for(lambda s: s.connections_rejected == 20, WAIT)
        rejecting = time.monotonic() - started  # every rejection happened by now
        assert echo_once(first, b"unaffected") == b"unaffected"
        assert echo_once(second, b"unaffected") == b"unaffected"
        first.close()  # frees a slot: the next client is served
        assert srv.stats.wait_for(lambda s: s.connections_active == 1, WAIT)
        with connect(srv.address) as third:
            assert echo_once(third) == b"ping"
        second.close()
    notices = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
    # Rate-limited: 20 rejections, one line per notice interval (5 s) they spanned; usually
    # one, more only if a busy machine stretched them over an interval's end.
    assert 1 <= len(notices) <= 1 + int(rejecting // 5.0), notices
    assert "limit reached (2 connections" in notices[0]


@pytest.mark.parametrize("model", CONCURRENT_MODELS)
def test_max_per_source_limits_one_address_and_spares_others(model: str) -> None:
    config = ServerConfig(model=model, port=0, max_per_source=1, drain_timeout=0.5)
    with Server(config) as srv, connect(srv.address) as mine:
        assert echo_once(mine) == b"ping"
        with connect(srv.address) as again:  # the same source, 127.0.0.1
            assert closed_by_server(again)
        with socket.create_connection(
            srv.address, timeout=WAIT, source_address=("127.0.0.2", 0)
        ) as other:
            assert echo_once(other) == b"ping"
        assert echo_once(mine) == b"ping"
    assert srv.snapshot().connections_rejected == 1


def test_select_model_defaults_to_its_ceiling_of_1000_and_refuses_more() -> None:
    assert SELECT_MAX_CONNECTIONS == 1000  # below FD_SETSIZE 1024 with room for its own sockets
    ceiling = MODELS["select"].connection_ceiling
    assert ServerConfig(model="select").connection_limit(ceiling) == SELECT_MAX_CONNECTIONS
    assert ServerConfig().connection_limit(MODELS["selectors"].connection_ceiling) == 10_000
    with pytest.raises(ConfigError, match="ceiling of 1000"):
        Server(ServerConfig(model="select", port=0, max_connections=1001))


@pytest.mark.parametrize("model", CONCURRENT_MODELS)
def test_max_per_source_on_a_dual_stack_socket_limits_ipv4_clients_and_spares_ipv6_ones(
    model: str,
) -> None:
    config = ServerConfig(model=model, host="::", port=0, max_per_source=1, drain_timeout=0.5)
    with Server(config) as srv:
        port = srv.address[1]
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as mine:
            assert echo_once(mine) == b"ping"
            # The same host through an IPv4-mapped IPv6 address is the same source.
            with socket.create_connection(("::ffff:127.0.0.1", port), timeout=WAIT) as mapped:
                assert closed_by_server(mapped)
            with socket.create_connection(("::1", port), timeout=WAIT) as other:
                assert echo_once(other) == b"ping"  # ::1 is another source
    assert srv.snapshot().connections_rejected == 1


@pytest.mark.parametrize("model", ["select", "selectors", "asyncio"])
def test_a_slow_reader_draining_the_kernel_queue_is_not_idle(model: str) -> None:
    # The server hands the whole echo to the kernel at once, so its own counters stand
    # still while the client reads it slowly: only the kernel's send queue moves.
    payload = os.urandom(200 * 1024)
    with Server(ServerConfig(model=model, port=0, idle_timeout=0.5, drain_timeout=0.5)) as srv:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # keep most in flight
        sock.settimeout(WAIT)
        with sock:
            sock.connect(srv.address)
            sock.sendall(payload)
            received = bytearray()
            slow_until = time.monotonic() + 1.5  # three idle timeouts of slow reading
            while len(received) < len(payload):
                chunk = sock.recv(2048 if time.monotonic() < slow_until else 65536)
                if not chunk:
                    break
                received += chunk
                if time.monotonic() < slow_until:
                    threading.Event().wait(0.05)  # the slow reader's pace (not a sync wait)
        assert bytes(received) == payload
        assert srv.snapshot().idle_closed == 0


@pytest.mark.parametrize("model", ["select", "selectors"])
def test_clients_that_close_and_reconnect_at_once_get_their_slots_back(
    model: str, serve_process: type[ServeProcess]
) -> None:
    """A load generator closes all its connections and opens as many again at once. The
    server, stopped meanwhile (SIGSTOP), then sees both in one readiness wait: it must handle
    the closes before it accepts, or it counts the new clients against --max-connections
    while the old ones still hold their slots, and refuses them (the select model did, with
    the C client's 1000 connections against its ceiling of 1000)."""
    limit = 20
    server = serve_process("--model", model, "--port", "0", "--max-connections", str(limit))
    old = [connect(server.address) for _ in range(limit)]
    for sock in old:
        assert echo_once(sock) == b"ping"
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        for sock in old:
            sock.close()
        new = [connect(server.address) for _ in range(limit)]  # the kernel queues them
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
    try:
        for sock in new:
            assert echo_once(sock) == b"ping", server.logged_lines()
    finally:
        for sock in new:
            sock.close()
    assert not any("rejected" in line for line in server.logged_lines())
