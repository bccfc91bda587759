"""IPv6 and dual stack, TCP and UDP, in every model: ``::1``, ``::``, names with two addresses."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

from sockecho import Server, ServerConfig, echo
from tests.conftest import WAIT, ServeProcess, recv_exactly, run_cli

#: Which address family a client uses to reach each kind of server address.
V4, V6 = ("127.0.0.1", socket.AF_INET), ("::1", socket.AF_INET6)


@pytest.fixture(autouse=True)
def _ipv6_loopback_is_there() -> None:
    """These tests skip nothing: a machine without ::1 is a broken test machine."""
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
        probe.bind(("::1", 0))


def tcp_echo(host: str, family: socket.AddressFamily, port: int, message: bytes) -> bytes:
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(WAIT)
        sock.connect((host, port))
        sock.sendall(message)
        return recv_exactly(sock, len(message))


def udp_echo(
    host: str, family: socket.AddressFamily, port: int, message: bytes
) -> tuple[bytes, Any]:
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(WAIT)
        sock.sendto(message, (host, port))
        return sock.recvfrom(65535)


def test_ipv6_loopback_serves_tcp_and_udp(model: str) -> None:
    with Server(ServerConfig(model=model, host="::1", port=0, udp=True)) as srv:
        port = srv.address[1]
        assert srv.endpoints == [f"tcp://[::1]:{port}", f"udp://[::1]:{port}"]
        assert tcp_echo("::1", socket.AF_INET6, port, b"over ipv6") == b"over ipv6"
        data, source = udp_echo("::1", socket.AF_INET6, port, b"datagram over ipv6")
        assert data == b"datagram over ipv6"
        assert source[:2] == ("::1", port)


def test_any_address_serves_ipv4_and_ipv6_clients_on_one_socket(model: str) -> None:
    with Server(ServerConfig(model=model, host="::", port=0, udp=True)) as srv:
        port = srv.address[1]
        assert srv.endpoints == [f"tcp://[::]:{port}", f"udp://[::]:{port}"]  # one socket each
        for host, family in (V4, V6):
            message = f"from {host}".encode()
            assert tcp_echo(host, family, port, message) == message
            data, source = udp_echo(host, family, port, message)
            assert data == message
            assert source[:2] == (host, port)  # the reply comes from the address asked
        assert srv.stats.wait_for(
            lambda s: s.connections_closed == 2 and s.datagrams_echoed == 2, WAIT
        )


@pytest.fixture
def two_address_name(monkeypatch: pytest.MonkeyPatch) -> str:
    """A host name that resolves to 127.0.0.1 and ::1, as localhost does on many machines."""
    name = "both.sockecho.test"
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == name:
            return real("127.0.0.1", port, *args, **kwargs) + real("::1", port, *args, **kwargs)
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return name


def test_every_address_of_a_name_is_served_on_one_port(model: str, two_address_name: str) -> None:
    config = ServerConfig(model=model, host=two_address_name, port=0, udp=True)
    with Server(config) as srv:
        port = srv.address[1]
        assert srv.endpoints == [
            f"tcp://127.0.0.1:{port}",
            f"tcp://[::1]:{port}",
            f"udp://127.0.0.1:{port}",
            f"udp://[::1]:{port}",
        ]
        for host, family in (V4, V6):
            assert tcp_echo(host, family, port, b"tcp") == b"tcp"
            assert udp_echo(host, family, port, b"udp")[0] == b"udp"
        # The client resolves the name the same way and connects to its first address.
        assert echo(b"by name\n", two_address_name, port) == b"by name\n"


def test_localhost_gives_one_ready_line_per_address(serve_process: type[ServeProcess]) -> None:
    addresses = {info[4][0] for info in socket.getaddrinfo("localhost", 0, type=socket.SOCK_STREAM)}
    proc = serve_process(
        "--host", "localhost", "--port", "0", "--udp", ready_lines=2 * len(addresses)
    )
    assert len(proc.endpoints) == 2 * len(addresses), proc.stderr_lines
    ports = {url.rpartition(":")[2] for url in proc.endpoints}
    assert len(ports) == 1  # port 0: every address shares the first one's port
    hosts = {url.split("://")[1].rpartition(":")[0].strip("[]") for url in proc.endpoints}
    assert hosts == addresses


def test_cli_send_talks_to_an_ipv6_server(server_v6: Server) -> None:
    result = run_cli("send", "--host", "::1", "--port", str(server_v6.address[1]), "hola")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"hola\n"


@pytest.fixture
def server_v6() -> Iterator[Server]:
    with Server(ServerConfig(host="::1", port=0)) as srv:
        yield srv
