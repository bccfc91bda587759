"""What every server model has in common: the surface, the bookkeeping, the stop signal.

A model subclasses :class:`EchoServer` and writes two methods:

* ``serve()`` - wait for work and move bytes until :meth:`EchoServer.request_stop`
  is called, then close every socket it opened and return;
* ``wake()`` - make a blocked ``serve()`` look at ``self.stopping`` (thread-safe).

Everything else (binding, admission limits, counters, the open/close log lines,
classifying per-connection errors, the UDP echo step) is here or in :mod:`sockecho.core`, so a
model module reads as just its design.

Stopping: ``request_stop()`` sets ``stopping``; the model closes its listeners at
once (no new clients) and gives open connections up to ``drain_timeout`` seconds
to finish their echoes, then closes the rest. A second ``request_stop()`` or
``graceful=False`` skips the drain.

UDP (``--udp``): :meth:`EchoServer.open` also binds ``datagram_sockets`` on the
listeners' port number; a model waits for them beside its listeners in its own
style and calls :meth:`EchoServer.echo_datagrams` (or, with a transport,
:meth:`EchoServer.should_echo_datagram` and :meth:`EchoServer.datagram_echoed`)
when one is readable. :meth:`EchoServer.close_listeners` closes them with the
listeners when a stop begins.

TLS (``--tls-cert``/``--tls-key``): ``tls_context`` is built once (by
:mod:`sockecho.tls`). :class:`BlockingModel` wraps each accepted socket and runs
the handshake under one deadline; :class:`NonBlockingModel` drives a
non-blocking handshake from the loop (``SSLWantReadError`` /
``SSLWantWriteError``) and reads what the SSL object still holds (``pending()``),
which no readiness event announces. A failed or timed-out handshake is counted
in ``tls_handshake_failures`` and ends that connection only.
"""

from __future__ import annotations

import abc
import contextlib
import errno
import logging
import select
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import ClassVar

