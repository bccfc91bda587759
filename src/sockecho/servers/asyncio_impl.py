"""``asyncio``: the default - an event loop with the Protocol/Transport API.

How it waits
    asyncio's event loop runs on ``selectors`` (epoll) like the ``selectors``
    model, but the waiting, the registration and the partial writes are done by
    the loop's *transport*; the model only says what to do with bytes. We use
    the low-level ``BufferedProtocol`` rather than streams: streams add a
    coroutine, a future and a buffer copy per message (1.47x the CPU per echo
    at 50x1KiB, docs/PERFORMANCE.md). On one core of pure-Python event loop it
    costs about what ``selectors`` does; ``--loop uvloop`` (libuv) makes it the
    fastest model (docs/PERFORMANCE.md has the side-by-side figures).

The fast path
    The kernel copies each read into one preallocated buffer (``get_buffer``),
    and ``buffer_updated`` hands that slice straight to ``transport.write``,
    which sends it at once when the socket can take it. No per-message
    allocation, unlike stock asyncio, which reads into a fresh 256 KiB bytes
    object per ``recv``. The loop runs one callback at a time and each read is
    written back before the callback returns, so one read buffer serves every
    connection (a buffer per connection cost 64 KiB of RSS per idle client and
    evicted the cache at 1000 clients). When the kernel takes only part of a
    write, the transport keeps the rest: the server then switches to a fresh
    read buffer so the kept bytes are never overwritten (Python 3.12+ keeps a
    view, not a copy). On uvloop (``--loop uvloop``) a plain ``Protocol`` instead
    (:class:`UvloopEchoProtocol`): uvloop reads into one loop-wide buffer of its own, and
    its ``BufferedProtocol`` path costs more (docs/PERFORMANCE.md).

Back-pressure
    The transport's write buffer limits are set to the shared high/low-water
    marks; above the high mark asyncio calls ``pause_writing``, and we stop
    reading from that client until ``resume_writing``.

UDP (``--udp``)
    Each UDP socket becomes a datagram transport (``create_datagram_endpoint``
    with ``sock=``); ``datagram_received`` asks the shared policy and hands the
    echo to ``transport.sendto``. When the transport already holds more than
    the high-water mark of unsent datagrams, the echo is dropped and counted
    as an error instead of queued: memory stays bounded under a flood.

TLS (``--tls-cert``/``--tls-key``)
    :class:`TLSEchoProtocol` keeps the TLS state in an ``ssl.SSLObject`` over
    two memory buffers on the plain TCP transport: bytes in are decrypted,
    echoed, encrypted and written, all in one callback. Not asyncio's own SSL
    transport (``create_server(ssl=...)``): it does not support half-closed
    connections - after the client's EOF it drops every write, so the tail of
    an echo is lost (measured: 16-80 KiB of an 8 MiB stream) - and it keeps
    handshake failures to itself. Here a handshaking client holds a connection
    slot, a handshake that fails or outlasts ``--tls-handshake-timeout`` is
    logged and counted, and a half-close is answered with the whole echo, then
    close_notify.

Faults (``--fault``)
    With TCP faults every connection gets a :class:`FaultedEchoProtocol`, which
    leaves the fast path: each read goes into the session, only what the session
    lets go is written, and ``loop.call_later`` brings it back when something is
    due (a held chunk, the next paced piece, a delayed close). Each read asks for
    no more than read-bandwidth allows (``get_buffer``). Without faults the plain
    protocol runs, unchanged. UDP faults are decided per datagram in
    ``datagram_received``; a reordered echo waits on a ``call_later`` too.

What it costs and where it breaks
    One thread, and one ``read_size`` (64 KiB) read buffer for the whole
    server, shared by every connection (see "The fast path"). Per connection a
    transport, a protocol and a session: 1.7 KiB of RSS per idle connection,
    measured with ``python benchmarks/model_costs.py`` (500 connections; 2 vCPU
    AMD EPYC, Linux 6.18, Python 3.11.7; 2026-11-25). One core of Python at
    most, as with every single-threaded loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import importlib.util
import logging
import socket
import ssl
import time
from typing import Any, cast

from sockecho import net
from sockecho.config import ServerConfig
from sockecho.core import (
    EchoSession,
    FaultedSession,
    ProxyHeaderError,
    SessionState,
    SourceLimitReached,
)
from sockecho.errors import ConfigError
from sockecho.faults import REORDER_HOLD, DatagramFaults, FaultKind
from sockecho.identity import IDENTIFY_REQUEST
from sockecho.servers.base import (
    ACCEPT_CAPACITY_ERRNOS,
    EchoServer,
    SocketCalls,
    idle_connections,
    sweep_interval,
)
from sockecho.tls import TLSBuffers

log = logging.getLogger("sockecho.server")


def new_uvloop() -> asyncio.AbstractEventLoop:
    """A uvloop event loop (the ``uvloop`` extra)."""
    import uvloop  # noqa: PLC0415 - optional (checked in AsyncioServer), loaded only when asked

    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


#: Seconds to wait for aborted connections' callbacks (they run within a loop pass or two).
ABORT_GRACE = 1.0


class ReadPausing:
    """Back-pressure for a protocol: the transport calls ``pause_writing`` when its
    unsent echo passes the high-water mark; stop reading from that client until
    ``resume_writing`` (below the low-water mark)."""

    __slots__ = ()
    transport: asyncio.Transport | None

    def pause_writing(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()  # the client is not reading: stop reading from it

    def resume_writing(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()


class EchoConnection(ReadPausing, asyncio.BaseProtocol):
    """A plain connection's two ends, for both echo protocols below."""

    __slots__ = ("server", "session", "transport")

    def __init__(self, server: AsyncioServer) -> None:
        self.server = server
        self.session: EchoSession | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.transport = transport
        self.session = self.server.connection_made(self, transport)

    def eof_received(self) -> bool:
        # Returning False lets the transport close after flushing what is still pending:
        # RFC 862's half-close is "finish the echo, then close".
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.session is not None:
            self.server.connection_lost(self, exc)


