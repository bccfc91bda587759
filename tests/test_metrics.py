"""--metrics: the server's own statistics scraped over HTTP, and /healthz."""

from __future__ import annotations

import importlib.util
import socket
import urllib.error
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sockecho import Server, ServerConfig
from sockecho.cli import main
from sockecho.errors import BindError, ConfigError
from sockecho.faults import FaultKind
from sockecho.metrics import parse_address
from tests.conftest import WAIT, connect, recv_exactly

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(server: Server) -> Samples:
    assert server.metrics_url is not None
    return read_samples(server.metrics_url)


def read_samples(url: str) -> Samples:
    """Every sample of the exposition at ``url``, by (name, labels)."""
    with urllib.request.urlopen(url, timeout=WAIT) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def health(server: Server) -> int:
    assert server.metrics_url is not None
    url = server.metrics_url.replace("/metrics", "/healthz")
    try:
        with urllib.request.urlopen(url, timeout=WAIT) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        with exc:
            return int(exc.code)


def test_metrics_count_what_the_server_served(model: str) -> None:
    config = ServerConfig(model=model, port=0, udp=True, metrics="127.0.0.1:0")
    with Server(config) as server:
        with connect(server.address) as client:
            client.sendall(b"hello")
            assert recv_exactly(client, 5) == b"hello"
            assert server.stats.wait_for(lambda s: s.connections_active == 1, WAIT)
            assert scrape(server)[("sockecho_connections_open", ())] == 1
        assert server.stats.wait_for(lambda s: s.connections_closed == 1, WAIT)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.settimeout(WAIT)
            udp.sendto(b"datagram", server.datagram_addresses[0])
            assert udp.recv(100) == b"datagram"
        assert server.stats.wait_for(lambda s: s.datagrams_echoed == 1, WAIT)
        samples = scrape(server)
    assert samples[("sockecho_connections_open", ())] == 0
    assert samples[("sockecho_connections_total", (("result", "served"),))] == 1
    assert samples[("sockecho_connections_total", (("result", "rejected_limit"),))] == 0
    assert samples[("sockecho_bytes_received_total", ())] == 5 + 8
    assert samples[("sockecho_bytes_sent_total", ())] == 5 + 8
    assert samples[("sockecho_datagrams_total", (("result", "echoed"),))] == 1
    assert samples[("sockecho_connection_duration_seconds_count", ())] == 1
    assert samples[("sockecho_connection_duration_seconds_bucket", (("le", "+Inf"),))] == 1
    info = [key for key in samples if key[0] == "sockecho_info"]
    assert info == [("sockecho_info", (("model", model), ("version", "0.1.0")))]


def test_faults_counted_in_the_stats_are_exported_by_kind() -> None:
    with Server(ServerConfig(port=0, metrics="127.0.0.1:0")) as server:
        server.stats.fault(FaultKind.LATENCY)
        server.stats.fault(FaultKind.LATENCY)
        server.stats.fault(FaultKind.DROP)
        samples = scrape(server)
    assert samples[("sockecho_faults_total", (("kind", "latency"),))] == 2
    assert samples[("sockecho_datagrams_total", (("result", "dropped_fault"),))] == 1


def test_healthz_is_200_while_serving_and_503_while_draining() -> None:
    config = ServerConfig(port=0, metrics="127.0.0.1:0", drain_timeout=WAIT)
    with Server(config) as server, connect(server.address) as client:
        assert health(server) == 200
        client.sendall(b"x")
        assert recv_exactly(client, 1) == b"x"
        server.request_stop()  # the open client keeps it draining
        assert health(server) == 503


def test_unknown_paths_are_404() -> None:
    with Server(ServerConfig(port=0, metrics="127.0.0.1:0")) as server:
        assert server.metrics_url is not None
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(server.metrics_url.replace("/metrics", "/nope"), timeout=WAIT)
        with caught.value:
            assert caught.value.code == 404


def test_metrics_endpoint_closes_with_the_server() -> None:
    server = Server(ServerConfig(port=0, metrics="127.0.0.1:0"))
    server.start()
    assert server.metrics is not None
    address = server.metrics.bound
    server.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=WAIT)


def test_metrics_port_in_use_is_a_bind_error_and_leaves_nothing_open() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = Server(ServerConfig(port=0, metrics=f"127.0.0.1:{port}"))
        with pytest.raises(BindError, match="address already in use"):
            server.start()
        assert server.model.listeners == []


@pytest.mark.parametrize("text", ["9100", "host:", ":9100", "host:port", "h:70000", "[::1]"])
def test_metrics_address_must_be_host_and_port(text: str) -> None:
    with pytest.raises(ConfigError, match="is not HOST:PORT"):
        parse_address(text)


def test_metrics_address_takes_bracketed_ipv6() -> None:
    assert parse_address("[::1]:9100") == ("::1", 9100)
    assert parse_address("localhost:0") == ("localhost", 0)


def test_missing_prometheus_client_is_a_usage_error_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return None if name == "prometheus_client" else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(ConfigError, match=r"sockecho\[metrics\]"):
        Server(ServerConfig(port=0, metrics="127.0.0.1:0"))
    assert main(["serve", "--port", "0", "--metrics", "127.0.0.1:0"]) == 2
    assert "pip install 'sockecho[metrics]'" in capsys.readouterr().err
