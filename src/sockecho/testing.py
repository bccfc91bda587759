"""What the pytest plugin's fixtures hand to a test (docs/pytest.md).

The plugin itself (:mod:`pytest_sockecho`) only declares fixtures and imports this
module, and so sockecho, the first time a test asks for a server: a test run that uses
no fixture of ours pays nothing for sockecho being installed.

* :class:`RunningEchoServer` is one started :class:`sockecho.Server` and where it
  listens (``host``, ``port``, ``address``, ``url``, ``udp_address``), with its counters.
* :class:`EchoServerFactory` starts servers with the options of ``sockecho.Server``,
  on 127.0.0.1 and a free port unless told otherwise, and stops every one it started
  when the test ends (:meth:`EchoServerFactory.stop_all`), passed or failed.
* :class:`TestCertificates` is a private CA (made with trustme) and a server
  certificate for 127.0.0.1, ``::1`` and ``localhost``, written to PEM files the
  server loads, with :meth:`TestCertificates.client_context` trusting the CA.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sockecho.config import ClientTLSConfig, ServerConfig
from sockecho.core import ServerStats, StatsSnapshot
from sockecho.net import format_host_port
from sockecho.server import Server
from sockecho.tls import client_context

#: Where fixture servers listen unless told otherwise: loopback only, a port the kernel picks.
FIXTURE_HOST = "127.0.0.1"
FIXTURE_PORT = 0
#: Seconds to wait for a fixture server's thread to end after a test; a model that
#: does not stop within it fails the test's teardown (ServerFailed) instead of hanging.
STOP_TIMEOUT = 10.0
#: Names a server certificate carries: a client may connect by any of them.
CERTIFICATE_NAMES = ("127.0.0.1", "::1", "localhost")


class RunningEchoServer:
    """A started echo server, as the ``echo_server`` fixtures give it.

    ``server`` is the :class:`sockecho.Server` itself; ``url`` is
    ``tcp://127.0.0.1:PORT`` (``tls://`` when it serves TLS), the form
    ``sockecho.locust`` takes as a host.
    """

    __slots__ = ("server",)

    def __init__(self, server: Server) -> None:
        self.server = server

    @property
    def config(self) -> ServerConfig:
        return self.server.config

    @property
    def model(self) -> str:
        return self.server.config.model

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) of the (first) listening socket."""
        return self.server.address

    @property
    def host(self) -> str:
        return self.server.address[0]

    @property
    def port(self) -> int:
        return self.server.address[1]

    @property
    def scheme(self) -> str:
        """``tls`` when the server speaks TLS, else ``tcp``."""
        return "tls" if self.server.config.tls else "tcp"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{format_host_port(self.host, self.port)}"

    @property
    def udp_address(self) -> tuple[str, int]:
        """(host, port) of the UDP socket; RuntimeError unless started with ``udp=True``."""
        if not self.server.datagram_addresses:
            raise RuntimeError("this echo server does not serve UDP; start it with udp=True")
        return self.server.datagram_addresses[0]

    @property
    def udp_url(self) -> str:
        host, port = self.udp_address
        return f"udp://{format_host_port(host, port)}"

    @property
    def stats(self) -> ServerStats:
        """The live counters (``stats.wait_for(...)`` waits for one to reach a value)."""
        return self.server.stats

    def snapshot(self) -> StatsSnapshot:
        """The counters now, frozen."""
        return self.server.snapshot()

    def stop(self, graceful: bool = True) -> None:
        """Stop now (the fixture stops it anyway when the test ends; twice is harmless)."""
        if not self.server.stopped.is_set():
            self.server.stop(graceful, timeout=STOP_TIMEOUT)

    def __repr__(self) -> str:
        return f"<RunningEchoServer {self.model} {self.url}>"


@dataclass(frozen=True, slots=True)
class TestCertificates:
    """A private CA's certificate and a server certificate it signed, as PEM files."""

    __test__ = False  # a data class, not a test class, whatever pytest thinks of the name

    ca_file: Path
    cert_file: Path
    key_file: Path

    @classmethod
    def create(cls, directory: Path) -> TestCertificates:
        """Make a CA and a certificate for :data:`CERTIFICATE_NAMES` in ``directory``."""
        try:
            import trustme  # noqa: PLC0415 - only the TLS fixtures need it
        except ImportError:
            raise RuntimeError(
                "the TLS echo fixtures need trustme: pip install 'sockecho[pytest]'"
            ) from None
        ca = trustme.CA()
        issued = ca.issue_cert(*CERTIFICATE_NAMES)
        certificates = cls(
            ca_file=directory / "ca.pem",
            cert_file=directory / "server.pem",
            key_file=directory / "server.key",
        )
        ca.cert_pem.write_to_path(str(certificates.ca_file))
        issued.cert_chain_pems[0].write_to_path(str(certificates.cert_file))
        for extra in issued.cert_chain_pems[1:]:
            extra.write_to_path(str(certificates.cert_file), append=True)
        issued.private_key_pem.write_to_path(str(certificates.key_file))
        return certificates

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts this CA only (and checks the host name)."""
        return client_context(ClientTLSConfig(ca_file=str(self.ca_file)))


class EchoServerFactory:
    """Starts echo servers for one test and stops them all after it.

    ``factory(**settings)`` takes the keywords of :class:`sockecho.ServerConfig`
    (``model``, ``udp``, ``idle_timeout``, ``max_connections``, ``tls_cert``...);
    ``host`` defaults to 127.0.0.1, ``port`` to 0 (a free port) and ``model`` to the
    ``echo_server_model`` fixture. ``tls=True`` serves TLS with the plugin's test
    certificate (trusted by the ``echo_tls_client_context`` fixture).
    """

    __slots__ = ("_certificates", "default_model", "started")

    def __init__(self, default_model: str, certificates: Callable[[], TestCertificates]) -> None:
        self.default_model = default_model
        #: Returns the session's certificates, made on first use.
        self._certificates = certificates
        self.started: list[RunningEchoServer] = []

    def __call__(
        self, config: ServerConfig | None = None, *, tls: bool = False, **settings: Any
    ) -> RunningEchoServer:
        if config is None:
            settings = {
                "model": self.default_model,
                "host": FIXTURE_HOST,
                "port": FIXTURE_PORT,
                **settings,
            }
        if tls:
            certificates = self._certificates()
            settings["tls_cert"] = str(certificates.cert_file)
            settings["tls_key"] = str(certificates.key_file)
        server = Server(config, **settings)
        server.start()
        running = RunningEchoServer(server)
        self.started.append(running)
        return running

    def stop_all(self) -> None:
        """Stop every server this factory started (at once: open connections are closed).

        Raises the first server's failure (ServerFailed, say) after stopping them all, so
        a model that crashed during the test fails its teardown.
        """
        failure: BaseException | None = None
        while self.started:
            running = self.started.pop()
            try:
                running.stop(graceful=False)
            except Exception as exc:
                failure = failure or exc
        if failure is not None:
            raise failure