class EchoProtocol(EchoConnection, asyncio.BufferedProtocol):
    """One connection: every byte read is written back unchanged."""

    __slots__ = ()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.server.read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        transport = self.transport
        assert transport is not None
        assert self.session is not None
        buffer = self.server.read_buffer
        if transport.get_write_buffer_size():
            # Already queued behind unsent bytes: queue an exact-size copy. Handing over a view
            # here would pin a whole read buffer per write, so a client sending tiny writes and
            # never reading could make the server hold read_size bytes per byte it sent.
            transport.write(bytes(buffer[:nbytes]))
        else:
            transport.write(buffer[:nbytes])
            if transport.get_write_buffer_size():
                # The transport kept (a view of) the unsent part: later reads go to a new buffer.
                self.server.read_buffer = memoryview(bytearray(self.server.config.read_size))
        self.session.echoed(nbytes)


class UvloopEchoProtocol(EchoConnection, asyncio.Protocol):
    """:class:`EchoProtocol` on uvloop (``--loop uvloop``): a plain ``Protocol``.

    What the shared read buffer saves on asyncio's own loop, uvloop already does: it reads
    every connection into one loop-wide buffer of its own and hands ``data_received`` an
    exact-size ``bytes``. Its ``BufferedProtocol`` path costs more there: 5-18% CPU per echo
    against a plain ``Protocol`` (``benchmarks/uvloop_protocols.py``, docs/PERFORMANCE.md).
    """

    __slots__ = ()

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        assert self.session is not None
        self.transport.write(data)  # bytes of its own: the transport may keep them
        self.session.echoed(len(data))