from sockecho import net, tls
from sockecho.config import ServerConfig
from sockecho.core import (
    ConnectionGate,
    DatagramPolicy,
    DatagramVerdict,
    EchoSession,
    RateLimitedNotice,
    ServerStats,
    SessionState,
)
from sockecho.errors import BindError

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
#: Attempts at finding a port free for both TCP and UDP when the kernel picks it (port 0):
#: the TCP port it gives may be taken for UDP by an unrelated socket.
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

    # -- lifecycle ---------------------------------------------------------------------------

    def open(self) -> list[str]:
        """Bind and listen on every address of the configured host; return the endpoint URLs.

        With ``udp`` the UDP sockets follow, on the port number the listeners got,
        and their ``udp://`` URLs come after the ``tcp://`` ones.
        """
        for attempt in range(PORT_ATTEMPTS):
            self.listeners = net.open_listeners(
                self.config.host, self.config.port, self.config.backlog, self.calls.socket_class
            )
            if not self.config.udp:
                break
            try:
                self.datagram_sockets = net.open_datagram_sockets(
                    self.config.host, self.listeners[0].getsockname()[1], self.calls.socket_class
                )
                break
            except BindError:
                self.close_listeners()
                if self.config.port or attempt == PORT_ATTEMPTS - 1:
                    raise  # a port the user chose: tell them; a picked one: try another
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
        when a limit is reached or the server is stopping (then close the socket at once)."""
        source = net.source_of(addr)
        if self.stopping:
            self.stats.rejected()
            log.debug("refused %s: the server is stopping", net.format_sockaddr(addr))
            return None
        if not self.gate.admit(source):
            folded = self._rejections.note()
            if folded:
                log.warning(
                    "rejected %d connection(s): limit reached (%d connections, %s per source)",
                    folded,
                    self.gate.max_connections,
                    self.gate.max_per_source or "no limit",
                )
            self.stats.rejected()  # after the log line, as in release()
            return None
        session = EchoSession(self.config, net.format_sockaddr(addr), source)
        log.info("open %s", session.peer)
        self.stats.opened()
        return session

    def admit_socket(self, conn: socket.socket, addr: net.SockAddr) -> EchoSession | None:
        """:meth:`admit` for a socket the model accepted itself; closes it when refused."""
        session = self.admit(addr)
        if session is None:
            conn.close()
        else:
            net.set_nodelay(conn)
        return session

    def release(
        self, session: EchoSession, error: BaseException | None = None, *, idle: bool = False
    ) -> None:
        """Account for a connection the model has just closed."""
        if session.state is SessionState.CLOSED:
            return
        session.close()
        self.gate.release(session.source)
        # A client that speaks something other than TLS to a TLS port is its own problem.
        unexpected = error is not None and not isinstance(error, (*PEER_GONE, ssl.SSLError))
        why = " (idle timeout)" if idle else ""
        if error is not None:
            why = f" ({describe_error(error)})"
        log.log(
            logging.WARNING if unexpected else logging.INFO,
            "close %s: echoed %d bytes in %.3f s%s",
            session.peer,
            session.bytes_sent,
            session.duration(),
            why,
        )
        # Counted after it is logged: whoever waits on the counters (stats.wait_for) then
        # finds the line too.
        self.stats.closed(session, error=error is not None, idle=idle)

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
        for _ in range(DATAGRAM_BATCH):
            try:
                data, addr = sock.recvfrom(net.DATAGRAM_BUFFER)
            except BlockingIOError:
                return
            except OSError as exc:  # an ICMP error queued by an earlier sendto (some systems)
                log.debug("udp recvfrom: %s", describe_error(exc))
                continue
            if not self.should_echo_datagram(addr):
                continue
            try:
                sock.sendto(data, addr)
            except OSError as exc:  # unreachable, or the send buffer is full: UDP may drop
                self.datagram_echoed(len(data), exc)
            else:
                self.datagram_echoed(len(data))

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

    def datagram_echoed(self, size: int, error: OSError | None = None) -> None:
        """Count an echo of ``size`` bytes handed to the kernel, or its failure."""
        if error is not None:
            log.debug("udp sendto: %s", describe_error(error))
        self.stats.datagram(DatagramVerdict.REPLY, size=size, error=error is not None)


def describe_error(exc: BaseException) -> str:
    """``ConnectionResetError [ECONNRESET]``-style text for logs and traces."""
    if isinstance(exc, ssl.SSLError):  # its errno is OpenSSL's, not the system's
        return f"{type(exc).__name__} [{tls.describe_ssl_error(exc)}]"
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{type(exc).__name__} [{errno.errorcode.get(exc.errno, exc.errno)}]"
    return type(exc).__name__


class BlockingModel(EchoServer):
    """Shared plumbing of the blocking models (``iterative``, ``threading``).

    They wait for a client in a selector over the listening sockets and a
    :class:`Waker` (so a stop request can wake them, and several listening
    addresses are watched at once), then call ``accept()`` on the ready
    listener, which is non-blocking (a client that left meanwhile costs an
    ``EAGAIN``, not a stall). The accepted socket is made blocking: serving a
    client is plain blocking ``recv()``/``sendall()``. Open connection sockets
    are tracked so that a stop can shut down the ones still open when the drain
    time is over, which wakes whatever thread is blocked in their ``recv()``.
    """

    #: Echo UDP datagrams in :meth:`next_client` while waiting for a client (iterative);
    #: otherwise the model serves its UDP sockets elsewhere (threading: their own thread).
    echo_datagrams_while_waiting: ClassVar[bool] = False
    #: Enforce the idle limit by calling :meth:`sweep_idle_connections` from a thread of the
    #: model's own (threading) instead of with a socket timeout (iterative). CPython
    #: implements a socket timeout as a poll() before every recv() and send(): two more
    #: system calls and GIL hand-offs per echo (docs/PERFORMANCE.md).
    idle_by_sweep: ClassVar[bool] = False

    def __init__(self, config: ServerConfig, calls: SocketCalls | None = None) -> None:
        super().__init__(config, calls)
        self._waker = Waker()
        # Created on first use and kept: a selector per accept would need a fresh descriptor
        # exactly when they may have run out (EMFILE), and would come and go under fd counts.
        self._waiting: selectors.BaseSelector | None = None
        self._open: set[socket.socket] = set()
        self._sessions: dict[socket.socket, EchoSession] = {}  # of open connections
        self._idle_closed: set[socket.socket] = set()  # shut down by an idle sweep
        self._open_changed = threading.Condition()
        self._expiry: threading.Timer | None = None
        self._drain_over = False  # set once a stop's drain time is over

    def wake(self) -> None:
        # Stop accepting at once, even while the serving thread is busy with a client (the
        # iterative model): on Linux shutdown(SHUT_RD) takes a listening socket out of the
        # LISTEN state, so new clients are refused instead of queueing in the backlog.
        for listener in self.listeners:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RD)
        self._waker.wake()
        deadline = self.drain_deadline()
        with self._open_changed:
            if self._expiry is not None:
                self._expiry.cancel()
            self._expiry = threading.Timer(
                max(0.0, deadline - time.monotonic()), self._shutdown_open
            )
            self._expiry.daemon = True
            self._expiry.name = "sockecho-drain-timer"  # as --trace names it
            self._expiry.start()

    def abandon(self) -> None:
        super().abandon()
        self._waker.close()

    def _shutdown_open(self) -> None:
        with self._open_changed:
            self._drain_over = True
            for conn in self._open:
                with contextlib.suppress(OSError):
                    # Wakes the blocked recv()/sendall(). The plain socket's shutdown, even
                    # under TLS: SSLSocket.shutdown() would drop the SSL state under the
                    # feet of the thread using it.
                    socket.socket.shutdown(conn, socket.SHUT_RDWR)

    def next_client(self) -> tuple[socket.socket, net.SockAddr] | None:
        """Wait for a connection and accept it; None when stopping.

        With :attr:`echo_datagrams_while_waiting` (the iterative model), UDP
        datagrams that arrive meanwhile are echoed here: its only chance to.
        """
        if self._waiting is None:  # one selector for the server's life, not one per client
            self._waiting = self.calls.new_selector()
            for sock in self.listeners:
                sock.setblocking(False)
                self._waiting.register(sock, selectors.EVENT_READ)
            if self.echo_datagrams_while_waiting:
                for sock in self.datagram_sockets:
                    sock.setblocking(False)
                    self._waiting.register(sock, selectors.EVENT_READ)
            self._waiting.register(self._waker.reader, selectors.EVENT_READ)
        while not self.stopping:
            for key, _events in self._waiting.select():
                if key.fileobj is self._waker.reader:
                    self._waker.drain()
                    continue
                ready = key.fileobj
                assert isinstance(ready, socket.socket)
                if ready.type == socket.SOCK_DGRAM:
                    self.echo_datagrams(ready)
                    continue
                try:
                    conn, addr = ready.accept()
                except BlockingIOError:
                    continue  # the client already left
                except OSError as exc:
                    if self.accept_failed(exc):
                        # Back off on the waker alone (a stop still interrupts it): the
                        # listener stays readable while the client waits, so waiting on it
                        # too would return at once and spin.
                        self.calls.select([self._waker.reader], [], [], ACCEPT_BACKOFF)
                    continue
                conn.setblocking(True)
                return conn, addr
        return None

    def track(self, conn: socket.socket) -> None:
        with self._open_changed:
            self._open.add(conn)
            # Admitted just before a stop and tracked after the drain ended: no drain for it.
            # (A stop that arrives between admission and here must not cut everyone else's
            # drain short: the expiry timer will find this connection in _open in time.)
            if self._drain_over:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)

    def retrack(self, old: socket.socket, new: socket.socket) -> None:
        """``new`` replaces tracked ``old`` (TLS wraps the accepted socket in a new object)."""
        with self._open_changed:
            self._open.discard(old)
            self._open.add(new)

    def close_tracked(self, conn: socket.socket) -> None:
        """Close a connection's socket and stop tracking it, in one step under the lock.

        Closing first means :meth:`wait_closed` (and so ``serve()``) returns only once
        every connection socket is really closed; holding the lock means the drain's
        ``shutdown()`` never reaches a descriptor number that is being closed and reused.
        """
        with self._open_changed:
            self._open.discard(conn)
            conn.close()
            self._open_changed.notify_all()

    def wait_closed(self) -> None:
        """After the accept loop ended: wait for open connections (the drain), then clean up."""
        if self._waiting is not None:
            self._waiting.close()
        self.close_listeners()
        with self._open_changed:
            self._open_changed.wait_for(lambda: not self._open)
            if self._expiry is not None:
                self._expiry.cancel()
        self._waker.close()

    def echo_until_closed(self, conn: socket.socket, session: EchoSession) -> None:
        """The blocking echo loop of exercise 1: recv, sendall, until the peer is done.

        ``sendall`` blocks while the client does not read: that is this design's
        back-pressure, and it holds at most one ``read_size`` buffer per client.
        """
        error: BaseException | None = None
        idle = False
        self.track(conn)
        try:
            if self.tls_context is not None:
                conn, error = self.tls_accept(conn)
                if error is not None:
                    return
            if self.idle_by_sweep:  # the socket that echoes (after TLS) is the one swept
                self._sessions[conn] = session
                conn.settimeout(None)
            else:
                conn.settimeout(self.config.idle_timeout or None)
            while True:
                data = conn.recv(self.config.read_size)
                if not data:  # b'': the client shut down its sending side (or closed)
                    break
                conn.sendall(data)
                session.echoed(len(data))
        except TimeoutError:
            idle = True
        except OSError as exc:  # reset, broken pipe, shut down by a stop: this client only
            error = exc
        finally:
            self.close_tracked(conn)
            self._sessions.pop(conn, None)
            if conn in self._idle_closed:  # the sweep's shutdown ended the recv()/sendall()
                self._idle_closed.discard(conn)
                idle, error = True, None
            self.release(session, error, idle=idle)

    def sweep_idle_connections(self) -> None:
        """Shut down every connection idle past the limit; its thread then ends as an idle
        close. Under the lock :meth:`close_tracked` takes, so a closed socket is never touched."""
        now = time.monotonic()
        with self._open_changed:
            for conn in self._open:
                session = self._sessions.get(conn)
                if session is not None and session.is_idle(now, partial(net.kernel_unsent, conn)):
                    self._idle_closed.add(conn)
                    with contextlib.suppress(OSError):
                        conn.shutdown(socket.SHUT_RDWR)  # wakes the blocked recv()/sendall()

    def tls_accept(self, conn: socket.socket) -> tuple[socket.socket, OSError | None]:
        """Wrap accepted ``conn`` in TLS and complete the handshake: (the socket to use, the
        error that ended the handshake or None).

        The timeout is a deadline for the whole handshake, not for each read in it, so a
        client sending its ClientHello a byte at a time gets no longer than a silent one.
        """
        assert self.tls_context is not None
        conn.settimeout(self.config.tls_handshake_timeout)
        try:
            tls_conn = self.tls_context.wrap_socket(
                conn, server_side=True, do_handshake_on_connect=False
            )
        except OSError as exc:
            self.stats.tls_handshake_failed()
            return conn, exc
        self.retrack(conn, tls_conn)
        try:
            tls_conn.do_handshake()
        except OSError as exc:  # garbage instead of a ClientHello, a reset, the deadline
            self.stats.tls_handshake_failed()
            return tls_conn, exc
        return tls_conn, None


#: Seconds between idle sweeps of the event-loop models (idle closes are this late at most).
IDLE_SWEEP_INTERVAL = 1.0
#: What a non-blocking recv()/send() raises when it must wait: for plain sockets
#: BlockingIOError; under TLS, the SSL object may need to read or to write first.
TRY_AGAIN = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


def sweep_interval(idle_timeout: float, *timeouts: float) -> float:
    """How often an event loop checks for idle connections (and other ``timeouts``), seconds."""
    return min([IDLE_SWEEP_INTERVAL, *(t / 4 for t in (idle_timeout, *timeouts) if t)])


def tls_buffered(conn: socket.socket) -> bool:
    """Whether the SSL object holds decrypted bytes not read yet (no readiness announces them)."""
    return isinstance(conn, ssl.SSLSocket) and conn.pending() > 0


@dataclass(slots=True)
class PendingHandshake:
    """A TLS connection of a readiness model that has not finished its handshake."""

    deadline: float  # monotonic time at which it is closed if still handshaking
    wants_write: bool = False  # the SSL object waits to write (else to read)


class NonBlockingModel(EchoServer):
    """Shared byte-moving steps of the readiness models (``select``, ``selectors``).

    Sockets are non-blocking: ``recv()`` and ``send()`` never wait, they raise
    ``BlockingIOError`` instead. The loop asks the kernel which sockets are ready
    and calls :meth:`on_readable` / :meth:`on_writable`; the session decides what
    is pending and whether to keep reading.
    """

    def __init__(self, config: ServerConfig, calls: SocketCalls | None = None) -> None:
        super().__init__(config, calls)
        self._waker = Waker()
        self.sessions: dict[socket.socket, EchoSession] = {}
        #: TLS connections still handshaking (they have a session, but echo nothing yet)
        self.handshakes: dict[socket.socket, PendingHandshake] = {}
        #: monotonic time before which listeners are not watched (after EMFILE and friends)
        self.accept_paused_until = 0.0

    def wake(self) -> None:
        self._waker.wake()

    def abandon(self) -> None:
        super().abandon()
        self._waker.close()

    def accept_ready(self, listener: socket.socket) -> bool:
        """Accept every waiting client; False when out of descriptors (then back off:
        do not watch the listeners until ``accept_paused_until``)."""
        while True:
            try:
                conn, addr = listener.accept()
            except BlockingIOError:
                return True
            except OSError as exc:
                if self.accept_failed(exc):
                    self.accept_paused_until = time.monotonic() + ACCEPT_BACKOFF
                    return False
                continue
            if not self.can_watch(conn):
                conn.close()
                continue
            session = self.admit_socket(conn, addr)
            if session is None:
                continue
            conn.setblocking(False)
            if self.tls_context is None:
                self.sessions[conn] = session
                self.watch_or_drop(conn, session)
                continue
            try:
                conn = self.tls_context.wrap_socket(
                    conn, server_side=True, do_handshake_on_connect=False
                )
            except OSError as exc:
                self.stats.tls_handshake_failed()
                conn.close()
                self.release(session, exc)
                continue
            self.sessions[conn] = session
            deadline = time.monotonic() + self.config.tls_handshake_timeout
            self.handshakes[conn] = PendingHandshake(deadline)
            self.continue_handshake(conn, session)

    def can_watch(self, conn: socket.socket) -> bool:
        """Whether this loop can wait on ``conn`` (the select model says no at FD_SETSIZE)."""
        return True

    def watch(self, conn: socket.socket, session: EchoSession) -> None:
        """Start (or update) waiting on ``conn`` for its :meth:`interest`. Default: nothing."""

    def interest(self, conn: socket.socket, session: EchoSession) -> tuple[bool, bool]:
        """(wait to read, wait to write) for ``conn``: what its session, or its TLS
        handshake, is waiting for."""
        handshake = self.handshakes.get(conn)
        if handshake is not None:
            return not handshake.wants_write, handshake.wants_write
        return session.wants_read, session.wants_write

    def continue_handshake(self, conn: socket.socket, session: EchoSession) -> None:
        """Take the TLS handshake of ``conn`` one step further, as far as the socket allows."""
        assert isinstance(conn, ssl.SSLSocket)
        handshake = self.handshakes[conn]
        try:
            conn.do_handshake()
        except ssl.SSLWantReadError:
            handshake.wants_write = False
        except ssl.SSLWantWriteError:
            handshake.wants_write = True
        except OSError as exc:  # garbage instead of a ClientHello, a reset...
            self.stats.tls_handshake_failed()
            self.drop(conn, session, exc)
            return
        else:
            del self.handshakes[conn]
        self.watch_or_drop(conn, session)  # echo interest now, or the handshake's next step

    def forget(self, conn: socket.socket) -> None:
        """Stop waiting on connection ``conn`` (before it is closed). Default: nothing."""

    def accepting(self) -> bool:
        """Whether to watch the listeners now (not while backing off from EMFILE)."""
        if self.accept_paused_until and time.monotonic() >= self.accept_paused_until:
            self.accept_paused_until = 0.0
        return not self.accept_paused_until and not self.stopping

    def on_readable(self, conn: socket.socket, session: EchoSession) -> None:
        """recv() once and echo it at once; only what the kernel does not take is kept.

        The common case, nothing pending, sends straight from the received bytes:
        no copy into the session and no change of interest, so an echo costs one
        recv() and one send() (and its share of the readiness wait). Under TLS,
        bytes the SSL object still holds decrypted are read on (while the session
        wants more): the kernel has no readiness to report for them.
        """
        if conn in self.handshakes:
            self.continue_handshake(conn, session)
            return
        while True:
            try:
                data = conn.recv(self.config.read_size)
            except TRY_AGAIN:
                return  # (earlier passes of this loop left nothing pending)
            except OSError as exc:
                self.drop(conn, session, exc)
                return
            if data and not session.wants_write:
                try:
                    sent = conn.send(data)
                except TRY_AGAIN:
                    sent = 0  # (TLS retries the same bytes, now first in the session's buffer)
                except OSError as exc:
                    self.drop(conn, session, exc)
                    return
                session.echoed(sent)
                if sent == len(data):
                    if session.wants_read and tls_buffered(conn):
                        continue
                    return
                data = data[sent:]  # the kernel took part: the session keeps the rest
            break
        if data:
            session.data_received(data)
        else:  # b'': the client shut down its sending side (under TLS: or closed it)
            session.eof_received()
        self.on_writable(conn, session)

    def on_writable(self, conn: socket.socket, session: EchoSession) -> None:
        """send() pending echo until the kernel's buffer is full; a partial send keeps the rest."""
        if conn in self.handshakes:
            self.continue_handshake(conn, session)
            return
        try:
            while session.wants_write:
                sent = conn.send(session.data_to_send())
                session.data_sent(sent)
        except TRY_AGAIN:
            # The client is not reading fast enough: wait until writable again. (With
            # renegotiation refused, a TLS send never has to wait for a read.)
            pass
        except OSError as exc:
            self.drop(conn, session, exc)
            return
        if session.finished:
            self.drop(conn, session)
        elif session.wants_read and tls_buffered(conn):
            self.on_readable(conn, session)  # reading resumed below low water: catch up
        else:
            self.watch_or_drop(conn, session)

    def watch_or_drop(self, conn: socket.socket, session: EchoSession) -> None:
        """:meth:`watch`, ending only this connection if the kernel refuses (epoll_ctl can
        fail with ENOMEM, or ENOSPC past fs.epoll.max_user_watches)."""
        try:
            self.watch(conn, session)
        except OSError as exc:
            self.drop(conn, session, exc)

    def drop(
        self,
        conn: socket.socket,
        session: EchoSession,
        error: BaseException | None = None,
        *,
        idle: bool = False,
    ) -> None:
        """Close one connection and account for it."""
        self.forget(conn)
        del self.sessions[conn]
        self.handshakes.pop(conn, None)
        conn.close()
        self.release(session, error, idle=idle)

    def stop_accepting(self) -> None:
        """Close the listeners (a stop): the model unregisters them first if it must."""
        self.close_listeners()

    def sweep_idle(self) -> None:
        now = time.monotonic()
        for conn, handshake in list(self.handshakes.items()):
            if now >= handshake.deadline:
                self.stats.tls_handshake_failed()
                timeout = TimeoutError(errno.ETIMEDOUT, "TLS handshake timed out")
                self.drop(conn, self.sessions[conn], timeout)
        for conn, session in list(self.sessions.items()):
            if session.is_idle(now, partial(net.kernel_unsent, conn)):
                self.drop(conn, session, idle=True)

    def next_timeout(self, next_sweep: float, drain_until: float | None) -> float:
        """Seconds the readiness wait may block: until the next sweep or the drain deadline."""
        until = next_sweep if drain_until is None else min(next_sweep, drain_until)
        if self.accept_paused_until:
            until = min(until, self.accept_paused_until)
        return max(0.0, until - time.monotonic())

    def run_loop(self, wait_once: Callable[[float], None]) -> None:
        """The loop both readiness models share: wait, dispatch, sweep, stop when asked.

        ``wait_once(timeout)`` is the model's own readiness wait and dispatch.
        """
        interval = sweep_interval(
            self.config.idle_timeout, self.config.tls_handshake_timeout if self.tls_context else 0
        )
        next_sweep = time.monotonic() + interval
        drain_until: float | None = None
        try:
            while True:
                if self.stopping and drain_until is None:
                    drain_until = self.drain_deadline()
                    self.stop_accepting()
                if drain_until is not None and (
                    not self.sessions or time.monotonic() >= drain_until or not self.graceful
                ):
                    break
                wait_once(self.next_timeout(next_sweep, drain_until))
                if time.monotonic() >= next_sweep:
                    self.sweep_idle()
                    next_sweep = time.monotonic() + interval
        finally:
            for conn, session in list(self.sessions.items()):
                self.drop(conn, session)
            self.close_listeners()
            self._waker.close()
