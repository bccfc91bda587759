"""Echo over TLS in every model: handshake, half-close, timeouts, garbage, the CLI both ways."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from sockecho import Server, ServerConfig, client
from sockecho.config import ClientTLSConfig
from sockecho.errors import ConfigError, ConnectError, TLSSetupError
from sockecho.tls import client_context
from tests.conftest import (
    CONCURRENT_MODELS,
    WAIT,
    ServeProcess,
    connect,
    recv_exactly,
    recv_until_eof,
    run_cli,
)


@dataclass(frozen=True)
class Certificates:
    ca: Path
    cert: Path
    key: Path


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """A throwaway CA and a server certificate for every loopback name."""
    folder = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1", "::1", "localhost")
    paths = Certificates(folder / "ca.pem", folder / "cert.pem", folder / "key.pem")
    ca.cert_pem.write_to_path(str(paths.ca))
    issued.private_key_pem.write_to_path(str(paths.key))
    paths.cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    return paths


def tls_config(model: str, certs: Certificates, **settings: object) -> ServerConfig:
    return ServerConfig(
        model=model,
        port=0,
        drain_timeout=1.0,
        tls_cert=str(certs.cert),
        tls_key=str(certs.key),
        **settings,  # type: ignore[arg-type]
    )


@pytest.fixture
def tls_server(model: str, certs: Certificates) -> Iterator[Server]:
    with Server(tls_config(model, certs)) as srv:
        yield srv


@pytest.fixture
def context(certs: Certificates) -> ssl.SSLContext:
    return client_context(ClientTLSConfig(ca_file=str(certs.ca)))


def tls_connect(address: tuple[str, int], context: ssl.SSLContext) -> ssl.SSLSocket:
    return context.wrap_socket(connect(address), server_hostname=address[0])


def test_ready_line_says_tls(tls_server: Server) -> None:
    assert tls_server.endpoints == [f"tls://127.0.0.1:{tls_server.address[1]}"]


def test_message_comes_back_over_tls(tls_server: Server, context: ssl.SSLContext) -> None:
    host, port = tls_server.address
    assert client.echo(b"hola tls\n", host, port, tls=context) == b"hola tls\n"
    assert tls_server.stats.wait_for(lambda s: s.bytes_echoed == 9, WAIT)


def test_half_close_flushes_the_echo_then_closes(
    tls_server: Server, context: ssl.SSLContext
) -> None:
    payload = os.urandom(256 * 1024)
    with tls_connect(tls_server.address, context) as sock:
        sock.sendall(payload)
        socket.socket.shutdown(sock, socket.SHUT_WR)  # a TCP FIN; the TLS session goes on
        assert recv_until_eof(sock) == payload


def test_an_orderly_close_says_close_notify_in_every_model(
    tls_server: Server, context: ssl.SSLContext
) -> None:
    """After the whole echo the server ends TLS properly: the client reads a close_notify,
    not a bare TCP EOF (which, with ragged EOFs not suppressed, is an SSLEOFError)."""
    host, port = tls_server.address
    raw = socket.create_connection((host, port), timeout=WAIT)
    with context.wrap_socket(raw, server_hostname=host, suppress_ragged_eofs=False) as sock:
        sock.sendall(b"bye")
        socket.socket.shutdown(sock, socket.SHUT_WR)  # a TCP FIN; the TLS session goes on
        assert recv_until_eof(sock) == b"bye"  # b'' only after a close_notify


def test_8_mib_stream_comes_back_intact_over_tls(
    tls_server: Server, context: ssl.SSLContext
) -> None:
    payload = os.urandom(8 * 1024 * 1024)
    sink = io.BytesIO()
    host, port = tls_server.address
    result = client.stream(io.BytesIO(payload), sink, host, port, tls=context)
    assert result.intact
    assert sink.getvalue() == payload


def test_silent_client_is_closed_after_the_handshake_timeout(
    model: str, certs: Certificates
) -> None:
    timeout = 0.5
    with Server(tls_config(model, certs, tls_handshake_timeout=timeout)) as srv:
        started = time.monotonic()  # before the server can have accepted (and started its clock)
        with connect(srv.address) as silent:
            with contextlib.suppress(ConnectionResetError):
                assert silent.recv(1) == b""  # closed by the server, no handshake reply
            elapsed = time.monotonic() - started
        assert srv.stats.wait_for(lambda s: s.tls_handshake_failures == 1, WAIT)
        assert srv.stats.wait_for(lambda s: s.connections_active == 0, WAIT)
    assert timeout * 0.9 <= elapsed <= timeout + 2.0  # the sweep runs every timeout / 4


def test_garbage_instead_of_a_client_hello_is_logged_and_closed(
    tls_server: Server, context: ssl.SSLContext, server_log: list[str]
) -> None:
    with connect(tls_server.address) as garbage:
        garbage.sendall(b"GET / HTTP/1.0\r\n\r\n")
        try:
            # Closed without one byte of echo (OpenSSL may first send an alert record).
            reply = recv_until_eof(garbage)
            assert b"GET" not in reply
        except ConnectionResetError:
            pass
    assert tls_server.stats.wait_for(lambda s: s.tls_handshake_failures == 1, WAIT)
    assert tls_server.stats.wait_for(lambda s: s.connections_active == 0, WAIT)
    assert any("http request" in line for line in server_log), server_log
    host, port = tls_server.address
    assert client.echo(b"after\n", host, port, tls=context) == b"after\n"


@pytest.mark.parametrize("model", CONCURRENT_MODELS)
def test_garbage_client_does_not_disturb_a_concurrent_tls_client(
    model: str, certs: Certificates, context: ssl.SSLContext
) -> None:
    with Server(tls_config(model, certs)) as srv, tls_connect(srv.address, context) as steady:
        steady.sendall(b"before")
        assert recv_exactly(steady, 6) == b"before"
        with connect(srv.address) as garbage:
            garbage.sendall(os.urandom(4096))
            assert srv.stats.wait_for(lambda s: s.tls_handshake_failures == 1, WAIT)
        steady.sendall(b"after")
        assert recv_exactly(steady, 5) == b"after"


def test_a_bad_client_hello_gets_no_echo(tls_server: Server) -> None:
    hello = b"\x16\x03\x01\x00\x05hello"  # a TLS record header, then nonsense
    with connect(tls_server.address) as plain:
        plain.sendall(hello)
        reply = b""
        with contextlib.suppress(ConnectionResetError):
            reply = recv_until_eof(plain)  # at most an alert record, then the close
    assert hello not in reply
    assert tls_server.stats.wait_for(lambda s: s.tls_handshake_failures == 1, WAIT)


def test_client_rejects_a_server_it_does_not_trust(tls_server: Server) -> None:
    host, port = tls_server.address
    untrusting = client_context(ClientTLSConfig())  # the system's roots only
    with pytest.raises(ConnectError, match="not trusted"):
        client.echo(b"x", host, port, tls=untrusting)
    insecure = client_context(ClientTLSConfig(insecure=True))
    assert client.echo(b"x", host, port, tls=insecure) == b"x"


def test_tls_client_on_a_plain_server_fails_with_one_line(context: ssl.SSLContext) -> None:
    with Server(ServerConfig(port=0)) as plain:
        host, port = plain.address
        with pytest.raises(ConnectError, match=r"TLS handshake with 127\.0\.0\.1:\d+ failed"):
            client.echo(b"x", host, port, tls=context)


def test_unreadable_or_mismatched_files_raise_tls_setup_error(
    certs: Certificates, tmp_path: Path
) -> None:
    missing = str(tmp_path / "missing.pem")
    with pytest.raises(TLSSetupError, match=r"cannot read TLS certificate .*missing\.pem"):
        Server(ServerConfig(port=0, tls_cert=missing, tls_key=str(certs.key)))
    other_key = tmp_path / "other-key.pem"
    trustme.CA().issue_cert("127.0.0.1").private_key_pem.write_to_path(str(other_key))
    with pytest.raises(TLSSetupError, match="key values mismatch"):
        Server(ServerConfig(port=0, tls_cert=str(certs.cert), tls_key=str(other_key)))


def test_cli_serves_tls_and_send_talks_it(
    serve_process: type[ServeProcess], certs: Certificates
) -> None:
    proc = serve_process("--port", "0", "--tls-cert", str(certs.cert), "--tls-key", str(certs.key))
    assert proc.endpoints[0].startswith("tls://127.0.0.1:")
    port = str(proc.address[1])
    result = run_cli("send", "--port", port, "--tls", "--tls-ca", str(certs.ca), "hola")
    assert (result.returncode, result.stdout) == (0, b"hola\n"), result.stderr
    payload = os.urandom(1024 * 1024)
    result = run_cli("send", "--port", port, "--tls-ca", str(certs.ca), stdin=payload)
    assert result.returncode == 0, result.stderr
    assert result.stdout == payload
    result = run_cli("send", "--port", port, "--tls", "hola")
    assert result.returncode == 1
    assert result.stderr.decode().startswith("sockecho: error: the TLS certificate of")
    assert result.stderr.count(b"\n") == 1
    result = run_cli("send", "--port", port, "--insecure", "hola")
    assert (result.returncode, result.stdout) == (0, b"hola\n"), result.stderr


def test_cli_bad_tls_files_are_one_line_and_exit_1(tmp_path: Path) -> None:
    result = run_cli(
        "serve", "--port", "0", "--tls-cert", str(tmp_path / "nope.pem"), "--tls-key", "k.pem"
    )
    assert result.returncode == 1
    assert result.stderr.decode().startswith("sockecho: error: cannot read TLS certificate")
    assert result.stderr.count(b"\n") == 1


def test_cli_certificate_without_key_is_a_usage_error(certs: Certificates) -> None:
    result = run_cli("serve", "--port", "0", "--tls-cert", str(certs.cert))
    assert result.returncode == 2
    assert b"both a certificate and its private key" in result.stderr


def test_tls_over_ipv6_with_udp_beside_it(
    model: str, certs: Certificates, context: ssl.SSLContext
) -> None:
    config = tls_config(model, certs, host="::1", udp=True)
    with Server(config) as srv:
        port = srv.address[1]
        assert srv.endpoints == [f"tls://[::1]:{port}", f"udp://[::1]:{port}"]
        assert client.echo(b"tls over ipv6\n", "::1", port, tls=context) == b"tls over ipv6\n"
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as udp:
            udp.settimeout(WAIT)
            udp.sendto(b"plain udp", ("::1", port))
            assert udp.recv(100) == b"plain udp"


@pytest.mark.parametrize(
    "settings",
    [
        {"tls_cert": "cert.pem"},
        {"tls_key": "key.pem"},
        {"tls_cert": "", "tls_key": "key.pem"},
        {"tls_cert": "cert.pem", "tls_key": "key.pem", "tls_handshake_timeout": 0.0},
        {"tls_cert": "cert.pem", "tls_key": "key.pem", "tls_handshake_timeout": float("nan")},
    ],
)
def test_bad_tls_settings_are_config_errors(settings: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        ServerConfig(**settings)  # type: ignore[arg-type]


def test_insecure_and_a_ca_file_contradict() -> None:
    with pytest.raises(ConfigError, match="contradict"):
        ClientTLSConfig(ca_file="ca.pem", insecure=True)
