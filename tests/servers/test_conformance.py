"""One echo contract, five implementations: every test here runs against every model."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from sockecho import Server, ServerConfig
from sockecho.servers.base import SocketCalls
from tests.conftest import (
    CONCURRENT_MODELS,
    STOP_MARGIN,
    WAIT,
    connect,
    open_fds,
    recv_exactly,
    recv_until_eof,
    reset,
)


def test_short_message_comes_back_unchanged(server: Server) -> None:
    with connect(server.address) as sock:
        sock.sendall(b"hola\n")
        assert recv_exactly(sock, 5) == b"hola\n"


def test_4_mib_random_payload_echoed_intact_while_client_reads(server: Server) -> None:
    payload = os.urandom(4 * 1024 * 1024)
    with connect(server.address) as sock:
        sender = threading.Thread(target=sock.sendall, args=(payload,))
        sender.start()  # reading concurrently: neither side's buffers can fill up and stall
        echoed = recv_exactly(sock, len(payload))
        sender.join(WAIT)
    assert echoed == payload


def test_one_byte_writes_come_back_in_order(server: Server) -> None:
    message = bytes(range(256))
    with connect(server.address) as sock:
        for i, byte in enumerate(message):
            sock.sendall(bytes([byte]))
            if i % 64 == 63:  # read back in batches: the echo may coalesce the bytes
                assert recv_exactly(sock, 64) == message[i - 63 : i + 1]


def test_half_close_flushes_pending_echo_then_closes(server: Server) -> None:
    payload = os.urandom(1024 * 1024)
    with connect(server.address) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)  # "that is all": the server must still send everything
        assert recv_until_eof(sock) == payload  # and then close its side (recv returns b'')


def test_zero_bytes_then_half_close_closes_cleanly(server: Server) -> None:
    with connect(server.address) as sock:
        sock.shutdown(socket.SHUT_WR)
        assert recv_until_eof(sock) == b""


def test_100_concurrent_clients_interleaving_writes_all_get_their_bytes(server: Server) -> None:
    def client(index: int) -> bytes:
        received = bytearray()
        with connect(server.address, timeout=60) as sock:
            for part in range(4):
                chunk = f"client {index:03d} part {part}|".encode() * (index + 1)
                sock.sendall(chunk)
                received += recv_exactly(sock, len(chunk))
        return bytes(received)

    with ThreadPoolExecutor(max_workers=100) as pool:
        results = list(pool.map(client, range(100)))
    for index, received in enumerate(results):
        expected = b"".join(
            f"client {index:03d} part {part}|".encode() * (index + 1) for part in range(4)
        )
        assert received == expected
    assert server.stats.wait_for(lambda s: s.connections_closed == 100, WAIT)
    assert server.snapshot().connections_accepted == 100


def test_client_reset_mid_stream_does_not_disturb_server_or_others(server: Server) -> None:
    victim = connect(server.address)
    victim.sendall(os.urandom(256 * 1024))
    reset(victim)  # RST while the server may still be echoing to it
    assert server.stats.wait_for(lambda s: s.connections_closed == 1, WAIT)
    with connect(server.address) as other:
        other.sendall(b"still here\n")
        assert recv_exactly(other, 11) == b"still here\n"


@pytest.mark.parametrize("model", CONCURRENT_MODELS)
def test_reset_of_one_client_spares_a_concurrent_one(model: str) -> None:
    with (
        Server(ServerConfig(model=model, port=0, drain_timeout=1.0)) as srv,
        connect(srv.address) as steady,
    ):
        steady.sendall(b"before")
        assert recv_exactly(steady, 6) == b"before"
        victim = connect(srv.address)
        victim.sendall(b"x" * 100_000)
        reset(victim)
        assert srv.stats.wait_for(lambda s: s.connections_closed == 1, WAIT)
        steady.sendall(b"after")
        assert recv_exactly(steady, 5) == b"after"


def test_1000_connect_close_cycles_leave_no_descriptor_behind(server: Server) -> None:
    # Warm up once so lazily created descriptors (epoll, wake-up pair) are counted before.
    with connect(server.address) as sock:
        sock.sendall(b"w")
        recv_exactly(sock, 1)
    assert server.stats.wait_for(lambda s: s.connections_closed == 1, WAIT)
    before = open_fds()
    for i in range(1000):
        with connect(server.address) as sock:
            if i % 2:
                sock.sendall(b"x")
                assert recv_exactly(sock, 1) == b"x"
    assert server.stats.wait_for(lambda s: s.connections_closed == 1001, WAIT)
    assert open_fds() - before == set()


def test_stop_closes_every_socket_it_opened(model: str) -> None:
    before = open_fds()
    srv = Server(ServerConfig(model=model, port=0, drain_timeout=0.5))
    srv.start()
    with connect(srv.address) as sock:
        sock.sendall(b"x")
        assert recv_exactly(sock, 1) == b"x"
    srv.stop(timeout=WAIT)
    assert open_fds() - before == set()


def test_a_close_is_logged_before_it_is_counted(server: Server) -> None:
    # Tests wait on the counters (stats.wait_for), then read the log: the line must be there.
    counted_when_logged: list[int] = []

    class Probe(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("close "):
                counted_when_logged.append(server.snapshot().connections_closed)

    logger = logging.getLogger("sockecho.server")
    probe, level = Probe(logging.INFO), logger.level
    logger.addHandler(probe)
    logger.setLevel(logging.INFO)
    try:
        with connect(server.address) as sock:
            sock.sendall(b"x")
            assert recv_exactly(sock, 1) == b"x"
        assert server.stats.wait_for(lambda s: s.connections_closed == 1, WAIT)
    finally:
        logger.removeHandler(probe)
        logger.setLevel(level)
    assert counted_when_logged == [0]


#: Seconds a SlowClosingSocket's close() takes: longer than a stop takes to return.
SLOW_CLOSE = 0.3


class SlowClosingSocket(socket.socket):
    """A socket whose close() is slow, as on a loaded machine, and whose accept() returns
    its own kind: it widens any window in which a stop could return before a connection's
    socket is really closed (the threading model once forgot a socket, then closed it)."""

    def accept(self) -> tuple[socket.socket, Any]:
        fd, addr = self._accept()  # type: ignore[attr-defined]
        conn = SlowClosingSocket(self.family, self.type, self.proto, fileno=fd)
        if socket.getdefaulttimeout() is None and self.gettimeout():
            conn.setblocking(True)
        return conn, addr

    def close(self) -> None:
        if self.fileno() >= 0:
            time.sleep(SLOW_CLOSE)  # the slowness under test, not synchronisation
        super().close()


def test_stop_returns_only_after_a_slowly_closing_connection_socket_is_closed(
    model: str,
) -> None:
    before = open_fds()
    calls = SocketCalls(socket_class=SlowClosingSocket)
    srv = Server(ServerConfig(model=model, port=0, drain_timeout=WAIT), calls=calls)
    srv.start()
    with connect(srv.address) as sock:
        sock.sendall(b"x")
        assert recv_exactly(sock, 1) == b"x"
    srv.stop(timeout=WAIT)  # the client has gone: the drain ends when its socket is closed
    assert open_fds() - before == set()


def test_stop_with_an_open_idle_client_finishes_within_the_drain_timeout(model: str) -> None:
    drain = 0.3
    srv = Server(ServerConfig(model=model, port=0, drain_timeout=drain))
    srv.start()
    with connect(srv.address) as idle_client:
        idle_client.sendall(b"x")
        assert recv_exactly(idle_client, 1) == b"x"
        stopped_at = time.monotonic()
        srv.stop(timeout=WAIT)  # ServerFailed if it hung past the timeout
        took = time.monotonic() - stopped_at
        assert recv_until_eof(idle_client) == b""  # the server closed it after the drain
    assert drain - 0.05 <= took <= drain + STOP_MARGIN


def test_stats_count_bytes_echoed(server: Server) -> None:
    with connect(server.address) as sock:
        sock.sendall(b"a" * 1000)
        assert recv_exactly(sock, 1000) == b"a" * 1000
    assert server.stats.wait_for(lambda s: s.bytes_echoed == 1000, WAIT)
