"""--proxy-protocol and --identify in every model, over real sockets."""

from __future__ import annotations

import json
import socket
import ssl
from typing import Any

import pytest

from sockecho import Server, ServerConfig
from sockecho.config import ClientTLSConfig
from sockecho.identity import IDENTIFY_REQUEST, read_identity
from sockecho.proxy_protocol import encode_v1, encode_v2
from sockecho.tls import client_context
from tests.conftest import CONCURRENT_MODELS, WAIT, connect, recv_exactly
from tests.servers.test_tls import Certificates, certs, tls_config  # noqa: F401 (fixture)

CLIENT = ("203.0.113.7", 40000)


def config(model: str, **settings: Any) -> ServerConfig:
    return ServerConfig(model=model, port=0, drain_timeout=1.0, **settings)


def read_line(sock: socket.socket) -> dict[str, Any]:
    data = b""
    while (found := read_identity(data)) is None:
        chunk = sock.recv(4096)
        assert chunk, f"closed before the identity line: {data!r}"
        data += chunk
    identity, rest = found
    assert rest == b""  # nothing but the line before the client sends
    return identity


def closed_by_server(sock: socket.socket) -> bool:
    sock.settimeout(WAIT)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


@pytest.mark.parametrize("encode", [encode_v1, encode_v2], ids=["v1", "v2"])
def test_proxy_header_is_never_echoed_and_names_the_client_in_the_log(
    model: str, encode: Any, server_log: list[str]
) -> None:
    with Server(config(model, proxy_protocol="any")) as server:
        with connect(server.address) as client:
            port = client.getsockname()[1]
            client.sendall(encode(CLIENT, server.address) + b"hello")
            assert recv_exactly(client, 5) == b"hello"
            client.sendall(b" world")
            assert recv_exactly(client, 6) == b" world"
        assert server.stats.wait_for(lambda s: s.connections_closed == 1, WAIT)
        snapshot = server.snapshot()
    assert snapshot.bytes_echoed == 11
    assert snapshot.proxy_header_failures == 0
    opened = [line for line in server_log if line.startswith("open ")]
    assert opened == [f"open 203.0.113.7:40000 via 127.0.0.1:{port}"]
    assert any(line.startswith("close 203.0.113.7:40000: echoed 11 bytes") for line in server_log)


def test_header_split_across_many_sends_still_parses(model: str) -> None:
    with Server(config(model, proxy_protocol="v2")) as server, connect(server.address) as client:
        for byte in encode_v2(CLIENT, server.address):
            client.sendall(bytes([byte]))
        client.sendall(b"after")
        assert recv_exactly(client, 5) == b"after"


