"""UDP echo beside TCP (``--udp``), in every model: whole datagrams, loop guard, rate limit."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from sockecho import Server, ServerConfig
from sockecho.servers.base import SocketCalls
from tests.conftest import WAIT, ServeProcess, connect, recv_exactly


@pytest.fixture
def udp_server(model: str) -> Iterator[Server]:
    with Server(ServerConfig(model=model, port=0, udp=True, drain_timeout=1.0)) as srv:
        yield srv


def udp_client(bind_port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", bind_port))
    sock.settimeout(WAIT)
    return sock


def free_low_port() -> socket.socket:
    """A UDP socket on 127.0.0.1 bound to a free privileged port (600-1023; tests run as root)."""
    for port in range(600, 1024):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EACCES:
                pytest.fail("binding a port below 1024 needs root (the test suite runs as root)")
            continue
        sock.settimeout(WAIT)
        return sock
    pytest.fail("no free UDP port in 600-1023")


def assert_nothing_more(sock: socket.socket) -> None:
    sock.setblocking(False)
    with pytest.raises(BlockingIOError):
        sock.recvfrom(65535)
    sock.settimeout(WAIT)


@pytest.mark.parametrize("size", [0, 1, 1472, 8193, 65507])
def test_datagram_comes_back_whole(udp_server: Server, size: int) -> None:
    payload = os.urandom(size)
    with udp_client() as sock:
        sock.sendto(payload, udp_server.datagram_addresses[0])
        data, source = sock.recvfrom(65535)
    assert data == payload
    assert source == udp_server.datagram_addresses[0]
    assert udp_server.stats.wait_for(lambda s: s.datagrams_echoed == 1, WAIT)
    assert udp_server.snapshot().bytes_echoed == size


def test_udp_shares_the_tcp_port_and_tcp_still_echoes(udp_server: Server) -> None:
    assert udp_server.datagram_addresses == udp_server.addresses
    tcp_url, udp_url = udp_server.endpoints
    assert tcp_url.startswith("tcp://127.0.0.1:")
    assert udp_url == "udp://" + tcp_url.removeprefix("tcp://")
    with connect(udp_server.address) as sock:
        sock.sendall(b"tcp too")
        assert recv_exactly(sock, 7) == b"tcp too"


def test_many_datagrams_from_many_sockets_each_come_back(udp_server: Server) -> None:
    clients = [udp_client() for _ in range(10)]
    try:
        for round_ in range(5):
            for index, sock in enumerate(clients):
                sock.sendto(f"{index}/{round_}".encode(), udp_server.datagram_addresses[0])
            for index, sock in enumerate(clients):
                assert sock.recv(100) == f"{index}/{round_}".encode()
    finally:
        for sock in clients:
            sock.close()


def test_loop_guard_drops_datagrams_from_privileged_ports(udp_server: Server) -> None:
    with free_low_port() as low, udp_client() as high:
        low.sendto(b"from a service port", udp_server.datagram_addresses[0])
        assert udp_server.stats.wait_for(lambda s: s.datagrams_dropped_low_port == 1, WAIT)
        # Datagrams are handled in order: once this one is echoed, a reply to the first
        # would already have been sent.
        high.sendto(b"marker", udp_server.datagram_addresses[0])
        assert high.recv(100) == b"marker"
        assert_nothing_more(low)
    assert udp_server.stats.wait_for(lambda s: s.datagrams_echoed == 1, WAIT)


def test_low_ports_get_replies_when_allowed(model: str) -> None:
    config = ServerConfig(model=model, port=0, udp=True, udp_allow_low_ports=True)
    with Server(config) as srv, free_low_port() as low:
        low.sendto(b"allowed", srv.datagram_addresses[0])
        assert low.recv(100) == b"allowed"


def test_rate_limit_drops_and_counts_datagrams_over_the_limit(model: str) -> None:
    rate, burst, sent = 50.0, 10, 100
    config = ServerConfig(model=model, port=0, udp=True, udp_rate=rate, udp_burst=burst)
    with Server(config) as srv, udp_client() as sock:
        started = time.monotonic()
        for i in range(sent):
            sock.sendto(b"%d" % i, srv.datagram_addresses[0])
        assert srv.stats.wait_for(lambda s: s.datagrams_received == sent, WAIT)
        elapsed = time.monotonic() - started
        snap = srv.snapshot()
        assert snap.datagrams_echoed + snap.datagrams_dropped_rate == sent
        assert burst <= snap.datagrams_echoed <= burst + rate * elapsed + 1
        replies = [sock.recv(100) for _ in range(snap.datagrams_echoed)]
        assert replies[:burst] == [b"%d" % i for i in range(burst)]  # the burst goes first
        assert_nothing_more(sock)


class RefusedOnceSocket(socket.socket):
    """sendto() fails once as after an ICMP port unreachable, then works again."""

    refusals = 1

    def sendto(self, data: Any, *args: Any) -> int:
        if self.type == socket.SOCK_DGRAM and RefusedOnceSocket.refusals:
            RefusedOnceSocket.refusals -= 1
            raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
        return int(super().sendto(data, *args))


def test_sendto_error_is_counted_and_the_server_goes_on(model: str) -> None:
    RefusedOnceSocket.refusals = 1
    config = ServerConfig(model=model, port=0, udp=True)
    with Server(config, calls=SocketCalls(socket_class=RefusedOnceSocket)) as srv:
        with udp_client() as sock:
            sock.sendto(b"refused", srv.datagram_addresses[0])
            assert srv.stats.wait_for(lambda s: s.datagram_errors == 1, WAIT)
            sock.sendto(b"fine", srv.datagram_addresses[0])
            assert sock.recv(100) == b"fine"
        with connect(srv.address) as conn:
            conn.sendall(b"tcp")
            assert recv_exactly(conn, 3) == b"tcp"


def test_stop_closes_the_udp_socket(model: str) -> None:
    srv = Server(ServerConfig(model=model, port=0, udp=True, drain_timeout=0.5))
    srv.start()
    address = srv.datagram_addresses[0]
    srv.stop(timeout=WAIT)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
        again.bind(address)  # free again: the server closed its UDP socket


def test_cli_prints_the_udp_ready_line_after_the_tcp_one(
    serve_process: type[ServeProcess], model: str
) -> None:
    proc = serve_process("--model", model, "--port", "0", "--udp", ready_lines=2)
    tcp_url, udp_url = proc.endpoints
    assert tcp_url.startswith("tcp://127.0.0.1:")
    assert udp_url == "udp://" + tcp_url.removeprefix("tcp://")
    with udp_client() as sock:
        sock.sendto(b"cli", proc.address)
        assert sock.recv(100) == b"cli"
    with contextlib.suppress(ProcessLookupError):
        assert proc.stop(2) == 0  # SIGINT
