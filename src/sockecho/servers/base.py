"""The surface every server model shares: lifecycle, admission, logging, UDP, the stop.

The servers package, one idea a file::

    base.py            this file: EchoServer, what every model has in common
    blocking.py        BlockingModel: wait for a client, accept(), blocking recv()/sendall()
      iterative.py       one client at a time                         (exercise 1)
      threading_model.py a thread per client
    readiness.py       ReadinessModel: one thread, non-blocking sockets, a readiness wait
      select_loop.py     select.select()                              (exercise 2)
      selectors_loop.py  selectors.DefaultSelector (epoll)
    asyncio_impl.py    asyncio's event loop and its transports do the waiting

The echo rules themselves (what is pending, flow control, idle, limits) are in
:mod:`sockecho.core`, free of I/O.

A model subclasses :class:`EchoServer` (usually through one of the two machineries)
and writes two methods:

* ``serve()`` - wait for work and move bytes until :meth:`EchoServer.request_stop`
  is called, then close every socket it opened and return;
* ``wake()`` - make a blocked ``serve()`` look at ``self.stopping`` (thread-safe).

Everything else (binding, admission limits, counters, the open/close log lines,
classifying per-connection errors, the UDP echo step, which connections are idle)
is here, so a model module reads as just its design.

Stopping: ``request_stop()`` sets ``stopping``; the model closes its listeners at
once (no new clients) and gives open connections up to ``drain_timeout`` seconds
to finish their echoes, then closes the rest. A second ``request_stop()`` or
``graceful=False`` skips the drain. A model whose ``serve()`` fails on its own
closes its connections within the same drain time and lets the exception out
(:class:`sockecho.Server` reports it as :class:`~sockecho.errors.ServerFailed`).

Failures of one connection: any exception while serving one connection, even a
bug of ours, ends that connection only (:meth:`EchoServer.release` logs it, with
its traceback at ``-v``); it never reaches the model's loop.

UDP (``--udp``): :meth:`EchoServer.open` also binds ``datagram_sockets`` on the
listeners' port number; a model waits for them beside its listeners in its own
style and calls :meth:`EchoServer.echo_datagrams` (or, with a transport,
:meth:`EchoServer.should_echo_datagram` and :meth:`EchoServer.datagram_echoed`)
when one is readable. :meth:`EchoServer.close_listeners` closes them with the
listeners when a stop begins.

TLS (``--tls-cert``/``--tls-key``): ``tls_context`` is built once (by
:mod:`sockecho.tls`); each machinery uses it in its own style (see there). A
failed or timed-out handshake is counted in ``tls_handshake_failures`` and ends
that connection only.
"""

from __future__ import annotations

import abc
import contextlib
import errno
import json
import logging
import select
import selectors
import socket
import ssl
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar, TypeVar, cast

from sockecho import logs, net, tls
from sockecho.config import ServerConfig
from sockecho.core import (
    UNKNOWN_SOURCE,
    ConnectionGate,
    DatagramPolicy,
    DatagramVerdict,
    EchoSession,
    FaultedSession,
    ProxyHeaderError,
    RateLimitedNotice,
    Refusal,
    ServerStats,
    SessionState,
    SourceLimitReached,
)
from sockecho.errors import BindError, ConfigError
from sockecho.faults import (
    REORDER_HOLD,
    SHAPING_FAULTS,
    DatagramFate,
    DatagramFaults,
    FaultKind,
)
from sockecho.i18n import N_, _, decimal
from sockecho.identity import IDENTIFY_REQUEST, identity_line, identity_object
from sockecho.proxy_protocol import ProxyVersions

#: accept() errors that mean "out of a resource", not "this client is bad": the listener
#: stays, the model backs off for ACCEPT_BACKOFF seconds and tries again (as trio, asyncio
#: and nginx do), instead of spinning on a readable listener it cannot serve.
ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: Seconds to pause accepting after a capacity error.
ACCEPT_BACKOFF = 0.1
#: Errors that end one connection in the ordinary course of things (peer reset or vanished).
PEER_GONE = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError, TimeoutError)
#: Datagrams echoed per readiness event at most, so a UDP flood cannot starve TCP clients
#: of the loop (the rest wait in the socket's receive buffer for the next turn).
DATAGRAM_BATCH = 64
#: Attempts at finding a port free on every address of the host, for TCP and UDP, when the
#: kernel picks it (port 0): it picks for the first address only, and the number may be taken
#: on another one (``localhost``: 127.0.0.1 and ::1) or for UDP by an unrelated socket.
PORT_ATTEMPTS = 8