class PreambleEchoProtocol(EchoProtocol):
    """:class:`EchoProtocol` for a connection with a preamble: a PROXY header to read first
    (``--proxy-protocol``, never echoed, under its deadline) and an identity line to send
    before the echo (``--identify``). Plain connections keep the plain protocol, whose
    ``buffer_updated`` pays nothing for either."""

    __slots__ = ("_deadline", "error")

    def __init__(self, server: AsyncioServer) -> None:
        super().__init__(server)
        self._deadline: asyncio.TimerHandle | None = None
        self.error: Exception | None = None  # why the server ended it, for connection_lost

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        session = self.session
        if session is None:
            return
        if session.awaiting_header:
            self._deadline = asyncio.get_running_loop().call_later(
                max(0.0, session.header_deadline - time.monotonic()), self._header_timed_out
            )
        else:
            self._start_echo(b"")

    def buffer_updated(self, nbytes: int) -> None:
        session, transport = self.session, self.transport
        assert session is not None
        assert transport is not None
        if not session.awaiting_header:
            super().buffer_updated(nbytes)
            return
        try:
            first = self.server.header_received(session, self.server.read_buffer[:nbytes])
        except (ProxyHeaderError, SourceLimitReached) as exc:
            self.error = exc
            transport.abort()
            return
        if first is not None:
            self._start_echo(first)

    def _start_echo(self, first: bytes) -> None:
        session, transport = self.session, self.transport
        assert session is not None
        assert transport is not None
        if self._deadline is not None:
            self._deadline.cancel()
        line = self.server.identity(session, socket_of(self))
        if line:
            transport.write(line)
        if first:
            transport.write(first)
            session.echoed(len(first))

    def eof_received(self) -> bool:
        if self.session is not None and self.session.awaiting_header:
            self.error = ProxyHeaderError("the connection closed before a complete PROXY header")
        return False

    def _header_timed_out(self) -> None:
        if self.session is not None and self.session.awaiting_header and self.transport:
            self.error = self.server.header_timeout()
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        if self.session is not None:
            self.server.connection_lost(self, self.error or exc)


class TLSEchoProtocol(ReadPausing, asyncio.Protocol):
    """One TLS connection: decrypt what arrives, echo it encrypted, on the plain transport."""

    def __init__(self, server: AsyncioServer, context: ssl.SSLContext) -> None:
        self.server = server
        self._read_size = server.config.read_size
        self._tls = TLSBuffers(context, server_side=True)
        self._deadline: asyncio.TimerHandle | None = None
        self._header_deadline: asyncio.TimerHandle | None = None
        self.error: Exception | None = None  # why the server ended it, for connection_lost
        self.session: EchoSession | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.transport = transport
        self.session = self.server.connection_made(self, transport)
        if self.session is not None:
            loop = asyncio.get_running_loop()
            # The handshake's deadline; a PROXY header must come before, within its own.
            self._deadline = loop.call_later(
                self.server.config.tls_handshake_timeout, self._handshake_timed_out
            )
            if self.session.awaiting_header:
                self._header_deadline = loop.call_later(
                    max(0.0, self.session.header_deadline - time.monotonic()),
                    self._header_timed_out,
                )

    def data_received(self, data: bytes) -> None:
        session = self.session
        if session is not None and session.awaiting_header:  # PROXY header, then TLS
            try:
                rest = self.server.header_received(session, data)
            except (ProxyHeaderError, SourceLimitReached) as exc:
                self.error = exc
                assert self.transport is not None
                self.transport.abort()
                return
            if rest is None:
                return
            data = rest
            if not data:
                return
        self._tls.receive(data)
        self._advance()

    def eof_received(self) -> bool:
        if self.session is not None and self.session.awaiting_header:
            self.error = ProxyHeaderError("the connection closed before a complete PROXY header")
            return False
        self._tls.receive(b"")  # a TCP FIN: the end of the client's input (a half-close)
        self._advance()
        return False  # close once every echoed byte is written

    def _advance(self) -> None:
        """Take the handshake, then the echo, as far as the bytes received allow."""
        transport, session, tls = self.transport, self.session, self._tls
        assert transport is not None
        assert session is not None
        try:
            if not tls.handshake_done:
                if not tls.do_handshake():
                    transport.write(tls.records())  # our part of the handshake so far
                    return
                if self._deadline is not None:
                    self._deadline.cancel()
                line = self.server.identity(session, socket_of(self), tls.ssl_object)
                if line:
                    tls.write(line)
            while data := tls.read(self._read_size):
                tls.write(data)
                session.echoed(len(data))
        except ssl.SSLError as exc:  # garbage, a bad record, a vanished client
            if not tls.handshake_done:
                self.server.stats.tls_handshake_failed()
            self.error = exc
            transport.write(tls.records())  # OpenSSL's alert, if it made one
            transport.close()
            return
        if data is not None:  # b'': the client sent close_notify or half-closed: all echoed
            tls.close_notify()
        transport.write(tls.records())
        if data is not None:
            transport.close()  # after the buffered echo is written

    def _header_timed_out(self) -> None:
        if self.session is not None and self.session.awaiting_header and self.transport:
            self.error = self.server.header_timeout()
            self.transport.abort()

    def _handshake_timed_out(self) -> None:
        if self.session is not None and self.session.awaiting_header:
            return  # the header's own deadline ends it
        if not self._tls.handshake_done and self.transport is not None:
            self.server.stats.tls_handshake_failed()
            self.error = TimeoutError(errno.ETIMEDOUT, "TLS handshake timed out")
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._deadline, self._header_deadline):
            if timer is not None:
                timer.cancel()
        if self.session is not None:
            self.server.connection_lost(self, self.error or exc)


