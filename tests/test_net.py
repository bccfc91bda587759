"""Listening on every address of a host: the empty host, and nothing left open on failure."""

from __future__ import annotations

import socket

import pytest

from sockecho import BindError, Server, ServerConfig
from tests.conftest import connect, open_fds, recv_exactly


def test_empty_host_listens_on_ipv4_and_ipv6_wildcards_on_one_port(model: str) -> None:
    # getaddrinfo(None, passive) gives 0.0.0.0 and ::; a dual-stack :: would collide.
    with Server(ServerConfig(model=model, host="", port=0, drain_timeout=0.5)) as srv:
        hosts = [host for host, _ in srv.addresses]
        ports = {port for _, port in srv.addresses}
        assert sorted(hosts) == ["0.0.0.0", "::"]
        assert len(ports) == 1
        port = ports.pop()
        for loopback in ("127.0.0.1", "::1"):
            with connect((loopback, port)) as sock:
                sock.sendall(b"both")
                assert recv_exactly(sock, 4) == b"both"


@pytest.mark.parametrize("udp", [False, True])
def test_a_failed_start_leaves_no_descriptor_open(model: str, udp: bool) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        before = open_fds()
        for _ in range(3):
            srv = Server(ServerConfig(model=model, port=port, udp=udp))
            with pytest.raises(BindError, match="address already in use"):
                srv.start()
        assert open_fds() - before == set()