log = logging.getLogger("sockecho.server")


@dataclass(frozen=True, slots=True)
class SocketCalls:
    """The system-call entry points every model goes through.

    The defaults are the standard library's own; ``--trace`` swaps in
    instrumented ones that narrate each call as it happens. Models never name
    ``socket.socket``, ``select.select`` or ``selectors.DefaultSelector``
    directly, so tracing costs nothing when it is off.
    """

    socket_class: type[socket.socket] = socket.socket
    select: Callable[
        [list[socket.socket], list[socket.socket], list[socket.socket], float | None],
        tuple[list[socket.socket], list[socket.socket], list[socket.socket]],
    ] = select.select
    new_selector: Callable[[], selectors.BaseSelector] = selectors.DefaultSelector


class Waker:
    """A socketpair that wakes a thread blocked in a readiness wait from another thread."""

    def __init__(self) -> None:
        self.reader, self._writer = socket.socketpair()
        self.reader.setblocking(False)
        self._writer.setblocking(False)

    def wake(self) -> None:
        # Full of wake-ups already, or closed during shutdown: either way it is awake.
        with contextlib.suppress(OSError):
            self._writer.send(b"\0")

    def drain(self) -> None:
        try:
            while self.reader.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def close(self) -> None:
        self.reader.close()
        self._writer.close()