class FaultedEchoProtocol(asyncio.BufferedProtocol):
    """One connection of a server with ``--fault``: the session decides what may go when.

    Used for every connection when TCP faults are configured (a connection spared by
    ``--fault-probability`` gets a plain session and is echoed at once). Unlike
    :class:`EchoProtocol` nothing is written straight from the read buffer: each read
    goes into the session, only :meth:`EchoSession.data_to_send` is written, and a timer
    (``call_later``) comes back when the session says something is due.
    """

    def __init__(self, server: AsyncioServer) -> None:
        self.server = server
        self.session: EchoSession | None = None
        self.transport: asyncio.Transport | None = None
        self.error: Exception | None = None  # why the server ended it, for connection_lost
        self._buffer = memoryview(bytearray(server.config.read_size))
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due = 0.0
        self._reading = True
        self._writing_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.transport = transport
        self.session = self.server.connection_made(self, transport)
        if self.session is None:
            return
        if self.session.awaiting_header:  # --proxy-protocol: the header first, under its deadline
            self._set_timer(self.session.header_deadline)
        else:
            self._start_echo(b"")  # a fault after 0 bytes fires now

    def _start_echo(self, first: bytes) -> None:
        """The preamble is over: the ``--identify`` line, then ``first``, as the faults allow."""
        session = self.session
        assert session is not None
        line = self.server.identity(session, socket_of(self))
        if line:
            session.send_first(line)
        if first:
            session.data_received(first)
        self._advance()

    def get_buffer(self, sizehint: int) -> memoryview:
        session = self.session
        size = self.server.config.read_size
        if isinstance(session, FaultedSession):
            size = max(1, session.read_size(size))  # read-bandwidth: no more than allowed
        return self._buffer[:size]

    def buffer_updated(self, nbytes: int) -> None:
        session = self.session
        assert session is not None
        if session.awaiting_header:
            try:
                first = self.server.header_received(session, self._buffer[:nbytes])
            except (ProxyHeaderError, SourceLimitReached) as exc:
                self._abort(exc)
                return
            if first is not None:
                self._start_echo(first)
            return
        session.data_received(self._buffer[:nbytes])
        self._advance()

    def eof_received(self) -> bool:
        session = self.session
        assert session is not None
        if session.awaiting_header:
            self.error = ProxyHeaderError("the connection closed before a complete PROXY header")
            return False
        session.eof_received()
        self._advance()
        return True  # the session says when to close (after the echo, and any slow-close)

    def _abort(self, error: Exception) -> None:
        self.error = error
        if self.transport is not None:
            self.transport.abort()

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._advance()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._advance()

    def _advance(self) -> None:
        """Write what the faults let go, carry out a fault that fired, set the next timer."""
        transport, session = self.transport, self.session
        if transport is None or session is None or transport.is_closing():
            return
        while True:
            with session.data_to_send() as view:  # released before data_sent() moves it
                echo = bytes(view)
            if not echo:
                break
            transport.write(echo)
            session.data_sent(len(echo))
        if isinstance(session, FaultedSession):
            fired = session.fired()
            if fired is not None:
                self.server.fault_fired(session, fired)
                if fired is FaultKind.RESET_AFTER:
                    net.reset_on_close(transport.get_extra_info("socket"))
                    transport.abort()
                    return
                if fired is FaultKind.LIMIT_DATA:
                    transport.write_eof()  # FIN after what is already written
        if session.finished:
            if isinstance(session, FaultedSession) and session.close_delayed:
                self.server.fault_fired(session, FaultKind.SLOW_CLOSE)
            transport.close()
            return
        want = session.wants_read and not self._writing_paused
        if want != self._reading and session.state is SessionState.OPEN:
            (transport.resume_reading if want else transport.pause_reading)()
            self._reading = want
        if isinstance(session, FaultedSession):
            self._set_timer(session.due())

    def _set_timer(self, due: float | None) -> None:
        if due is None or (self._timer is not None and self._timer_due <= due):
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_due = due
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(max(0.0, due - time.monotonic()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        session = self.session
        if session is not None and session.awaiting_header:
            if session.header_overdue():
                self._abort(self.server.header_timeout())
            return
        self._advance()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self.session is not None:
            self.server.connection_lost(self, self.error or exc)


#: What the loop holds per connection: the plain protocol (with a preamble or not), the TLS
#: one or the faulted one.
AnyEchoProtocol = EchoConnection | TLSEchoProtocol | FaultedEchoProtocol


def socket_of(protocol: AnyEchoProtocol) -> Any:
    """The connection's socket (asyncio's socket-like wrapper), for the idle sweep."""
    return None if protocol.transport is None else protocol.transport.get_extra_info("socket")


class EchoDatagramProtocol(asyncio.DatagramProtocol):
    """One UDP socket: every datagram the policy allows goes back to its source whole."""

    def __init__(self, server: AsyncioServer, sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self.transport: asyncio.DatagramTransport | None = None
        self._send_error: OSError | None = None
        self.faults: DatagramFaults | None = server.datagram_faults.get(sock)
        self._held: tuple[bytes, net.SockAddr, int] | None = None  # reorder's held echo
        self._held_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector loop's datagram transport has the interface but (before Python 3.12)
        # not the base class.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: net.SockAddr) -> None:
        transport = self.transport
        if transport is None or not self.server.should_echo_datagram(addr):
            return
        # The selector and uvloop datagram transports both have it; typeshed does not know.
        buffered: int = transport.get_write_buffer_size()  # type: ignore[attr-defined]
        if buffered > self.server.config.high_water:
            self.server.datagram_echoed(len(data), BlockingIOError("udp send buffer full"))
            return
        if data == IDENTIFY_REQUEST:
            data = self.server.datagram_identity(self.sock, addr, data)
        if self.faults is not None:
            self._echo_faulted(data, addr, self.faults)
            return
        self._send(data, addr)

    def _send(self, data: bytes, addr: net.SockAddr, copies: int = 1) -> None:
        transport = self.transport
        assert transport is not None
        self._send_error = None
        for _ in range(copies):
            if data:
                transport.sendto(data, addr)  # a failure now is reported in error_received
            else:
                # Python 3.11's selector transport silently drops an empty datagram; RFC 862
                # echoes it like any other, so send it ourselves (it never has to wait).
                try:
                    self.sock.sendto(data, addr)
                except OSError as exc:
                    self._send_error = exc
        self.server.datagram_echoed(len(data), self._send_error)

    def _echo_faulted(self, data: bytes, addr: net.SockAddr, faults: DatagramFaults) -> None:
        """As :meth:`EchoServer.echo_faulted_datagram`, on this transport."""
        fate = faults.fate(len(data))
        self.server.datagram_fate(fate, addr)
        if fate.drop:
            return
        payload = fate.apply(data)
        overtaken, self._held = self._held, None
        if self._held_timer is not None:
            self._held_timer.cancel()
            self._held_timer = None
        if fate.hold:
            self._held = (payload, addr, fate.copies)
            loop = asyncio.get_running_loop()
            self._held_timer = loop.call_later(REORDER_HOLD, self._release_held)
        else:
            self._send(payload, addr, fate.copies)
        if overtaken is not None:
            self._send(*overtaken)

    def _release_held(self) -> None:
        self._held_timer = None
        held, self._held = self._held, None
        if held is not None and self.transport is not None and not self.transport.is_closing():
            self._send(*held)

    def error_received(self, exc: Exception) -> None:
        # ICMP unreachable and friends: the datagram is lost, the socket goes on.
        if isinstance(exc, OSError):
            self._send_error = exc


class AsyncioServer(EchoServer):
    name = "asyncio"
    summary = "asyncio event loop, BufferedProtocol: every connection reads into one shared buffer"

    def __init__(self, config: ServerConfig, calls: SocketCalls | None = None) -> None:
        super().__init__(config, calls)
        if config.loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
            raise ConfigError(
                "--loop uvloop needs the uvloop package", "pip install 'sockecho[uvloop]'"
            )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested: asyncio.Event | None = None
        self._all_closed: asyncio.Event | None = None
        self._protocols: dict[AnyEchoProtocol, EchoSession] = {}
        #: The one read buffer every connection's reads land in (see "The fast path").
        self.read_buffer = memoryview(bytearray(config.read_size))
        self._idle_closed: set[AnyEchoProtocol] = set()

    # -- called by the protocol -----------------------------------------------------------

    def connection_made(
        self, protocol: AnyEchoProtocol, transport: asyncio.Transport
    ) -> EchoSession | None:
        peer = transport.get_extra_info("peername")
        if peer is None:  # getpeername() failed: the client reset before we got to it
            transport.abort()
            return None
        session = self.admit(peer)
        if session is None:
            transport.abort()
            return None
        self._protocols[protocol] = session
        # Above high water asyncio calls pause_writing (ReadPausing): the shared marks.
        transport.set_write_buffer_limits(high=self.config.high_water, low=self.config.low_water)
        return session

    def connection_lost(self, protocol: AnyEchoProtocol, exc: Exception | None) -> None:
        # The transport closes its socket right after this callback returns: account for
        # the connection on the next loop pass, so "closed" in the stats means closed.
        assert self._loop is not None
        self._loop.call_soon(self._account_lost, protocol, exc)

    def _account_lost(self, protocol: AnyEchoProtocol, exc: Exception | None) -> None:
        session = self._protocols.pop(protocol)
        idle = protocol in self._idle_closed
        self._idle_closed.discard(protocol)
        self.release(session, exc, idle=idle)
        if not self._protocols and self._all_closed is not None:
            self._all_closed.set()

    def _new_protocol(self) -> AnyEchoProtocol:
        if self.tls_context is not None:
            return TLSEchoProtocol(self, self.tls_context)
        if self.faults.connection_faults:
            return FaultedEchoProtocol(self)
        if self.config.proxy_protocol is not None or self.config.identify is not None:
            return PreambleEchoProtocol(self)
        if self.config.loop == "uvloop":
            return UvloopEchoProtocol(self)
        return EchoProtocol(self)

    def _loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """Route asyncio's accept() capacity errors through the shared rate-limited notice.

        asyncio already backs off by itself (it stops watching the listener for a second
        after EMFILE and friends), but would log each failure with a traceback.
        """
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in ACCEPT_CAPACITY_ERRNOS:
            self.accept_failed(exc)
        elif context.get("protocol") in self._protocols:
            # One connection's callback failed: its transport closes it and connection_lost
            # logs the close with the error (release()); the traceback is for -v only.
            log.debug("%s", context.get("message"), exc_info=exc)
        else:
            loop.default_exception_handler(context)

    # -- the loop ---------------------------------------------------------------------------

    def serve(self) -> None:
        with asyncio.Runner(loop_factory=self._new_loop) as runner:
            runner.run(self._main())

    def _new_loop(self) -> asyncio.AbstractEventLoop:
        """A selector event loop on the model's selector (an instrumented one under --trace),
        or a uvloop loop with ``--loop uvloop`` (libuv makes its own system calls: it has
        no selector to instrument, so --trace cannot be combined with it)."""
        if self.config.loop == "uvloop":
            return new_uvloop()
        return asyncio.SelectorEventLoop(self.calls.new_selector())

    def wake(self) -> None:
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed
                loop.call_soon_threadsafe(self._on_stop_request)

    def _on_stop_request(self) -> None:
        assert self._stop_requested is not None
        self._stop_requested.set()
        if not self.graceful:
            self._abort_all()

    def _abort_all(self) -> None:
        for protocol in list(self._protocols):
            if protocol.transport is not None:
                protocol.transport.abort()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.set_exception_handler(self._loop_exception)
        self._stop_requested = asyncio.Event()
        self._all_closed = asyncio.Event()
        if self.stopping:  # asked to stop before the loop existed
            self._stop_requested.set()
        servers: list[asyncio.AbstractServer] = []
        datagram_transports: list[asyncio.DatagramTransport] = []
        sweeper: asyncio.Task[None] | None = None
        try:
            for listener in self.listeners:
                # backlog: create_server() calls listen() again, with 100 unless told otherwise.
                servers.append(
                    await self._loop.create_server(
                        self._new_protocol, sock=listener, backlog=self.config.backlog
                    )
                )
            for sock in self.datagram_sockets:
                endpoint, _ = await self._loop.create_datagram_endpoint(
                    functools.partial(EchoDatagramProtocol, self, sock), sock=sock
                )
                datagram_transports.append(endpoint)
            if self.config.idle_timeout:
                sweeper = asyncio.create_task(self._sweep_idle())
            stop = asyncio.create_task(self._stop_requested.wait())
            # The sweeper never ends by itself: if it does, it failed, and so has the model.
            waiting = {stop} if sweeper is None else {stop, sweeper}
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            if sweeper is not None and sweeper.done():
                sweeper.result()  # raises what ended it
        finally:
            for server in servers:
                server.close()  # stop accepting; open connections go on for the drain
            for transport in datagram_transports:
                transport.abort()  # unsent echoes are dropped: UDP promises no delivery
            self.close_listeners()  # closes what no server or transport took over
            await self._drain()
            if sweeper is not None and not sweeper.done():
                sweeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sweeper

    async def _drain(self) -> None:
        assert self._all_closed is not None
        if not self._protocols:
            return
        self._all_closed.clear()
        if self.graceful:
            remaining = max(0.0, self.drain_deadline() - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_closed.wait(), remaining)
        self._abort_all()
        # An abort closes at once; the connection_lost callbacks run on the next passes.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._all_closed.wait(), ABORT_GRACE)

    async def _sweep_idle(self) -> None:
        interval = sweep_interval(self.config.idle_timeout)
        while True:
            await asyncio.sleep(interval)
            for protocol in idle_connections(self._protocols, socket_of):
                if protocol.transport is not None:
                    self._idle_closed.add(protocol)
                    protocol.transport.abort()