@pytest.mark.parametrize(
    "start", [b"GET / HTTP/1.0\r\n\r\n", b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n"], ids=["http", "v1"]
)
def test_bad_header_closes_the_connection_with_one_log_line(
    model: str, start: bytes, server_log: list[str]
) -> None:
    with Server(config(model, proxy_protocol="any")) as server:
        with connect(server.address) as client:
            client.sendall(start)
            assert closed_by_server(client)
        assert server.stats.wait_for(lambda s: s.proxy_header_failures == 1, WAIT)
        with connect(server.address) as client:  # the server goes on
            client.sendall(encode_v1(CLIENT, server.address) + b"ok")
            assert recv_exactly(client, 2) == b"ok"
        snapshot = server.snapshot()
    assert snapshot.connections_accepted == 1  # the failed one never opened
    failures = [line for line in server_log if line.startswith("proxy header from")]
    assert len(failures) == 1
    assert "127.0.0.1" in failures[0]


def test_missing_header_is_closed_after_the_header_timeout(model: str) -> None:
    with Server(config(model, proxy_protocol="v1", proxy_header_timeout=0.3)) as server:
        with connect(server.address) as client:
            client.sendall(b"PROXY TCP4 ")  # and nothing more
            assert closed_by_server(client)
        assert server.stats.wait_for(lambda s: s.proxy_header_failures == 1, WAIT)


def test_connection_closed_before_its_header_is_counted_as_a_proxy_failure(model: str) -> None:
    with Server(config(model, proxy_protocol="v2")) as server:
        with connect(server.address) as client:
            client.sendall(b"\r\n\r\n")
            client.shutdown(socket.SHUT_WR)
            assert closed_by_server(client)
        assert server.stats.wait_for(lambda s: s.proxy_header_failures == 1, WAIT)


def test_local_header_of_a_health_check_keeps_the_real_peer(
    model: str, server_log: list[str]
) -> None:
    with Server(config(model, proxy_protocol="v2")) as server:
        with connect(server.address) as client:
            port = client.getsockname()[1]
            client.sendall(encode_v2(None, None) + b"check")
            assert recv_exactly(client, 5) == b"check"
        assert server.stats.wait_for(lambda s: s.connections_closed == 1, WAIT)
    assert f"open 127.0.0.1:{port}" in server_log


@pytest.mark.parametrize("model", CONCURRENT_MODELS)
def test_per_source_limit_applies_to_the_client_the_header_names(model: str) -> None:
    with Server(config(model, proxy_protocol="v1", max_per_source=1)) as server:
        with connect(server.address) as first, connect(server.address) as second:
            first.sendall(encode_v1(CLIENT, server.address) + b"1")
            assert recv_exactly(first, 1) == b"1"
            second.sendall(encode_v1(CLIENT, server.address) + b"2")  # the same client
            assert closed_by_server(second)
            with connect(server.address) as third:  # another client through the same proxy
                third.sendall(encode_v1(("198.51.100.1", 1), server.address) + b"3")
                assert recv_exactly(third, 1) == b"3"
        snapshot = server.snapshot()
    assert snapshot.connections_rejected_source == 1
    assert snapshot.proxy_header_failures == 0


def test_identity_line_comes_first_then_the_echo(model: str) -> None:
    with Server(config(model, identify="a")) as server, connect(server.address) as client:
        port = client.getsockname()[1]
        identity = read_line(client)
        client.sendall(b"echo me")
        assert recv_exactly(client, 7) == b"echo me"
        client.shutdown(socket.SHUT_WR)
        assert closed_by_server(client)
        assert server.stats.wait_for(lambda s: s.connections_closed == 1, WAIT)
        assert server.snapshot().bytes_echoed == 7  # the line is not echo
    assert identity == {
        "sockecho": 1,
        "instance": "a",
        "peer": f"127.0.0.1:{port}",
        "local": f"127.0.0.1:{server.address[1]}",
        "proxy": None,
        "tls": None,
    }


def test_identity_behind_a_proxy_names_the_client_and_describes_the_header(model: str) -> None:
    with (
        Server(config(model, identify="b", proxy_protocol="any")) as server,
        connect(server.address) as client,
    ):
        client.sendall(encode_v2(CLIENT, server.address) + b"first")
        data = b""
        while (found := read_identity(data)) is None:
            data += client.recv(4096)
        identity, rest = found
        assert rest + recv_exactly(client, 5 - len(rest)) == b"first"
    assert identity["instance"] == "b"
    assert identity["peer"] == "203.0.113.7:40000"
    assert identity["proxy"]["version"] == 2
    assert identity["proxy"]["source"] == "203.0.113.7:40000"
    assert identity["proxy"]["destination"] == f"127.0.0.1:{server.address[1]}"


def test_identity_over_tls_says_the_session(model: str, certs: Certificates) -> None:  # noqa: F811
    context = client_context(ClientTLSConfig(ca_file=str(certs.ca)))
    context.set_alpn_protocols(["echo"])
    with Server(tls_config(model, certs, identify="t")) as server:
        raw = connect(server.address)
        with context.wrap_socket(raw, server_hostname="localhost") as client:
            identity = read_line(client)
            client.sendall(b"secret")
            assert recv_exactly(client, 6) == b"secret"
    assert identity["tls"]["version"] in ("TLSv1.2", "TLSv1.3")
    assert identity["tls"]["sni"] == "localhost"
    assert identity["tls"]["client_cert"] is None


def test_udp_identify_request_gets_the_identity_and_other_datagrams_their_echo(
    model: str,
) -> None:
    with (
        Server(config(model, udp=True, identify="u")) as server,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp,
    ):
        udp.settimeout(WAIT)
        udp.sendto(IDENTIFY_REQUEST, server.datagram_addresses[0])
        reply = json.loads(udp.recv(65535))
        udp.sendto(b"plain", server.datagram_addresses[0])
        assert udp.recv(100) == b"plain"
        assert reply["peer"] == f"127.0.0.1:{udp.getsockname()[1]}"
    assert reply["instance"] == "u"


def test_udp_identify_request_is_echoed_without_identify(model: str) -> None:
    with (
        Server(config(model, udp=True)) as server,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp,
    ):
        udp.settimeout(WAIT)
        udp.sendto(IDENTIFY_REQUEST, server.datagram_addresses[0])
        assert udp.recv(100) == IDENTIFY_REQUEST


@pytest.mark.parametrize("encode", [encode_v1, encode_v2], ids=["v1", "v2"])
def test_proxy_header_before_tls_names_the_client_and_the_handshake_follows(
    model: str,
    certs: Certificates,  # noqa: F811
    encode: Any,
    server_log: list[str],
) -> None:
    context = client_context(ClientTLSConfig(ca_file=str(certs.ca)))
    settings = {"identify": "t", "proxy_protocol": "any"}
    with Server(tls_config(model, certs, **settings)) as server:
        raw = connect(server.address)
        raw.sendall(encode(CLIENT, server.address))  # in clear, then the ClientHello
        with context.wrap_socket(raw, server_hostname="localhost") as client:
            identity = read_line(client)
            client.sendall(b"secret")
            assert recv_exactly(client, 6) == b"secret"
        assert server.stats.wait_for(lambda s: s.connections_closed == 1, WAIT)
    assert identity["peer"] == "203.0.113.7:40000"
    assert identity["tls"]["sni"] == "localhost"
    assert any(line.startswith("open 203.0.113.7:40000 via") for line in server_log)


def test_tls_client_without_a_proxy_header_is_refused_as_a_proxy_failure(
    model: str,
    certs: Certificates,  # noqa: F811
) -> None:
    context = client_context(ClientTLSConfig(ca_file=str(certs.ca)))
    with Server(tls_config(model, certs, proxy_protocol="v2")) as server:
        raw = connect(server.address)
        with pytest.raises((ssl.SSLError, OSError)):
            context.wrap_socket(raw, server_hostname="localhost").close()
        raw.close()
        assert server.stats.wait_for(lambda s: s.proxy_header_failures == 1, WAIT)
        assert server.snapshot().tls_handshake_failures == 0


def test_oversized_headers_are_refused_without_waiting_for_their_bytes(model: str) -> None:
    announced_64k = b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\xff\xff"  # v2 announcing 65535 bytes
    with Server(config(model, proxy_protocol="any")) as server:
        for start in (b"PROXY TCP4 " + b"9" * 200, announced_64k):
            with connect(server.address) as client:
                client.sendall(start)
                assert closed_by_server(client)  # long before a 64 KiB header could arrive
        assert server.stats.wait_for(lambda s: s.proxy_header_failures == 2, WAIT)


@pytest.mark.parametrize("model", CONCURRENT_MODELS)
def test_a_flood_of_bad_headers_leaves_good_clients_served(model: str) -> None:
    flood = 50
    with Server(config(model, proxy_protocol="v2", proxy_header_timeout=0.5)) as server:
        bad = [connect(server.address) for _ in range(flood)]
        try:
            for k, sock in enumerate(bad):
                sock.sendall(b"\r\n\r\n"[: 1 + k % 4])  # partial signatures: held, then timed out
            with connect(server.address) as good:
                good.sendall(encode_v2(CLIENT, server.address) + b"still here")
                assert recv_exactly(good, 10) == b"still here"
            assert all(closed_by_server(sock) for sock in bad)
        finally:
            for sock in bad:
                sock.close()
        assert server.stats.wait_for(lambda s: s.proxy_header_failures == flood, WAIT)
        assert server.snapshot().connections_accepted == 1
