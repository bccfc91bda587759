"""``--metrics HOST:PORT``: the server's own statistics in Prometheus' text format.

Nothing is counted twice. The models already keep :class:`~sockecho.core.ServerStats`
(one lock, updated once per connection event, never per echoed chunk); a scrape takes a
:class:`~sockecho.core.StatsSnapshot` and a custom collector turns it into metric
families. A server with metrics on therefore does exactly the work of one without, plus
a thread that sleeps in ``accept()`` until Prometheus asks.

Endpoints (a small :mod:`http.server` in a daemon thread):

``GET /metrics``
    The exposition (``prometheus_client.generate_latest`` over a registry of our own, so
    the process-wide default registry's collectors do not leak in).
``GET /healthz``
    ``200 serving`` while the server accepts clients, ``503 draining`` once it is stopping:
    a load balancer's HTTP check takes an instance out before its listeners close.

The metrics (all but ``sockecho_info`` counted since the server started):

==========================================  ===============================================
``sockecho_connections_open``               gauge: TCP/TLS connections being served
``sockecho_connections_total{result}``      ``served``, ``rejected_limit``,
                                            ``rejected_source``, ``tls_failed``,
                                            ``proxy_failed``
``sockecho_bytes_received_total``           bytes of closed connections and echoed datagrams
``sockecho_bytes_sent_total``               the same, sent back
``sockecho_datagrams_total{result}``        ``echoed``, ``dropped_rate``, ``dropped_loop``,
                                            ``dropped_fault``, ``send_failed``
``sockecho_faults_total{kind}``             injected faults (``--fault``) by kind
``sockecho_connection_duration_seconds``    histogram of closed connections' lifetimes
``sockecho_info{model,version}``            always 1
``sockecho_workers``                        ``--workers`` only: worker processes running
``sockecho_worker_restarts_total``          ``--workers`` only: workers restarted
==========================================  ===============================================

With ``--workers`` the supervisor serves the sum of its workers' counters, each at most
``workers.STATS_INTERVAL`` (1 s) old.

Byte counters move when a connection closes (sessions count their own bytes and hand them
over then), so a long-lived connection shows up in them at its end.

``prometheus-client`` is the optional extra ``sockecho[metrics]``; :func:`require_client`
says so in one line when it is missing.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import math
import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, ClassVar

from sockecho import net
from sockecho.core import DURATION_BUCKETS, StatsSnapshot
from sockecho.errors import ConfigError

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

log = logging.getLogger("sockecho")


def require_client() -> None:
    """Raise ConfigError naming the extra when ``prometheus-client`` is not installed."""
    if importlib.util.find_spec("prometheus_client") is None:
        raise ConfigError(
            "--metrics needs the prometheus-client package",
            "pip install 'sockecho[metrics]'",
        )


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9100`` for IPv6) as (host, port); ConfigError otherwise."""
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(
            f"metrics address {text!r} is not HOST:PORT", "e.g. 127.0.0.1:9100 or [::1]:9100"
        )
    return host, int(port)


class StatsCollector:
    """A prometheus-client collector reading one server's statistics at each scrape."""

    def __init__(
        self,
        snapshot: Callable[[], StatsSnapshot],
        model: str,
        workers: Callable[[], tuple[int, int]] | None = None,
    ) -> None:
        self._snapshot = snapshot
        self._model = model
        self._workers = workers  # (running, restarts) of a --workers supervisor
        self._version = importlib.metadata.version("sockecho")

    def describe(self) -> list[Metric]:
        return []  # unchecked collector: its families are known only when collected

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import (  # noqa: PLC0415 (optional extra)
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
            InfoMetricFamily,
        )

        s = self._snapshot()
        yield GaugeMetricFamily(
            "sockecho_connections_open", "TCP/TLS connections being served", s.connections_active
        )
        connections = CounterMetricFamily(
            "sockecho_connections", "Connections by how they ended at admission", labels=["result"]
        )
        for result, value in (
            ("served", s.connections_accepted),
            ("rejected_limit", s.connections_rejected - s.connections_rejected_source),
            ("rejected_source", s.connections_rejected_source),
            ("tls_failed", s.tls_handshake_failures),
            ("proxy_failed", s.proxy_header_failures),
        ):
            connections.add_metric([result], value)
        yield connections
        yield CounterMetricFamily(
            "sockecho_bytes_received", "Bytes received (closed connections and datagrams)",
            value=s.bytes_received,
        )  # fmt: skip
        yield CounterMetricFamily(
            "sockecho_bytes_sent", "Bytes echoed back (closed connections and datagrams)",
            value=s.bytes_echoed,
        )  # fmt: skip
        datagrams = CounterMetricFamily(
            "sockecho_datagrams", "UDP datagrams by what became of them", labels=["result"]
        )
        for result, value in (
            ("echoed", s.datagrams_echoed),
            ("dropped_rate", s.datagrams_dropped_rate),
            ("dropped_loop", s.datagrams_dropped_low_port),
            ("dropped_fault", s.datagrams_dropped_fault),
            ("send_failed", s.datagram_errors),
        ):
            datagrams.add_metric([result], value)
        yield datagrams
        faults = CounterMetricFamily("sockecho_faults", "Injected faults by kind", labels=["kind"])
        for kind, value in sorted(s.faults.items()):
            faults.add_metric([kind], value)
        yield faults
        yield HistogramMetricFamily(
            "sockecho_connection_duration_seconds",
            "Lifetime of closed connections",
            buckets=_cumulative_buckets(s.duration_counts),
            sum_value=s.duration_sum,
        )
        yield InfoMetricFamily(
            "sockecho", "The server", value={"model": self._model, "version": self._version}
        )
        if self._workers is not None:
            running, restarts = self._workers()
            yield GaugeMetricFamily("sockecho_workers", "Worker processes running", running)
            yield CounterMetricFamily(
                "sockecho_worker_restarts", "Workers restarted after they exited", value=restarts
            )