class EchoServer(abc.ABC):
    """Base of the five models: same constructor, same surface, same counters."""

    #: The name used by ``--model`` and the registry.
    name: ClassVar[str]
    #: One line for ``sockecho models`` and the docs.
    summary: ClassVar[str]
    #: Hard ceiling on concurrent connections this design can hold (None: only memory).
    connection_ceiling: ClassVar[int | None] = None
    #: Whether this design can obey ``--fault`` (delays and pacing need timers).
    supports_faults: ClassVar[bool] = True
    #: Why it cannot, when it cannot: the usage error says it.
    faults_refusal: ClassVar[str] = ""

    def __init__(self, config: ServerConfig, calls: SocketCalls | None = None) -> None:
        self.config = config
        self.calls = calls or SocketCalls()
        self.stats = ServerStats()
        self.gate = ConnectionGate(
            config.connection_limit(self.connection_ceiling), config.max_per_source
        )
        self.listeners: list[socket.socket] = []
        self.datagram_sockets: list[socket.socket] = []
        self.datagram_policy = DatagramPolicy(config)
        self.tls_context = tls.server_context(config)
        self.stopping = False
        self.graceful = True
        self._rejections = RateLimitedNotice()
        self._capacity_notice = RateLimitedNotice()
        self._datagram_drops = {
            DatagramVerdict.LOW_PORT: RateLimitedNotice(),
            DatagramVerdict.RATE_LIMITED: RateLimitedNotice(),
        }
        self.faults = config.fault_injector()
        if self.faults.faults and not self.supports_faults:
            raise ConfigError(
                f"the {self.name} model cannot inject faults: {self.faults_refusal}",
                "use --model asyncio, selectors, select or threading",
            )
        #: UDP faults, per UDP socket (see open()); empty without them
        self.datagram_faults: dict[socket.socket, DatagramFaults] = {}
        #: reorder: the echo held back on each UDP socket until the next one overtakes it
        self.held_datagrams: dict[socket.socket, HeldDatagram] = {}

    # -- lifecycle ---------------------------------------------------------------------------

    def open(self) -> list[str]:
        """Bind and listen on every address of the configured host; return the endpoint URLs.

        With ``udp`` the UDP sockets follow, on the port number the listeners got,
        and their ``udp://`` URLs come after the ``tcp://`` ones.
        """
        for attempt in range(PORT_ATTEMPTS):
            try:
                self.listeners = net.open_listeners(
                    self.config.host,
                    self.config.port,
                    self.config.backlog,
                    self.calls.socket_class,
                    reuse_port=self.config.reuse_port,
                )
                if self.config.udp:
                    self.datagram_sockets = net.open_datagram_sockets(
                        self.config.host,
                        self.listeners[0].getsockname()[1],
                        self.calls.socket_class,
                        reuse_port=self.config.reuse_port,
                    )
                break
            except BindError:
                self.close_listeners()
                if self.config.port or attempt == PORT_ATTEMPTS - 1:
                    raise  # a port the user chose: tell them; a picked one: try another
        for sock in self.datagram_sockets:
            faults = self.faults.datagram_faults()
            if faults is not None:
                self.datagram_faults[sock] = faults
        scheme = "tls" if self.tls_context is not None else "tcp"
        return [net.endpoint_url(scheme, sock) for sock in self.listeners] + [
            net.endpoint_url("udp", sock) for sock in self.datagram_sockets
        ]

    @abc.abstractmethod
    def serve(self) -> None:
        """Serve until :meth:`request_stop`; close every socket before returning."""

    @abc.abstractmethod
    def wake(self) -> None:
        """Make a blocked :meth:`serve` notice ``stopping`` (called from any thread)."""

    def request_stop(self, graceful: bool = True) -> None:
        """Stop accepting and finish (graceful) or drop open connections. Thread-safe."""
        if self.stopping:
            graceful = False  # asked twice: do not wait any longer
        self.graceful = self.graceful and graceful
        self.stopping = True
        self.wake()

    def close_listeners(self) -> None:
        """Stop accepting: close every listening socket (new clients are refused by the kernel)
        and every UDP socket (datagrams are echoed until a stop begins, then dropped)."""
        for sock in (*self.listeners, *self.datagram_sockets):
            sock.close()
        self.listeners = []
        self.datagram_sockets = []

    def abandon(self) -> None:
        """Release what the constructor and :meth:`open` acquired, for a model whose
        ``serve()`` will never run (``open()`` failed). Subclasses close their own extras."""
        self.close_listeners()

    def drain_deadline(self) -> float:
        """Monotonic time by which open connections must be closed after a stop."""
        return time.monotonic() + (self.config.drain_timeout if self.graceful else 0.0)

    # -- per-connection bookkeeping --------------------------------------------------------

    def admit(self, addr: net.SockAddr) -> EchoSession | None:
        """Decide about a freshly accepted client at ``addr``: a session to serve, or None
        when a limit is reached or the server is stopping (then close the socket at once).

        With ``proxy_protocol`` the session first awaits its header (see
        :meth:`header_received`): only the global limit applies now, the per-source
        limit once the header names the client (:class:`~sockecho.core.ConnectionGate`).
        """
        source = net.source_of(addr)
        peer = net.format_sockaddr(addr)
        if self.stopping:
            self.stats.rejected()
            log.debug("refused %s: the server is stopping", peer)
            return None
        proxied = self.config.proxy_protocol is not None
        refusal = self.gate.try_admit(UNKNOWN_SOURCE if proxied else source)
        if refusal is not None:
            self.rejected(peer, refusal)
            return None
        plan = self.faults.plan_connection()
        session_source = UNKNOWN_SOURCE if proxied else source
        session: EchoSession
        if plan is None:
            session = EchoSession(self.config, peer, session_source)
        else:
            session = FaultedSession(self.config, peer, session_source, plan)
        if proxied:
            versions = cast(ProxyVersions, self.config.proxy_protocol)
            session.expect_proxy_header(versions, self.config.proxy_header_timeout)
        else:
            self.opened(session)
        if plan is not None:
            specs = " ".join(map(str, plan.faults))
            log.debug(
                "faults on %s: %s",
                session.peer,
                specs,
                extra=logs.event("fault", kind="plan", peer=session.peer, faults=specs),
            )
            for kind in plan.kinds:
                if kind in SHAPING_FAULTS:
                    self.stats.fault(kind)
        return session

    def fault_fired(self, session: EchoSession, kind: FaultKind) -> None:
        """Count and log a fault a model carried out (reset, limit, stall, slow close)."""
        what = {
            FaultKind.RESET_AFTER: "reset (RST)",
            FaultKind.LIMIT_DATA: "closed its side (FIN), discarding input,",
            FaultKind.STALL_AFTER: "stalled",
            FaultKind.SLOW_CLOSE: "closing late",
        }[kind]
        log.debug(
            "fault %s on %s: %s after %d bytes",
            kind.value,
            session.peer,
            what,
            session.bytes_sent,
            extra=logs.event("fault", kind=kind.value, peer=session.peer, bytes=session.bytes_sent),
        )
        self.stats.fault(kind)

    def admit_socket(self, conn: socket.socket, addr: net.SockAddr) -> EchoSession | None:
        """:meth:`admit` for a socket the model accepted itself; closes it when refused."""
        session = self.admit(addr)
        if session is None:
            conn.close()
        else:
            net.set_nodelay(conn)
        return session

    def rejected(self, peer: str, refusal: Refusal) -> None:
        """Count and (rate-limited) log a connection refused by a limit."""
        folded = self._rejections.note()
        if folded:
            log.warning(
                _("rejected %d connection(s): limit reached (%d connections, %s per source)"),
                folded,
                self.gate.max_connections,
                self.gate.max_per_source or _("no limit"),
                extra=logs.event("rejected", peer=peer, reason=refusal.value, count=folded),
            )
        self.stats.rejected(per_source=refusal is Refusal.SOURCE)  # after the log line

    def opened(self, session: EchoSession) -> None:
        """Log and count ``session`` as open (at accept, or once its PROXY header is read)."""
        session.admitted = True
        via = _(" via %s") % session.via if session.via else ""
        log.info(
            _("open %s%s"),
            session.peer,
            via,
            extra=logs.event("open", peer=session.peer, via=session.via or None),
        )
        self.stats.opened()

    def header_received(
        self, session: EchoSession, data: bytes | bytearray | memoryview
    ) -> bytes | None:
        """Bytes read while ``session.awaiting_header`` (``b''``: the client closed).

        None: read more. Bytes: the header is complete and the connection open
        (logged, counted, under its client's per-source limit); they are the client's
        first data: write :meth:`identity` (if any), then echo them. Raises
        :class:`~sockecho.core.ProxyHeaderError` (not a valid header) or
        :class:`~sockecho.core.SourceLimitReached`: close the connection and
        :meth:`release` it with that error, as with any other.
        """
        rest = session.header_received(data)
        if rest is None:
            return None
        header = session.proxy_header
        assert header is not None
        client = header.describe()["source"]
        if header.source is not None and client is not None:  # the header names the client
            client_source = net.source_of(header.source)
            if not self.gate.reassign(UNKNOWN_SOURCE, client_source):
                raise SourceLimitReached(client)
            session.source = client_source
            session.via = session.peer
            session.peer = client
        self.opened(session)
        return rest

    def header_timeout(self) -> ProxyHeaderError:
        """The error that closes a connection whose PROXY header is late."""
        return ProxyHeaderError(
            f"no complete PROXY header within {self.config.proxy_header_timeout:g} s"
        )

    def identity(self, session: EchoSession, sock: Any, tls_object: Any = None) -> bytes:
        """The ``--identify`` line for ``session`` on ``sock`` (b'' without ``identify``).

        ``sock`` answers ``getsockname()`` (a socket, or an asyncio transport's
        ``get_extra_info``); ``tls_object`` is the connection's SSLSocket/SSLObject.
        Write it after the TLS handshake and the PROXY header, before any echo.
        """
        if self.config.identify is None:
            return b""
        try:
            local = net.format_sockaddr(sock.getsockname())
        except OSError:
            local = None
        header = session.proxy_header
        return identity_line(
            self.config.identify,
            peer=session.peer,
            local=local,
            proxy=header.describe() if header is not None else None,
            tls_info=tls.describe_session(tls_object) if tls_object is not None else None,
        )

    def release(
        self, session: EchoSession, error: BaseException | None = None, *, idle: bool = False
    ) -> None:
        """Account for a connection the model has just closed."""
        if session.state is SessionState.CLOSED:
            return
        session.close()
        self.gate.release(session.source)
        if not session.admitted:  # a PROXY connection that never got past its header
            self.header_failed(session, error)
            return
        # A client that speaks something other than TLS to a TLS port is its own problem.
        unexpected = error is not None and not isinstance(error, (*PEER_GONE, ssl.SSLError))
        reason = N_("idle timeout") if idle else "closed"
        if error is not None:
            reason = describe_error(error)
        log.log(
            logging.WARNING if unexpected else logging.INFO,
            _("close %s: echoed %d bytes in %s s%s"),
            session.peer,
            session.bytes_sent,
            decimal(f"{session.duration():.3f}"),
            "" if reason == "closed" else f" ({_(reason)})",
            extra=logs.event(
                "close",
                peer=session.peer,
                bytes=session.bytes_sent,
                duration=round(session.duration(), 6),
                reason=reason,
            ),
        )
        if unexpected:  # not a network event: a bug of ours or of a library; -v shows where
            log.debug("the error that closed %s:", session.peer, exc_info=error)
        # Counted after it is logged: whoever waits on the counters (stats.wait_for) then
        # finds the line too.
        self.stats.closed(session, error=error is not None, idle=idle)

    def header_failed(self, session: EchoSession, error: BaseException | None) -> None:
        """A PROXY connection closed before it was open: one line saying why, counted."""
        if isinstance(error, SourceLimitReached):
            self.rejected(str(error), Refusal.SOURCE)
            return
        if isinstance(error, ProxyHeaderError):
            why = str(error)
        elif error is not None:
            why = f"{describe_error(error)} before a complete PROXY header"
        else:
            why = "closed before a complete PROXY header"
        log.warning(
            "proxy header from %s: %s",
            session.peer,
            why,
            extra=logs.event("proxy_failed", peer=session.peer, reason=why),
        )
        self.stats.proxy_header_failed()

    def accept_failed(self, exc: OSError) -> bool:
        """Handle an accept() error. True: a capacity error, back off before accepting again."""
        if exc.errno in ACCEPT_CAPACITY_ERRNOS:
            folded = self._capacity_notice.note()
            if folded:
                log.warning(
                    "accept failed %d time(s): %s; pausing accept for %.1f s",
                    folded,
                    describe_error(exc),
                    ACCEPT_BACKOFF,
                )
            return True
        # ECONNABORTED and friends: that client gave up between SYN and accept(); next.
        log.debug("accept: %s", describe_error(exc))
        return False

    # -- UDP ---------------------------------------------------------------------------------

    def echo_datagrams(self, sock: socket.socket) -> None:
        """Echo the datagrams waiting on non-blocking UDP ``sock`` (at most DATAGRAM_BATCH).

        Each is read whole (a 65535-byte buffer: nothing is cut short) and sent
        back to its source when :class:`~sockecho.core.DatagramPolicy` allows it.
        """
        for _datagram in range(DATAGRAM_BATCH):
            try:
                data, addr = sock.recvfrom(net.DATAGRAM_BUFFER)
            except BlockingIOError:
                return
            except OSError as exc:  # an ICMP error queued by an earlier sendto (some systems)
                log.debug("udp recvfrom: %s", describe_error(exc))
                continue
            if not self.should_echo_datagram(addr):
                continue
            if data == IDENTIFY_REQUEST:
                data = self.datagram_identity(sock, addr, data)
            if self.datagram_faults:
                self.echo_faulted_datagram(sock, data, addr)
                continue
            try:
                sock.sendto(data, addr)
            except OSError as exc:  # unreachable, or the send buffer is full: UDP may drop
                self.datagram_echoed(len(data), exc)
            else:
                self.datagram_echoed(len(data))

    def echo_faulted_datagram(self, sock: socket.socket, data: bytes, addr: net.SockAddr) -> None:
        """Echo ``data`` as the UDP faults decide: dropped, corrupted, sent twice, or held
        back (reorder) until the next echo on ``sock`` has gone, or :meth:`release_held_datagram`
        at its ``due`` time (a model with timers calls it then)."""
        fate = self.datagram_faults[sock].fate(len(data))
        self.datagram_fate(fate, addr)
        if fate.drop:
            return
        payload = fate.apply(data)
        overtaken = self.held_datagrams.pop(sock, None)
        if fate.hold:
            due = time.monotonic() + REORDER_HOLD
            self.held_datagrams[sock] = HeldDatagram(payload, addr, fate.copies, due)
            self.datagram_held(sock, due)
        else:
            self.send_datagram(sock, payload, addr, fate.copies)
        if overtaken is not None:
            self.send_datagram(sock, overtaken.payload, overtaken.addr, overtaken.copies)

    def datagram_fate(self, fate: DatagramFate, addr: net.SockAddr) -> None:
        """Count and log the faults drawn for a datagram from ``addr``."""
        for kind in fate.kinds:
            self.stats.fault(kind)
        if fate.kinds:
            kinds = "+".join(kind.value for kind in fate.kinds)
            peer = net.format_sockaddr(addr)
            log.debug(
                "fault %s on a datagram from %s",
                kinds,
                peer,
                extra=logs.event("fault", kind=kinds, peer=peer),
            )

    def datagram_held(self, sock: socket.socket, due: float) -> None:  # noqa: B027 - a hook
        """A reordered echo waits on ``sock``: call :meth:`release_held_datagram` at ``due``
        (the readiness models set a timer; the threading model's UDP thread waits until then)."""

    def release_held_datagram(self, sock: socket.socket) -> None:
        """Send the echo held back on ``sock`` if it is due (no echo overtook it in time)."""
        held = self.held_datagrams.get(sock)
        if held is None:
            return
        if held.due > time.monotonic():  # a later echo was held since that timer was set
            self.datagram_held(sock, held.due)
            return
        del self.held_datagrams[sock]
        self.send_datagram(sock, held.payload, held.addr, held.copies)

    def send_datagram(
        self, sock: socket.socket, payload: bytes, addr: net.SockAddr, copies: int = 1
    ) -> None:
        """sendto() ``copies`` times and count one echo (UDP may drop: errors are counted)."""
        try:
            for _copy in range(copies):
                sock.sendto(payload, addr)
        except OSError as exc:
            self.datagram_echoed(len(payload), exc)
        else:
            self.datagram_echoed(len(payload))

    def should_echo_datagram(self, addr: net.SockAddr) -> bool:
        """Whether a datagram from ``addr`` gets its echo; a drop is counted and logged."""
        verdict = self.datagram_policy.check(net.source_of(addr), int(addr[1]))
        if verdict is DatagramVerdict.REPLY:
            return True
        self.stats.datagram(verdict)
        folded = self._datagram_drops[verdict].note()
        if folded:
            why = (
                "from a source port below 1024 (loop guard; --udp-allow-low-ports allows them)"
                if verdict is DatagramVerdict.LOW_PORT
                else f"over --udp-rate {self.config.udp_rate:g}/s per source address"
            )
            log.warning(
                "dropped %d datagram(s) %s, last from %s", folded, why, net.format_sockaddr(addr)
            )
        return False

    def datagram_identity(self, sock: Any, addr: net.SockAddr, data: bytes) -> bytes:
        """The reply to a datagram of exactly ``sockecho-identify``: the identity object with
        ``--identify`` (without its newline), else its plain echo."""
        if self.config.identify is None:
            return data
        try:
            local = net.format_sockaddr(sock.getsockname())
        except OSError:
            local = None
        obj = identity_object(self.config.identify, peer=net.format_sockaddr(addr), local=local)
        return json.dumps(obj, ensure_ascii=False, separators=(", ", ": ")).encode()

    def datagram_echoed(self, size: int, error: OSError | None = None) -> None:
        """Count an echo of ``size`` bytes handed to the kernel, or its failure."""
        if error is not None:
            log.debug("udp sendto: %s", describe_error(error))
        self.stats.datagram(DatagramVerdict.REPLY, size=size, error=error is not None)


