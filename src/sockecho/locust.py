"""Echo load on Locust: :class:`EchoUser` and :class:`EchoClient` (docs/locust.md).

A locustfile subclasses :class:`EchoUser` and gives it tasks::

    from locust import task
    from sockecho.locust import EchoUser

    class Echoer(EchoUser):
        @task
        def small(self) -> None:
            self.client.echo(64)

``locust --host tcp://HOST:PORT`` (or ``udp://``, ``tls://``) runs it; every echo is one
Locust request: ``request_type`` ``TCP``, ``UDP`` or ``TLS``, ``name`` ``echo 64 B`` unless
named, ``response_time`` in milliseconds from the first byte sent to the last byte back,
``response_length`` the bytes that came back. A request fails (``exception`` set) when the
echo differs from what was sent, comes back short, times out, or the connection is refused
or reset; the exception is the :class:`~sockecho.errors.SockechoError` whose one line names
what happened (``the echo differs from what was sent at byte 17 (64 of 64)``).

Each user keeps one connection (one UDP socket): opened in ``on_start``, closed in
``on_stop``. After a failed echo the connection is replaced, because what is still in flight
on it would be taken for the next echo: the next echo connects again first, and its time
includes connecting (a refused connection is that echo's failure).

Locust runs users as gevent greenlets and monkey-patches ``socket``, ``ssl`` and ``select``
when it is imported (this module imports it). Every blocking call here goes through those
modules at call time, so a user waiting for its echo lets the other users of the worker run.

A TCP or TLS echo sends at most :data:`WINDOW` bytes before reading them back, so a payload
of any size cannot deadlock against the server's back-pressure; a UDP echo is one datagram.
"""

from __future__ import annotations

import contextlib
import functools
import random
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import urlsplit

try:
    import gevent  # type: ignore[import-untyped]  # no type information
    from locust import User, events
    from locust.env import Environment
    from locust.event import EventHook
    from locust.exception import StopTest
except ImportError as exc:  # pragma: no cover - the extra is missing
    raise ImportError(
        "sockecho.locust needs Locust: pip install 'sockecho[locust]'", name=exc.name
    ) from exc

from sockecho.client import connect as connect_stream
from sockecho.client import describe_difference
from sockecho.config import DEFAULT_PORT, ClientTLSConfig
from sockecho.errors import (
    ConfigError,
    ConnectError,
    EchoMismatch,
    EchoTimeout,
    SockechoError,
)
from sockecho.net import format_host_port, resolve
from sockecho.tls import client_context

#: Host schemes and the request type each reports to Locust.
SCHEMES = {"tcp": "TCP", "udp": "UDP", "tls": "TLS"}
#: Seconds a user waits for a connection, and for a whole echo to come back.
DEFAULT_TIMEOUT = 10.0
#: Bytes a TCP echo sends before reading them back: below what the server buffers before
#: it stops reading (its high water, 64 KiB by default) plus the socket buffers, so sending
#: never waits for a server that waits for us to read.
WINDOW = 64 * 1024
#: The largest UDP payload over IPv4 (65535 - 8 bytes UDP header - 20 bytes IP header).
MAX_DATAGRAM = 65507
#: Payload sizes whose bytes are kept between echoes (each user reuses the same few sizes).
PAYLOAD_CACHE = 64


@dataclass(frozen=True, slots=True)
class EchoTarget:
    """Where the users send: ``tcp://HOST:PORT``, ``udp://...`` or ``tls://...``."""

    scheme: str
    host: str
    port: int

    @classmethod
    def parse(cls, url: str) -> EchoTarget:
        """ConfigError unless ``url`` is one of the three forms (the port defaults to 50010)."""
        parts = urlsplit(url)
        if parts.scheme not in SCHEMES or not parts.hostname:
            raise ConfigError(
                f"cannot send echo load to {url!r}",
                "use tcp://HOST:PORT, udp://HOST:PORT or tls://HOST:PORT",
            )
        try:
            port = parts.port
        except ValueError:
            raise ConfigError(f"the port in {url!r} is not a number from 0 to 65535") from None
        return cls(parts.scheme, parts.hostname, DEFAULT_PORT if port is None else port)

    @property
    def request_type(self) -> str:
        return SCHEMES[self.scheme]

    def __str__(self) -> str:
        return f"{self.scheme}://{format_host_port(self.host, self.port)}"


