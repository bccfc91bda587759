"""send/ping/bench --proxy and --identify, and serve --log-format json, from the outside."""

from __future__ import annotations

import io
import json
import signal
import socket
from typing import Any

import pytest

from sockecho import Server, client
from sockecho.bench import BenchSpec, run_bench
from sockecho.config import ClientTLSConfig
from sockecho.errors import EchoMismatch, EchoTimeout
from sockecho.ping import ping
from sockecho.tls import client_context
from tests.conftest import WAIT, ServeProcess, run_cli
from tests.servers.test_tls import Certificates, certs, tls_config  # noqa: F401 (fixture)


def test_send_with_proxy_and_identify_prints_the_identity_and_checks_the_echo() -> None:
    with Server(port=0, proxy_protocol="v2", identify="a") as server:
        host, port = server.address
        done = run_cli("send", "--host", host, "--port", str(port), "--proxy", "v2", "--identify",
                       "hello")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"hello\n"
    identity = json.loads(done.stderr.decode().splitlines()[0])
    assert identity["instance"] == "a"
    assert identity["proxy"]["version"] == 2
    assert identity["peer"] == identity["proxy"]["source"]  # the client's own address


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_echo_api_sends_the_header_with_the_real_addresses(version: Any) -> None:
    seen: list[dict[str, Any]] = []
    with Server(port=0, proxy_protocol="any", identify="x") as server:
        host, port = server.address
        reply = client.echo(b"abc", host, port, WAIT, proxy=version, on_identity=seen.append)
    assert reply == b"abc"
    assert seen[0]["proxy"]["destination"] == f"{host}:{port}"
    assert seen[0]["proxy"]["version"] == int(version[1])


def test_send_identify_against_a_server_without_it_says_so() -> None:
    with Server(port=0) as server:
        host, port = server.address
        with pytest.raises(EchoTimeout, match=r"no identity line .* after 0.5 s"):
            client.echo(b"x", host, port, 0.5, on_identity=lambda _: None)


def test_a_first_line_that_is_not_an_identity_is_a_mismatch() -> None:
    ours, server_side = socket.socketpair()
    with ours, server_side:
        server_side.sendall(b"not json\n")
        with pytest.raises(EchoMismatch, match="not JSON"):
            client.receive_identity(ours, "here", WAIT)


def test_stream_api_with_identify_streams_after_the_line() -> None:
    seen: list[dict[str, Any]] = []
    with Server(port=0, identify="s") as server:
        host, port = server.address
        out = io.BytesIO()
        result = client.stream(io.BytesIO(b"x" * 100_000), out, host, port, WAIT,
                               on_identity=seen.append)  # fmt: skip
    assert result.intact
    assert out.getvalue() == b"x" * 100_000
    assert seen[0]["instance"] == "s"


def test_ping_identify_shows_the_instance_per_probe(capsys: pytest.CaptureFixture[str]) -> None:
    with Server(port=0, identify="p") as server:
        host, port = server.address
        stats = ping(host, port, count=2, interval=0.01, connect_each=True, identify=True)
    assert stats.received == 2
    probes = [line for line in capsys.readouterr().out.splitlines() if "seq=" in line]
    assert len(probes) == 2
    assert all(line.endswith(" instance=p") for line in probes)


def test_bench_identify_reports_connections_and_round_trips_per_instance() -> None:
    with Server(port=0, identify="only", proxy_protocol="v1") as server:
        host, port = server.address
        spec = BenchSpec(host=host, port=port, connections=3, size=64, duration=None,
                         requests=60, warmup=0, proxy="v1", identify=True)  # fmt: skip
        result = run_bench(spec)
    assert result.ok
    assert result.instances == {"only": {"connections": 3, "round_trips": 60}}
    spread = result.spread()
    assert spread["instances"]["only"]["round_trip_share"] == 1.0
    assert spread["max_min_ratio"] == 1.0
    assert result.to_json()["instances"] == result.instances


def test_bench_cli_prints_the_spread() -> None:
    with Server(port=0, identify="one") as server:
        host, port = server.address
        done = run_cli("bench", "--host", host, "--port", str(port), "-n", "20", "--warmup", "0",
                       "--identify", "-q")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert b"spread: max/min round trips 1.00" in done.stdout
    assert b"one" in done.stdout


def test_client_proxy_or_identify_with_udp_is_a_usage_error() -> None:
    assert run_cli("bench", "--udp", "--identify").returncode == 2
    assert run_cli("bench", "--udp", "--proxy", "v1").returncode == 2


@pytest.mark.parametrize("model", ["asyncio", "threading"])
def test_bench_sends_the_proxy_header_before_the_tls_handshake(
    model: str,
    certs: Certificates,  # noqa: F811
) -> None:
    # The server requires a v2 header: a connection without one, or with TLS first, fails.
    config = tls_config(model, certs, proxy_protocol="v2", identify="behind-tls")
    with Server(config) as server:
        host, port = server.address
        spec = BenchSpec(host=host, port=port, connections=2, size=64, duration=None,
                         requests=40, warmup=0, tls=True, cafile=str(certs.ca), proxy="v2",
                         identify=True)  # fmt: skip
        result = run_bench(spec)
        assert server.stats.wait_for(lambda s: s.connections_closed == 2, WAIT)
        stats = server.snapshot()
    assert result.ok, result.errors
    assert result.instances == {"behind-tls": {"connections": 2, "round_trips": 40}}
    assert stats.connections_accepted == 2
    assert stats.connections_rejected == 0
    assert stats.bytes_echoed == 40 * 64


def test_serve_log_format_json_gives_one_object_per_event() -> None:
    server = ServeProcess("--port", "0", "--log-format", "json", "--proxy-protocol", "v1")
    try:
        port = server.address[1]
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
            sock.sendall(b"PROXY TCP4 192.0.2.1 127.0.0.1 1234 7\r\nhi")
            assert sock.recv(2) == b"hi"
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
            sock.sendall(b"garbage\r\n")
            assert sock.recv(1) == b""
        assert server.wait_for_line('"proxy_failed"')
        assert server.stop(signal.SIGTERM) == 0
    finally:
        server.close()
    events = [json.loads(line) for line in server.stderr_lines if line.startswith("{")]
    kinds = [event["event"] for event in events]
    assert kinds[:3] == ["open", "close", "proxy_failed"]
    assert kinds[-1] == "stop"
    opened, closed = events[0], events[1]
    assert opened["peer"] == "192.0.2.1:1234"
    assert opened["via"].startswith("127.0.0.1:")
    assert closed["bytes"] == 2
    assert closed["reason"] == "closed"
    assert isinstance(closed["duration"], float)
    assert "not a v1 header" in events[2]["reason"]


def test_echo_api_sends_the_proxy_header_before_the_tls_handshake(
    certs: Certificates,  # noqa: F811
) -> None:
    seen: list[dict[str, Any]] = []
    context = client_context(ClientTLSConfig(ca_file=str(certs.ca)))
    config = tls_config("selectors", certs, proxy_protocol="v2", identify="t")
    with Server(config) as server:
        host, port = server.address
        reply = client.echo(b"hidden", host, port, WAIT, tls=context, proxy="v2",
                            on_identity=seen.append)  # fmt: skip
    assert reply == b"hidden"
    assert seen[0]["proxy"]["version"] == 2
    assert seen[0]["tls"]["version"] in ("TLSv1.2", "TLSv1.3")