@dataclass(frozen=True, slots=True)
class HeldDatagram:
    """An echo the reorder fault holds back until the next one on its socket has gone."""

    payload: bytes
    addr: net.SockAddr
    copies: int
    due: float  # monotonic time at which it goes anyway


def describe_error(exc: BaseException) -> str:
    """``ConnectionResetError [ECONNRESET]``-style text for logs and traces."""
    if isinstance(exc, ssl.SSLError):  # its errno is OpenSSL's, not the system's
        return f"{type(exc).__name__} [{tls.describe_ssl_error(exc)}]"
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{type(exc).__name__} [{errno.errorcode.get(exc.errno, exc.errno)}]"
    return type(exc).__name__


#: Seconds between idle sweeps (idle closes are this late at most).
IDLE_SWEEP_INTERVAL = 1.0

Key = TypeVar("Key", bound=Hashable)


def sweep_interval(idle_timeout: float, *timeouts: float) -> float:
    """How often a model checks for idle connections (and other ``timeouts``), seconds."""
    return min([IDLE_SWEEP_INTERVAL, *(t / 4 for t in (idle_timeout, *timeouts) if t)])


def idle_connections(
    sessions: Mapping[Key, EchoSession], socket_of: Callable[[Key], Any]
) -> list[Key]:
    """The one idle sweep every model runs: the connections idle past the limit, now.

    ``sessions`` maps whatever the model keeps per connection (a socket, a
    protocol) to its session; ``socket_of`` gives the connection's socket, whose
    kernel send queue counts as activity (a client slowly draining a large echo
    is not idle). Each model closes what this returns in its own way.
    """
    now = time.monotonic()
    return [
        key
        for key, session in list(sessions.items())
        if session.is_idle(now, partial(_kernel_unsent, socket_of(key)))
    ]


def _kernel_unsent(sock: Any) -> int:
    return 0 if sock is None else net.kernel_unsent(sock)
