"""Listening on every address of a host: the empty host, and nothing left open on failure."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from sockecho import BindError, Server, ServerConfig
from sockecho.servers.base import PORT_ATTEMPTS, SocketCalls
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


#: A host name that resolves to IPv4 and IPv6 loopback, as ``localhost`` does on many systems.
TWO_ADDRESSES = "two-loopbacks.test"


@pytest.fixture
def two_addresses(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make :data:`TWO_ADDRESSES` resolve to 127.0.0.1 then ::1 (whatever /etc/hosts says)."""
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != TWO_ADDRESSES:
            return real_getaddrinfo(host, port, *args, **kwargs)
        return [
            *real_getaddrinfo("127.0.0.1", port, *args, **kwargs),
            *real_getaddrinfo("::1", port, *args, **kwargs),
        ]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def squatting_socket_class(times: int, squatters: list[socket.socket]) -> type[socket.socket]:
    """A socket class whose IPv4 port-0 binds, the first ``times`` times, are followed by an
    unrelated listener taking the port the kernel picked on ::1 (kept in ``squatters``)."""

    class Squatted(socket.socket):
        def bind(self, address: Any, /) -> None:
            super().bind(address)
            if self.family == socket.AF_INET and address[1] == 0 and len(squatters) < times:
                squatter = socket.socket(socket.AF_INET6)
                squatters.append(squatter)
                squatter.bind(("::1", self.getsockname()[1]))
                squatter.listen()

    return Squatted


@pytest.mark.usefixtures("two_addresses")
@pytest.mark.parametrize("udp", [False, True])
def test_port_0_tries_another_port_when_the_picked_one_is_taken_on_another_address(
    model: str, udp: bool
) -> None:
    squatters: list[socket.socket] = []
    calls = SocketCalls(socket_class=squatting_socket_class(2, squatters))
    config = ServerConfig(model=model, host=TWO_ADDRESSES, port=0, udp=udp, drain_timeout=0.5)
    try:
        with Server(config, calls=calls) as srv:
            assert len(squatters) == 2  # two picked ports were taken on ::1, the third is free
            taken = {squatter.getsockname()[1] for squatter in squatters}
            assert sorted(host for host, _ in srv.addresses) == ["127.0.0.1", "::1"]
            ports = {port for _, port in srv.addresses}
            assert len(ports) == 1
            assert not ports & taken
            for loopback in ("127.0.0.1", "::1"):
                with connect((loopback, *ports)) as sock:
                    sock.sendall(b"both")
                    assert recv_exactly(sock, 4) == b"both"
    finally:
        for squatter in squatters:
            squatter.close()


@pytest.mark.usefixtures("two_addresses")
def test_port_0_gives_up_after_its_attempts_with_one_line() -> None:
    squatters: list[socket.socket] = []
    calls = SocketCalls(socket_class=squatting_socket_class(PORT_ATTEMPTS + 5, squatters))
    before = open_fds()
    try:
        srv = Server(ServerConfig(host=TWO_ADDRESSES, port=0), calls=calls)
        with pytest.raises(BindError, match=r"address already in use: tcp://\[::1\]:"):
            srv.start()
        assert len(squatters) == PORT_ATTEMPTS
    finally:
        for squatter in squatters:
            squatter.close()
    assert open_fds() - before == set()