@functools.lru_cache(maxsize=PAYLOAD_CACHE)
def payload_of_size(size: int) -> bytes:
    """``size`` pseudo-random bytes, the same for the same size: a shifted, repeated or
    reordered echo differs from them (a repeating short pattern would hide a shift)."""
    return random.Random(size).randbytes(size)


class EchoClient:
    """One connection to an echo server whose every echo is reported to Locust.

    ``request_event`` is ``environment.events.request``; ``context`` (a callable returning
    a dict, such as ``User.context``) adds to each request's context. ``tls`` is the
    client SSL context for ``tls://`` (default: verify against the system's roots).
    """

    def __init__(
        self,
        target: EchoTarget,
        request_event: EventHook,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        tls: ssl.SSLContext | None = None,
        context: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.target = target
        self.request_event = request_event
        self.timeout = timeout
        self.tls: ssl.SSLContext | None = None
        if target.scheme == "tls":
            self.tls = tls if tls is not None else client_context(ClientTLSConfig())
        self._context = context
        self.sock: socket.socket | None = None

    @property
    def connected(self) -> bool:
        return self.sock is not None

    def connect(self) -> None:
        """Open the connection (ConnectError naming the address if refused or unreachable)."""
        self.close()
        if self.target.scheme == "udp":
            self.sock = self._open_datagram_socket()
        else:
            # socket.socket looked up now: after Locust's monkey-patching, a gevent socket.
            self.sock = connect_stream(
                self.target.host,
                self.target.port,
                self.timeout,
                tls=self.tls,
                socket_class=socket.socket,
            )

    def _open_datagram_socket(self) -> socket.socket:
        family, sockaddr = resolve(
            self.target.host, self.target.port, socket.SOCK_DGRAM, passive=False
        )[0]
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.connect(sockaddr)  # only the server's replies reach this socket
        except OSError as exc:
            sock.close()
            raise ConnectError(f"cannot reach {self.target}: {exc.strerror or exc}") from None
        return sock

    def close(self) -> None:
        if self.sock is not None:
            sock, self.sock = self.sock, None
            sock.close()

    def echo(self, payload: bytes | int, name: str | None = None) -> bytes | None:
        """Send ``payload`` (bytes, or a size), wait for all of it back, check every byte.

        Reports one request to Locust and returns the echo, or None when it failed (the
        failure is in Locust's statistics; the connection is replaced before the next echo).
        """
        data = payload_of_size(payload) if isinstance(payload, int) else bytes(payload)
        start_time = time.time()
        started = time.perf_counter()
        reply = b""
        failure: SockechoError | None = None
        try:
            if self.sock is None:
                self.connect()
            assert self.sock is not None
            if self.target.scheme == "udp":
                reply = self._echo_datagram(self.sock, data)
            else:
                reply = self._echo_stream(self.sock, data)
            if reply != data:
                raise EchoMismatch(describe_difference(data, reply))
        except SockechoError as exc:  # ResolveError too: the run goes on, the failure counts
            failure = exc
            self.close()
        elapsed_ms = (time.perf_counter() - started) * 1000
        self.request_event.fire(  # type: ignore[no-untyped-call]
            request_type=self.target.request_type,
            name=name or f"echo {len(data)} B",
            response_time=elapsed_ms,
            response_length=len(reply),
            response=None,
            context=self._context() if self._context is not None else {},
            exception=failure,
            start_time=start_time,
            url=str(self.target),
        )
        return None if failure is not None else reply

    def _echo_stream(self, sock: socket.socket, data: bytes) -> bytes:
        deadline = time.monotonic() + self.timeout
        reply = bytearray()
        view = memoryview(data)
        for offset in range(0, len(data), WINDOW):
            window = view[offset : offset + WINDOW]
            try:
                sock.settimeout(self._remaining(deadline, reply, len(data)))
                sock.sendall(window)
            except TimeoutError:
                raise self._timeout(reply, len(data)) from None
            except OSError as exc:
                raise self._broken(exc, reply, len(data)) from None
            self._receive(sock, reply, offset + len(window), len(data), deadline)
        return bytes(reply)

    def _receive(
        self, sock: socket.socket, reply: bytearray, until: int, total: int, deadline: float
    ) -> None:
        while len(reply) < until:
            try:
                sock.settimeout(self._remaining(deadline, reply, total))
                chunk = sock.recv(until - len(reply))
            except TimeoutError:
                raise self._timeout(reply, total) from None
            except OSError as exc:
                raise self._broken(exc, reply, total) from None
            if not chunk:
                raise EchoMismatch(
                    f"the server closed the connection after {len(reply)} of {total} bytes "
                    "came back"
                )
            reply += chunk

    def _echo_datagram(self, sock: socket.socket, data: bytes) -> bytes:
        if len(data) > MAX_DATAGRAM:
            raise ConfigError(f"a UDP echo carries at most {MAX_DATAGRAM} bytes, not {len(data)}")
        sock.settimeout(self.timeout)
        try:
            sock.send(data)
            return sock.recv(MAX_DATAGRAM + 1)
        except TimeoutError:
            raise EchoTimeout(
                f"no UDP echo from {self.target} within {self.timeout:g} s (lost or dropped)"
            ) from None
        except OSError as exc:  # ICMP port unreachable: nothing listens there
            raise ConnectError(f"UDP echo to {self.target} failed: {exc.strerror or exc}") from None

    def _remaining(self, deadline: float, reply: bytearray, total: int) -> float:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise self._timeout(reply, total)
        return remaining

    def _timeout(self, reply: bytearray, total: int) -> EchoTimeout:
        return EchoTimeout(
            f"timed out after {self.timeout:g} s waiting for the echo "
            f"({len(reply)} of {total} bytes came back)"
        )

    def _broken(self, exc: OSError, reply: bytearray, total: int) -> EchoMismatch:
        reason = exc.strerror or type(exc).__name__
        return EchoMismatch(
            f"the connection failed after {len(reply)} of {total} bytes came back: {reason}"
        )


def refresh_event_loop_clock(**_: object) -> None:
    """Bring gevent's clock up to date just before Locust sets the ``-t`` timer.

    libev reads the time only when its loop runs, and Locust's loop first runs after all of
    its start-up (imports, the locustfile, this module): a timer set then counts from a clock
    seconds behind, and on a slow or busy machine ``-t 4s`` ended runs after 30 ms. Locust
    fires ``init`` right before it sets the timer.
    """
    gevent.get_hub().loop.update_now()


events.init.add_listener(refresh_event_loop_clock)  # type: ignore[no-untyped-call]


class EchoUser(User):
    """A Locust user with an :class:`EchoClient` as ``self.client``; subclass it, add tasks.

    ``host`` (``--host`` or the class attribute) is ``tcp://``, ``udp://`` or
    ``tls://HOST:PORT``. Class attributes: ``timeout`` (seconds, per connection and per
    echo); for TLS, ``tls_ca_file`` (a PEM CA to trust instead of the system's) or
    ``tls_insecure`` (check nothing: self-signed test servers only). The connection opens
    in ``on_start`` and closes in ``on_stop``: a subclass overriding them calls ``super()``.
    """

    abstract = True
    timeout: ClassVar[float] = DEFAULT_TIMEOUT
    tls_ca_file: ClassVar[str | None] = None
    tls_insecure: ClassVar[bool] = False

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        if self.host is None:
            raise StopTest(
                "sockecho: error: no host to send echo load to "
                "(pass --host tcp://HOST:PORT, or set host on the user class)"
            )
        try:
            target = EchoTarget.parse(self.host)
            tls = None
            if target.scheme == "tls":
                tls = client_context(ClientTLSConfig(self.tls_ca_file, self.tls_insecure))
        except SockechoError as exc:
            raise StopTest(f"sockecho: error: {exc}") from None
        self.client = EchoClient(
            target,
            environment.events.request,
            timeout=self.timeout,
            tls=tls,
            context=self.context,
        )

    def on_start(self) -> None:
        """Connect; a refusal is left for the first echo to report as its failure."""
        with contextlib.suppress(SockechoError):
            self.client.connect()

    def on_stop(self) -> None:
        self.client.close()
