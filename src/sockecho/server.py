"""The Python API for running a server: :class:`Server`.

::

    with sockecho.Server(model="selectors", port=0) as srv:
        host, port = srv.address
        ...                       # talk to it
    # leaving the block stops it (gracefully) and closes every socket

The model's loop runs in a background thread; :meth:`Server.stop` asks it to
stop, waits for it, and re-raises anything that went wrong in it as
:class:`~sockecho.errors.ServerFailed`.
"""

from __future__ import annotations

import logging
import threading
from types import TracebackType
from typing import Any

from sockecho.config import ServerConfig
from sockecho.core import ServerStats, StatsSnapshot
from sockecho.errors import ConfigError, ServerFailed, SockechoError
from sockecho.metrics import MetricsServer, StatsCollector, parse_address, require_client
from sockecho.servers import MODELS, EchoServer
from sockecho.servers.base import SocketCalls

log = logging.getLogger("sockecho.server")


def make_model(config: ServerConfig, calls: SocketCalls | None = None) -> EchoServer:
    """Instantiate the model named in ``config`` (ConfigError for an unknown name)."""
    try:
        cls = MODELS[config.model]
    except KeyError:
        raise ConfigError(
            f"unknown model {config.model!r}", f"choose one of: {', '.join(MODELS)}"
        ) from None
    return cls(config, calls)


class Server:
    """An echo server running in a background thread.

    Pass a :class:`~sockecho.config.ServerConfig`, or its fields as keywords
    (``Server(model="threading", port=0, idle_timeout=5)``). ``calls`` swaps the
    system-call entry points (``--trace`` passes instrumented ones).
    """

    def __init__(
        self,
        config: ServerConfig | None = None,
        *,
        calls: SocketCalls | None = None,
        **settings: Any,
    ) -> None:
        if config is None:
            config = ServerConfig(**settings)
        elif settings:
            config = config.replace(**settings)
        self.config = config
        if config.metrics is not None:  # before the model: a ConfigError leaves nothing open
            metrics_address = parse_address(config.metrics)
            require_client()
        self.model = make_model(config, calls)
        self.endpoints: list[str] = []
        self.addresses: list[tuple[str, int]] = []
        #: (host, port) of each UDP socket (``udp=True``), in the order of ``addresses``
        self.datagram_addresses: list[tuple[str, int]] = []
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None
        self.stopped = threading.Event()
        #: ``config.metrics``: the Prometheus endpoint, started and stopped with the model
        self.metrics: MetricsServer | None = None
        self.metrics_url: str | None = None
        if config.metrics is not None:
            self.metrics = MetricsServer(
                metrics_address,
                StatsCollector(self.snapshot, config.model),
                serving=lambda: not self.model.stopping,
            )

    @property
    def stats(self) -> ServerStats:
        return self.model.stats

    def snapshot(self) -> StatsSnapshot:
        return self.model.stats.snapshot()

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) of the first listening socket."""
        if not self.addresses:
            raise RuntimeError("the server is not started")
        return self.addresses[0]

    def start(self) -> list[str]:
        """Bind, listen and start serving in a background thread; return the endpoint URLs.

        Raises BindError/ResolveError (nothing is left open) when it cannot listen.
        """
        log.debug("starting the %s model with %s", self.config.model, self.config)
        try:
            self.endpoints = self.model.open()
            if self.metrics is not None:
                self.metrics_url = self.metrics.start()
        except BaseException:
            self.model.abandon()  # nothing is left open: not even the wake-up socketpair
            raise
        self.addresses = [
            (str(sock.getsockname()[0]), int(sock.getsockname()[1]))
            for sock in self.model.listeners
        ]
        self.datagram_addresses = [
            (str(sock.getsockname()[0]), int(sock.getsockname()[1]))
            for sock in self.model.datagram_sockets
        ]
        self._thread = threading.Thread(
            target=self._run, name=f"sockecho-{self.config.model}", daemon=True
        )
        self._thread.start()
        return self.endpoints

    def _run(self) -> None:
        try:
            self.model.serve()
        except BaseException as exc:  # reported by stop() / the CLI, never lost
            self._failure = exc
            log.debug("model %s failed", self.config.model, exc_info=True)
        finally:
            if self.metrics is not None:
                self.metrics.stop()
            self.stopped.set()

    def request_stop(self, graceful: bool = True) -> None:
        """Ask the server to stop (thread-safe, returns at once)."""
        self.model.request_stop(graceful)

    def stop(self, graceful: bool = True, timeout: float | None = None) -> None:
        """Stop and wait. Graceful: open connections get ``drain_timeout`` seconds to finish."""
        self.request_stop(graceful)
        self.join(timeout)

    def join(self, timeout: float | None = None) -> None:
        """Wait for the serving thread to end; ServerFailed if the model crashed."""
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise ServerFailed(f"the {self.config.model} model did not stop in time")
        if self._failure is not None:
            failure, self._failure = self._failure, None
            if isinstance(failure, SockechoError):
                raise failure  # a refusal the model explains itself
            raise ServerFailed(
                f"the {self.config.model} model stopped on {type(failure).__name__}: {failure}",
                "please report this with the -v log",
            ) from failure

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop(graceful=exc is None)