def _cumulative_buckets(counts: tuple[int, ...]) -> list[tuple[str, float]]:
    counts = counts or (0,) * (len(DURATION_BUCKETS) + 1)
    buckets, total = [], 0
    for bound, count in zip((*DURATION_BUCKETS, math.inf), counts, strict=True):
        total += count
        buckets.append(("+Inf" if bound == math.inf else repr(bound), float(total)))
    return buckets


class MetricsServer:
    """``/metrics`` and ``/healthz`` over HTTP in a daemon thread.

    ``serving()`` answers the health check: True while the echo server accepts clients.
    :meth:`start` binds in the caller's thread (BindError there), :meth:`stop` joins.
    """

    def __init__(
        self,
        address: tuple[str, int],
        collector: StatsCollector,
        serving: Callable[[], bool],
    ) -> None:
        require_client()
        from prometheus_client import (  # noqa: PLC0415 (optional extra)
            CONTENT_TYPE_LATEST,
            CollectorRegistry,
            generate_latest,
        )

        registry = CollectorRegistry(auto_describe=False)
        registry.register(collector)

        class Handler(_Handler):
            def metrics(self) -> tuple[int, str, bytes]:
                return 200, CONTENT_TYPE_LATEST, generate_latest(registry)

            def healthy(self) -> bool:
                return serving()

        self.address = address
        self._handler = Handler
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> str:
        """Listen and serve; the URL of ``/metrics``."""
        host, port = self.address
        family, sockaddr = net.resolve(host, port, socket.SOCK_STREAM, passive=True)[0]

        class HTTPServer(ThreadingHTTPServer):
            address_family = family
            daemon_threads = True

        try:
            self._httpd = HTTPServer((sockaddr[0], port), self._handler)
        except OSError as exc:
            raise net.bind_error(exc, host, port, "http") from exc
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.5},
            name="sockecho-metrics",
            daemon=True,
        )
        self._thread.start()
        bound_host, bound_port = self._httpd.server_address[:2]
        return f"http://{net.format_host_port(str(bound_host), int(bound_port))}/metrics"

    @property
    def bound(self) -> tuple[str, int]:
        if self._httpd is None:
            raise RuntimeError("the metrics server is not started")
        host, port = self._httpd.server_address[:2]
        return str(host), int(port)

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None


class _Handler(BaseHTTPRequestHandler):
    server_version = "sockecho-metrics"
    #: A scrape that stalls must not hold a thread forever (seconds).
    timeout: ClassVar[float] = 10.0

    def metrics(self) -> tuple[int, str, bytes]:
        raise NotImplementedError

    def healthy(self) -> bool:
        raise NotImplementedError

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            status, content_type, body = self.metrics()
        elif path == "/healthz":
            ok = self.healthy()
            status, content_type = (200 if ok else 503), "text/plain; charset=utf-8"
            body = b"serving\n" if ok else b"draining\n"
        else:
            status, content_type, body = 404, "text/plain; charset=utf-8", b"not found\n"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("metrics: %s %s", self.address_string(), format % args)
